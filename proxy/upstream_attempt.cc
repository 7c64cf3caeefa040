#include "proxy/upstream_attempt.h"

#include <spdlog/spdlog.h>
#include <openssl/crypto.h>

#include "proxy/errors.h"
#include "proxy/text.h"

namespace wfp {

namespace {

double millisBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

}  // namespace

bool KeysInForce::authorize(UpstreamRequest& request, const std::string& org) const {
  if (org.empty()) return true;
  const Organisation* o = config_ ? config_->findOrganisation(org) : nullptr;
  if (!o) return false;
  std::string value = "Bearer " + o->api_key;
  for (auto& h : request.headers) {
    if (equalsIgnoreCase(h.name, "authorization")) {
      OPENSSL_cleanse(h.value.data(), h.value.size());
      h.value = std::move(value);
      return true;
    }
  }
  request.headers.push_back({"Authorization", std::move(value)});
  return true;
}

UpstreamAttempt::UpstreamAttempt(const UpstreamPorts& ports, AttemptSpec spec, AttemptCallbacks callbacks)
    : ports_(ports),
      request_(std::move(spec.request)),
      admission_(spec.admission ? std::make_unique<Admission>(std::move(*spec.admission)) : nullptr),
      queued_(admission_ != nullptr),
      org_(std::move(spec.org)),
      org_label_(std::move(spec.org_label)),
      cb_(std::move(callbacks)),
      life_(ports.runtime) {}

UpstreamAttempt::~UpstreamAttempt() {
  if (transfer_) ports_.transport.cancel(transfer_);
  // Queued: leaves the queue and spends nothing. Started: frees its slot.
  if (ticket_) ports_.scheduler.cancel(ticket_);
}

void UpstreamAttempt::start() {
  if (begun_) return;  // once
  begun_ = true;
  starting_ = true;
  if (!admission_) {
    go();
  } else {
    queued_at_ = ports_.runtime.now();
    AdmissionCallbacks cb;
    cb.start = [this] { go(); };
    cb.reject = [this](RejectReason why, int retry_after_s) { onRejected(why, retry_after_s); };
    std::unique_ptr<Admission> admission = std::move(admission_);  // the scheduler keeps its own copy
    uint64_t ticket = ports_.scheduler.submit(*admission, std::move(cb));
    if (!done_) ticket_ = ticket;  // (refused inside submit(): nothing to give back)
  }
  starting_ = false;
}

void UpstreamAttempt::go() {
  if (queued_at_) {
    queue_ms_ += millisBetween(*queued_at_, ports_.runtime.now());
    queued_at_.reset();
  }
  head_ = UpstreamHead{};
  held_.clear();
  holding_ = false;
  if (!ports_.keys.authorize(request_, org_)) {
    // The organisation was removed by a reload while the request waited: no
    // key of ours may be sent for it any more.
    spdlog::warn("upstream request for a removed organisation dropped before its start");
    life_.post([this] { refuseUnknownKey(); });
    return;
  }
  if (cb_.before_send) cb_.before_send(request_);
  ++tries_;
  try_started_ = ports_.runtime.now();
  UpstreamCallbacks cb;
  cb.on_head = [this](UpstreamHead& head) { onHead(head); };
  cb.on_data = [this](std::string_view data) { return onData(data); };
  cb.on_done = [this](const UpstreamResult& result) { onDone(result); };
  cb.on_sending = [this] {
    if (ticket_) ports_.scheduler.sending(ticket_);
  };
  // Sent as a copy: a 429 sends it again.
  transfer_ = ports_.transport.start(request_, std::move(cb));
}

void UpstreamAttempt::onHead(UpstreamHead& head) {
  head_ = std::move(head);  // (the transport's to give: upstream_client.h)
  if (head_.status == 429 && queued_) {
    // Maybe retried after the pause: nothing reaches the owner yet.
    holding_ = true;
    return;
  }
  if (cb_.on_head) cb_.on_head(head_);
}

bool UpstreamAttempt::onData(std::string_view data) {
  if (holding_) {
    held_.append(data);
    return true;
  }
  return cb_.on_data ? cb_.on_data(data) : true;
}

void UpstreamAttempt::onDone(const UpstreamResult& result) {
  transfer_ = 0;
  ended_at_ = ports_.runtime.now();
  ports_.metrics.countUpstream(org_label_, result.head_received ? head_.status : 0);
  ports_.metrics.observeUpstreamSeconds(std::chrono::duration<double>(result.elapsed).count());
  if (result.failure != UpstreamFailure::None) {
    spdlog::warn("upstream {} failed: {}", request_.method, result.detail);
  }
  std::weak_ptr<const void> alive;
  if (ticket_ || holding_) alive = life_.token();  // (only then is anything called before on_done)
  if (ticket_) {
    UpstreamSignals signals = result.head_received ? signalsFrom(head_.status, head_.headers) : UpstreamSignals{};
    uint64_t ticket = ticket_;
    if (result.failure == UpstreamFailure::None && holding_) {
      queued_at_ = ports_.runtime.now();
      holding_ = false;
      // Back to the head of the queue after the organisation's pause (the
      // scheduler may start it again at once).
      if (ports_.scheduler.retry(ticket, signals)) return;
      holding_ = true;  // retries used: this 429 is the answer
    } else {
      ports_.scheduler.finish(ticket, signals);
    }
    // (finish() may start other requests; none of them can reach this one.)
    if (alive.expired()) return;
    ticket_ = 0;
  }
  if (holding_) {
    holding_ = false;
    if (cb_.on_head) cb_.on_head(head_);
    if (alive.expired()) return;
    std::string body = std::move(held_);
    if (cb_.on_data) cb_.on_data(body);
    if (alive.expired()) return;
  }
  AttemptEnd e;
  e.failure = result.failure;
  end(e);
}

void UpstreamAttempt::onRejected(RejectReason why, int retry_after_s) {
  ticket_ = 0;
  AttemptEnd e;
  e.rejected = true;
  e.why = why;
  e.retry_after_s = retry_after_s;
  if (starting_) {
    done_ = true;  // start() must not keep the ticket
    life_.post([this, e] { end(e); });
    return;
  }
  end(e);
}

void UpstreamAttempt::refuseUnknownKey() {
  if (ticket_) {
    uint64_t ticket = ticket_;
    ticket_ = 0;
    std::weak_ptr<const void> alive = life_.token();
    ports_.scheduler.finish(ticket, UpstreamSignals{});
    if (alive.expired()) return;
  }
  head_ = UpstreamHead{};
  head_.status = 401;
  head_.reason = "Unauthorized";
  head_.headers = {{"Content-Type", "application/json"},
                   {"Content-Length", std::to_string(kUnauthorizedBody.size())}};
  std::weak_ptr<const void> alive = life_.token();
  if (cb_.on_head) cb_.on_head(head_);
  if (alive.expired()) return;
  if (cb_.on_data) cb_.on_data(kUnauthorizedBody);
  if (alive.expired()) return;
  end(AttemptEnd{});
}

void UpstreamAttempt::end(const AttemptEnd& e) {
  done_ = true;
  // Moved out first: the owner may destroy the attempt inside it.
  auto fn = std::move(cb_.on_done);
  if (fn) fn(e);
}

void UpstreamAttempt::resume() {
  if (transfer_) ports_.transport.resume(transfer_);
}

double UpstreamAttempt::upstreamMs() const {
  if (tries_ == 0) return 0;
  Clock::time_point until = transfer_ ? ports_.runtime.now() : ended_at_;
  return millisBetween(try_started_, until);
}

}  // namespace wfp
