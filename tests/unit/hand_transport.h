// An UpstreamTransport whose transfers a test answers by hand: whole
// (answer) or piece by piece (head, data, done), for unit tests of the run
// path's parts on the simulation's virtual clock.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "proxy/upstream_client.h"

namespace wfp {

class HandTransport final : public UpstreamTransport {
 public:
  struct Transfer {
    UpstreamRequest request;
    UpstreamCallbacks cb;
  };
  uint64_t start(UpstreamRequest request, UpstreamCallbacks callbacks) override {
    uint64_t id = next_++;
    started.push_back(request);
    live[id] = Transfer{std::move(request), std::move(callbacks)};
    return id;
  }
  void cancel(uint64_t id) override {
    cancelled.push_back(id);
    live.erase(id);
  }
  void resume(uint64_t id) override { resumed.push_back(id); }
  size_t active() const override { return live.size(); }

  // Transfer `id`'s head (after on_sending, as libcurl would).
  void head(uint64_t id, int status, HttpHeaders headers = {}) {
    Transfer& t = live.at(id);
    if (t.cb.on_sending) t.cb.on_sending();
    UpstreamHead h;
    h.status = status;
    h.reason = status == 200 ? "OK" : "Not OK";
    h.headers = std::move(headers);
    auto on_head = t.cb.on_head;  // the callee may cancel the transfer
    on_head(h);
  }
  // Bytes of transfer `id`; false when the receiver paused it.
  bool data(uint64_t id, const std::string& bytes) {
    auto on_data = live.at(id).cb.on_data;
    return on_data(bytes);
  }
  void done(uint64_t id, UpstreamFailure failure = UpstreamFailure::None) {
    Transfer t = std::move(live.at(id));
    live.erase(id);
    UpstreamResult result;
    result.head_received = failure == UpstreamFailure::None;
    result.failure = failure;
    t.cb.on_done(result);
  }
  // Answers transfer `id` whole: head, body, done.
  void answer(uint64_t id, int status, const std::string& body, HttpHeaders headers = {}) {
    head(id, status, std::move(headers));
    if (!live.count(id)) return;
    data(id, body);
    if (!live.count(id)) return;
    done(id);
  }
  uint64_t last() const { return next_ - 1; }

  std::vector<UpstreamRequest> started;
  std::vector<uint64_t> cancelled;
  std::vector<uint64_t> resumed;
  std::map<uint64_t, Transfer> live;

 private:
  uint64_t next_ = 1;
};

}  // namespace wfp
