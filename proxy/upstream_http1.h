// The proxy's own HTTP/1.1 client for http:// upstreams, as nginx's upstream
// module is one: non-blocking sockets on the proxy's libevent loop, a pool of
// keep-alive connections per origin, the request written with one sendmsg()
// (head and body, no copy of the body), the response read with
// HttpResponseParser into one buffer per connection and relayed from it.
// It replaced libcurl for plain HTTP because libcurl's own work per transfer
// cost more than nginx's whole hop (docs/performance.md); libcurl still
// carries https:// upstreams (upstream_curl.h).
//
// The rules libcurl gave and this keeps (the contract is UpstreamTransport's,
// upstream_client.h):
//   - at most once: when a reused connection dies before any response byte,
//     only a replayable request is sent again, on a fresh connection;
//   - on_sending runs just before the request is written;
//   - upstream.timeout_s runs from start() (queueing for a connection
//     included), connect_timeout_s over the connect (name lookup included);
//     a timeout closes the connection and is UpstreamFailure::Timeout;
//   - max_connections bounds the connections (busy, idle and connecting);
//     a transfer that finds none waits in order;
//   - an idle connection is closed when the upstream closes it or sends
//     anything, and is not reused after 118 s idle (libcurl's
//     CURLOPT_MAXAGE_CONN); it is checked once more just before reuse;
//   - back-pressure: data that on_data refuses is held and given again after
//     resume(), and nothing more is read meanwhile.
// Host names are looked up with evdns (/etc/hosts and resolv.conf), numeric
// hosts are used as they are; the addresses are tried in order.
#pragma once

#include <memory>
#include <string_view>

#include "proxy/upstream_client.h"

namespace wfp {

class Http1Upstream final : public UpstreamTransport {
 public:
  Http1Upstream(EventLoop& loop, UpstreamOptions options);
  // Cancels every transfer without callbacks. Not from inside one of its
  // own callbacks (its owner, the Proxy, outlives every request).
  ~Http1Upstream() override;
  Http1Upstream(const Http1Upstream&) = delete;
  Http1Upstream& operator=(const Http1Upstream&) = delete;

  // The URLs it carries: http:// (any case).
  static bool carries(std::string_view url);

  uint64_t start(UpstreamRequest request, UpstreamCallbacks callbacks) override;
  void cancel(uint64_t id) override;
  void resume(uint64_t id) override;
  size_t active() const override;
  void setOptions(const UpstreamOptions& options);  // applies to new transfers and connections

  // Connections open now (busy, idle or connecting), for tests.
  size_t connections() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace wfp
