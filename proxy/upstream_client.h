// Upstream HTTP exchanges through libcurl's multi interface, driven by the
// proxy's libevent loop (curl_multi_socket_action with socket and timer
// callbacks: no thread per request, no blocking call).
//
// start() returns an id. Callbacks run on the loop, possibly from inside a
// libcurl callback: they may call cancel() or resume() (both are deferred
// when needed), but must not call libcurl themselves. After cancel(id)
// returns, no callback for that id runs again. Every started transfer ends
// with exactly one on_done, unless cancelled first.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "proxy/event_loop.h"
#include "proxy/http_types.h"

namespace wfp {

struct UpstreamOptions {
  double timeout_s = 330;
  double connect_timeout_s = 10;
  int max_connections = 64;
  bool tls_verify = true;
};

struct UpstreamRequest {
  std::string method;
  std::string url;      // absolute; always under upstream.base_url
  HttpHeaders headers;  // sent as given; curl adds only Host and Content-Length
  std::string body;
  // May the request go out a second time within one transfer? libcurl re-sends
  // a request by itself when a reused keep-alive connection dies before any
  // response byte arrives ("Connection died, retrying a fresh connect"), even
  // though the upstream may have received and run it. Only requests that are
  // safe to repeat set this (GET, HEAD, OPTIONS without side effects); every
  // other one is sent at most once, and such a death fails it (Unavailable).
  bool replayable = false;
};

struct UpstreamHead {
  int status = 0;
  std::string reason;  // as the upstream sent it ("" over HTTP/2)
  HttpHeaders headers; // as received, hop-by-hop included (the caller filters)
};

enum class UpstreamFailure {
  None,
  Timeout,      // upstream.timeout_s passed → 504
  Unavailable,  // refused, reset, DNS, TLS, malformed reply → 502
};

struct UpstreamResult {
  UpstreamFailure failure = UpstreamFailure::None;
  std::string detail;  // libcurl's message, for logs (never contains the key)
  bool head_received = false;
  std::chrono::steady_clock::duration elapsed{};
};

struct UpstreamCallbacks {
  std::function<void(const UpstreamHead&)> on_head;      // once, before data
  // Return false to pause: the data is NOT consumed and comes again after resume().
  std::function<bool(std::string_view)> on_data;
  std::function<void(const UpstreamResult&)> on_done;     // once, last
  // Optional: libcurl is about to write the request (the connection is made
  // or picked from the pool). Runs inside libcurl: it must not start, cancel
  // or resume transfers. The rate limiter dates a start by it (docs/rate-limits.md:
  // the upstream counts arrivals, and this is the closest we see to one).
  std::function<void()> on_sending;
};

// What the run path needs of an upstream: UpstreamClient in production, a
// simulated upstream in tests/simulation. The contract above holds for both.
class UpstreamTransport {
 public:
  virtual ~UpstreamTransport() = default;
  virtual uint64_t start(UpstreamRequest request, UpstreamCallbacks callbacks) = 0;
  virtual void cancel(uint64_t id) = 0;
  virtual void resume(uint64_t id) = 0;
  virtual size_t active() const = 0;
};

class UpstreamClient final : public UpstreamTransport {
 public:
  UpstreamClient(EventLoop& loop, UpstreamOptions options);
  ~UpstreamClient() override;  // cancels every transfer without callbacks
  UpstreamClient(const UpstreamClient&) = delete;
  UpstreamClient& operator=(const UpstreamClient&) = delete;

  uint64_t start(UpstreamRequest request, UpstreamCallbacks callbacks) override;
  void cancel(uint64_t id) override;
  void resume(uint64_t id) override;
  size_t active() const override;
  void setOptions(const UpstreamOptions& options);  // applies to new transfers

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace wfp
