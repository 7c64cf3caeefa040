#include "proxy/upstream_client.h"

#include "proxy/text.h"
#include "proxy/upstream_curl.h"
#include "proxy/upstream_http1.h"

namespace wfp {

UpstreamClient::UpstreamClient(EventLoop& loop, UpstreamOptions options)
    : http1_(std::make_unique<Http1Upstream>(loop, options)), curl_(std::make_unique<CurlUpstream>(loop, options)) {}

UpstreamClient::~UpstreamClient() = default;

uint64_t UpstreamClient::start(UpstreamRequest request, UpstreamCallbacks callbacks) {
  if (Http1Upstream::carries(request.url) && !proxyInEnvironment()) {
    return http1_->start(std::move(request), std::move(callbacks)) * 2 + 1;
  }
  return curl_->start(std::move(request), std::move(callbacks)) * 2;
}

void UpstreamClient::cancel(uint64_t id) {
  if (id & 1) {
    http1_->cancel(id / 2);
  } else {
    curl_->cancel(id / 2);
  }
}

void UpstreamClient::resume(uint64_t id) {
  if (id & 1) {
    http1_->resume(id / 2);
  } else {
    curl_->resume(id / 2);
  }
}

size_t UpstreamClient::active() const { return http1_->active() + curl_->active(); }

void UpstreamClient::setOptions(const UpstreamOptions& options) {
  http1_->setOptions(options);
  curl_->setOptions(options);
}

}  // namespace wfp
