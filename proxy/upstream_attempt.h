// One request's way upstream (docs/rate-limits.md, docs/http.md), written once for every path
// that goes there — a run flight, a stream flight's token fetch and stream,
// a forwarded request:
//
//   start() ──► scheduler ticket (when it spends quota) ──► the key in force
//   now is put in (KeysInForce) ──► the transfer ──► head, body, done
//                       ▲                                      │
//                       └──── 429: pause, back to the queue ◄──┘
//
// The owner holds the attempt; destroying it leaves the queue (spending
// nothing) or cancels the transfer, and no callback runs afterwards. So a
// request, a flight or a stream that holds its attempt cancels it by going
// away — there is nothing to cancel by hand.
//
// Callback rules:
//   - none runs inside start(): an attempt the queue refuses at once, or one
//     whose organisation is gone, is answered on a later turn;
//   - on_head, on_data, on_done show the answer the owner gets: a 429 that
//     is retried is never shown; one that is not (retries used) is shown
//     whole, as any other answer;
//   - on_done runs exactly once, last; the owner may destroy the attempt
//     inside it (nothing of the attempt is touched after it).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "proxy/config.h"
#include "proxy/metrics.h"
#include "proxy/runtime.h"
#include "proxy/scheduler.h"
#include "proxy/upstream_client.h"

namespace wfp {

// The organisation keys of the configuration in force (docs/http.md: a request
// is sent with the key in force at its start, not the one of when it was
// queued — a key rotated by SIGHUP meanwhile must not be sent).
class KeysInForce {
 public:
  void setConfig(ConfigPtr config) { config_ = std::move(config); }
  // Puts `org`'s key into `request` (nothing for org ""); false when the
  // organisation no longer exists.
  bool authorize(UpstreamRequest& request, const std::string& org) const;

 private:
  ConfigPtr config_;
};

// What every attempt uses: one per RunHandler.
struct UpstreamPorts {
  Runtime& runtime;
  UpstreamTransport& transport;
  Scheduler& scheduler;
  Metrics& metrics;
  const KeysInForce& keys;
};

struct AttemptSpec {
  UpstreamRequest request;
  // Spends quota: waits for a scheduler start, and a 429 is retried after the
  // organisation's pause. None: sent at once (a preflight, a stream whose
  // token was paid for).
  std::optional<Admission> admission;
  std::string org;        // whose key goes in at each start ("": none of ours)
  std::string org_label;  // for metrics
};

struct AttemptEnd {
  UpstreamFailure failure = UpstreamFailure::None;  // the transfer failed
  bool rejected = false;                            // the queue refused it
  RejectReason why = RejectReason::QueueFull;
  int retry_after_s = 0;
};

struct AttemptCallbacks {
  // Before each try is sent, with the key in: the owner may adjust the
  // request (a run's X-Request-Id is its leader's at that moment).
  std::function<void(UpstreamRequest&)> before_send;
  std::function<void(const UpstreamHead&)> on_head;
  // false: back-pressure, the bytes come again after resume().
  std::function<bool(std::string_view)> on_data;
  std::function<void(const AttemptEnd&)> on_done;
};

class UpstreamAttempt {
 public:
  // `ports` must outlive the attempt (its owner's, held by reference).
  UpstreamAttempt(const UpstreamPorts& ports, AttemptSpec spec, AttemptCallbacks callbacks);
  ~UpstreamAttempt();
  UpstreamAttempt(const UpstreamAttempt&) = delete;
  UpstreamAttempt& operator=(const UpstreamAttempt&) = delete;

  void start();  // once; later calls do nothing
  void resume();  // the owner drained what on_data refused

  // A try was sent: from now on the upstream may have run it.
  bool sent() const { return tries_ > 0; }
  bool transferring() const { return transfer_ != 0; }
  // Time spent queued (429 pauses included), and in the current try so far.
  double queueMs() const { return queue_ms_; }
  double upstreamMs() const;
  const UpstreamHead& head() const { return head_; }
  // The head, moved out (head() is empty afterwards): for an owner done with
  // the attempt, once on_done ran.
  UpstreamHead takeHead() { return std::move(head_); }

 private:
  void go();  // the scheduler's start
  void onHead(UpstreamHead& head);
  bool onData(std::string_view data);
  void onDone(const UpstreamResult& result);
  void onRejected(RejectReason why, int retry_after_s);
  // Answered on a later turn, as the upstream answers a key it does not know.
  void refuseUnknownKey();
  void end(const AttemptEnd& end);

  // Lean: a queued request holds one of these while it waits.
  const UpstreamPorts& ports_;
  UpstreamRequest request_;
  std::unique_ptr<Admission> admission_;  // until it is handed to the scheduler
  bool queued_ = false;                   // it spends quota: ticket and 429 retry
  std::string org_;
  std::string org_label_;
  AttemptCallbacks cb_;
  Lifeline life_;  // posted work, and checks after calling out
  uint64_t ticket_ = 0;
  uint64_t transfer_ = 0;
  bool begun_ = false;           // start() was called
  bool starting_ = false;        // inside start(): no callback may run
  bool holding_ = false;         // a 429 is being read that may be retried
  bool done_ = false;
  int tries_ = 0;
  UpstreamHead head_;
  std::string held_;             // the held 429's body
  std::optional<Clock::time_point> queued_at_;  // waiting for a start since
  Clock::time_point try_started_{};
  Clock::time_point ended_at_{};
  double queue_ms_ = 0;
};

}  // namespace wfp
