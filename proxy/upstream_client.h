// Upstream HTTP exchanges, driven by the proxy's libevent loop: no thread
// per request, no blocking call. UpstreamClient picks a transport per
// request: the proxy's own HTTP/1.1 client for http:// upstreams
// (upstream_http1.h), libcurl for https:// ones and whenever an HTTP proxy is
// named in the environment (upstream_curl.h). docs/architecture.md says why.
//
// start() returns an id. Callbacks run on the loop, possibly from inside the
// transport's own event handling: they may call cancel() or resume() (both
// are deferred when needed), but must not call into the transport's library.
// No callback runs inside start(). After cancel(id) returns, no callback for
// that id runs again. Every started transfer ends with exactly one on_done,
// unless cancelled first.
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
  HttpHeaders headers;  // sent as given; the transport adds only Host and Content-Length
  std::string body;
  // May the request go out a second time within one transfer? When a reused
  // keep-alive connection dies before any response byte arrives, the request
  // is sent again on a fresh connection only if this is set (libcurl would
  // re-send any request by itself, "Connection died, retrying a fresh
  // connect", although the upstream may have received and run it). Only
  // requests that are safe to repeat set it (GET, HEAD, OPTIONS without side
  // effects); every other one is sent at most once, and such a death fails it
  // (Unavailable).
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
  std::string detail;  // the transport's message, for logs (never contains the key)
  bool head_received = false;
  std::chrono::steady_clock::duration elapsed{};
};

struct UpstreamCallbacks {
  // Once, before data. The receiver may move from the head: the transport
  // reads it no more.
  std::function<void(UpstreamHead&)> on_head;
  // Return false to pause: the data is NOT consumed and comes again after resume().
  std::function<bool(std::string_view)> on_data;
  std::function<void(const UpstreamResult&)> on_done;     // once, last
  // Optional: the request is about to be written (the connection is made or
  // picked from the pool); again before a replayable request is sent again.
  // Runs inside the transport: it must not start, cancel or resume transfers.
  // The rate limiter dates a start by it (docs/rate-limits.md: the upstream
  // counts arrivals, and this is the closest we see to one).
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

class CurlUpstream;
class Http1Upstream;

// The production transport: each request to the transport that carries it.
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
  // Ids: the transport's own, doubled; odd for Http1Upstream.
  std::unique_ptr<Http1Upstream> http1_;
  std::unique_ptr<CurlUpstream> curl_;
};

}  // namespace wfp
