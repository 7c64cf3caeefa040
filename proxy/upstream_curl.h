// The upstream transport for what the proxy's own HTTP/1.1 client does not
// carry (upstream_http1.h): https:// upstreams, and every upstream when an
// HTTP proxy is named in the environment. libcurl's multi interface on the
// proxy's libevent loop; the contract is UpstreamTransport's
// (upstream_client.h).
#pragma once

#include <memory>

#include "proxy/upstream_client.h"

namespace wfp {

class CurlUpstream final : public UpstreamTransport {
 public:
  CurlUpstream(EventLoop& loop, UpstreamOptions options);
  ~CurlUpstream() override;  // cancels every transfer without callbacks
  CurlUpstream(const CurlUpstream&) = delete;
  CurlUpstream& operator=(const CurlUpstream&) = delete;

  uint64_t start(UpstreamRequest request, UpstreamCallbacks callbacks) override;
  void cancel(uint64_t id) override;
  void resume(uint64_t id) override;
  size_t active() const override;
  void setOptions(const UpstreamOptions& options);  // applies to new transfers

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// http_proxy, https_proxy or all_proxy (either case) is set: libcurl sends
// through that proxy, so every upstream request goes through libcurl. Read once.
bool proxyInEnvironment();

}  // namespace wfp
