#include "proxy/stream_fanout.h"

#include <algorithm>
#include <vector>

#include <spdlog/spdlog.h>

#include "proxy/errors.h"
#include "proxy/headers.h"
#include "proxy/stream_token.h"

namespace wfp {

namespace {

constexpr size_t kWriteSlice = 64 * 1024;

}  // namespace

struct StreamFanout::Flight {
  // Token: queued for, or fetching, the token (the attempt holds the ticket).
  enum class Phase { Token, Streaming, Done };
  uint64_t id = 0;
  StreamWork work;
  Phase phase = Phase::Token;
  // The token fetch, then the stream; dropped (and cancelled) with the flight.
  std::unique_ptr<UpstreamAttempt> attempt;
  UpstreamHead head;
  bool head_seen = false;
  std::string token_body;
  std::string bytes;     // the stream from offset `base`
  size_t base = 0;
  bool storable = true;  // still within kMaxStoredStream
  bool paused = false;   // upstream paused: the slowest subscriber is behind
  bool complete = false;
  std::vector<uint64_t> subs;
  size_t end() const { return base + bytes.size(); }
};

struct StreamFanout::Sub {
  uint64_t id = 0;
  uint64_t flight = 0;
  StreamSubscriber cb;
  size_t sent = 0;  // absolute offset written to the client
  bool begun = false;
  bool blocked = false;  // its backlog is high: wait for resume()
};

StreamFanout::StreamFanout(const UpstreamPorts& ports, CacheStore& cache) : ports_(ports), cache_(cache) {}

StreamFanout::~StreamFanout() = default;  // each flight's attempt cancels itself

StreamFanout::Flight* StreamFanout::flightOf(uint64_t flight_id) {
  auto it = flights_.find(flight_id);
  return it == flights_.end() ? nullptr : it->second.get();
}

uint64_t StreamFanout::join(const StreamWork& work, StreamSubscriber subscriber, bool* created) {
  uint64_t flight_id = 0;
  auto existing = by_key_.find(work.key);
  *created = existing == by_key_.end();
  if (!*created) {
    flight_id = existing->second;
  } else {
    auto f = std::make_unique<Flight>();
    f->id = flight_id = next_id_++;
    f->work = work;
    flights_.emplace(flight_id, std::move(f));
    by_key_.emplace(work.key, flight_id);
  }
  auto sub = std::make_unique<Sub>();
  uint64_t sub_id = sub->id = next_id_++;
  sub->flight = flight_id;
  sub->cb = std::move(subscriber);
  subs_.emplace(sub_id, std::move(sub));
  Flight& f = *flights_.at(flight_id);
  f.subs.push_back(sub_id);
  if (*created) {
    startToken(f);  // calls nothing back before join() returns
  } else if (f.head_seen) {
    // A late joiner: the head, the bytes so far, then the live bytes.
    Sub& s = *subs_.at(sub_id);
    s.begun = true;
    s.sent = f.base;  // f.base is 0 while the flight is joinable
    s.cb.begin(f.head);
    if (Flight* fl = flightOf(flight_id); fl && subs_.count(sub_id)) pump(*fl, *subs_.at(sub_id));
  }
  return sub_id;
}

void StreamFanout::startToken(Flight& f) {
  uint64_t flight_id = f.id;
  AttemptCallbacks cb;
  cb.on_head = [this, flight_id](const UpstreamHead& head) {
    if (Flight* fl = flightOf(flight_id)) fl->head = head;
  };
  cb.on_data = [this, flight_id](std::string_view data) {
    if (Flight* fl = flightOf(flight_id)) fl->token_body.append(data);
    return true;
  };
  cb.on_done = [this, flight_id](const AttemptEnd& end) { onTokenDone(flight_id, end); };
  // A copy (a GET without a body): the stream's attempt takes its
  // organisation from f.work.token later (startStream), so it stays whole.
  f.attempt = std::make_unique<UpstreamAttempt>(ports_, f.work.token, std::move(cb));
  f.attempt->start();
}

void StreamFanout::onTokenDone(uint64_t flight_id, const AttemptEnd& end) {
  Flight* f = flightOf(flight_id);
  if (!f) return;
  if (end.rejected) {
    dropAndTell(flight_id, [&](StreamSubscriber& cb) {
      if (cb.rejected) cb.rejected(end.why, end.retry_after_s);
    });
    return;
  }
  std::string token = end.failure == UpstreamFailure::None ? tokenFromAnswer(f->head.status, f->token_body) : "";
  if (!token.empty()) return startStream(flight_id, token);
  // No token: every subscriber gets the token route's answer (a key the
  // upstream refused, or an organisation a reload removed), or the failure.
  UpstreamHead head = f->head;
  std::string body = std::move(f->token_body);
  dropAndTell(flight_id, [&](StreamSubscriber& cb) {
    if (end.failure != UpstreamFailure::None) {
      if (cb.failed) cb.failed(end.failure);
    } else if (cb.refused) {
      cb.refused(head, body);
    }
  });
}

void StreamFanout::startStream(uint64_t flight_id, const std::string& token) {
  Flight* f = flightOf(flight_id);
  if (!f) return;
  f->phase = Flight::Phase::Streaming;
  f->head = UpstreamHead{};
  // The token is used once, here, and never stored or replayed. The stream
  // itself spends no quota (the token did) and carries no key of ours.
  AttemptSpec spec;
  spec.request = f->work.stream;
  spec.request.url = withToken(std::move(spec.request.url), token);
  spec.org_label = f->work.token.org_label;
  AttemptCallbacks cb;
  cb.on_head = [this, flight_id](const UpstreamHead& head) { onHead(flight_id, head); };
  cb.on_data = [this, flight_id](std::string_view data) { return onData(flight_id, data); };
  cb.on_done = [this, flight_id](const AttemptEnd& end) { onDone(flight_id, end); };
  // Replaces the token fetch inside its own on_done: allowed (upstream_attempt.h).
  f->attempt = std::make_unique<UpstreamAttempt>(ports_, std::move(spec), std::move(cb));
  f->attempt->start();
}

void StreamFanout::onHead(uint64_t flight_id, const UpstreamHead& head) {
  Flight* f = flightOf(flight_id);
  if (!f) return;
  f->head = head;
  f->head_seen = true;
  auto subs = f->subs;
  for (uint64_t s : subs) {
    auto it = subs_.find(s);
    if (it == subs_.end() || it->second->begun) continue;
    it->second->begun = true;
    it->second->cb.begin(head);
  }
}

bool StreamFanout::onData(uint64_t flight_id, std::string_view data) {
  Flight* f = flightOf(flight_id);
  if (!f) return true;
  if (f->paused) return false;  // the transport keeps the bytes until resume
  f->bytes.append(data);
  if (f->storable && f->end() > kMaxStoredStream) {
    // Too long to keep whole: no longer stored or joinable; keep only what
    // some subscriber still needs.
    f->storable = false;
    auto k = by_key_.find(f->work.key);
    if (k != by_key_.end() && k->second == flight_id) by_key_.erase(k);
  }
  auto subs = f->subs;
  for (uint64_t s : subs) {
    f = flightOf(flight_id);
    if (!f) return true;
    auto it = subs_.find(s);
    if (it != subs_.end()) pump(*f, *it->second);
  }
  f = flightOf(flight_id);
  if (!f) return true;
  if (!f->storable) {
    trim(*f);
    if (f->bytes.size() > kBehindHighWater) f->paused = true;
  }
  return true;
}

void StreamFanout::pump(Flight& f, Sub& s) {
  uint64_t sub_id = s.id;
  uint64_t flight_id = f.id;
  while (true) {
    Flight* fl = flightOf(flight_id);
    auto it = subs_.find(sub_id);
    if (!fl || it == subs_.end()) return;
    Sub& sub = *it->second;
    if (!sub.begun || sub.blocked || sub.sent >= fl->end()) return;
    size_t from = sub.sent - fl->base;
    size_t n = std::min(kWriteSlice, fl->bytes.size() - from);
    std::string_view slice(fl->bytes.data() + from, n);
    sub.sent += n;
    if (!sub.cb.write(slice)) {
      if (auto again = subs_.find(sub_id); again != subs_.end()) again->second->blocked = true;
      return;  // resume() continues
    }
  }
}

void StreamFanout::trim(Flight& f) {
  if (f.storable || f.subs.empty()) return;
  size_t low = f.end();
  for (uint64_t s : f.subs) {
    auto it = subs_.find(s);
    if (it != subs_.end()) low = std::min(low, it->second->sent);
  }
  if (low > f.base) {
    f.bytes.erase(0, low - f.base);
    f.base = low;
  }
}

void StreamFanout::resume(uint64_t subscriber) {
  auto it = subs_.find(subscriber);
  if (it == subs_.end()) return;
  uint64_t flight_id = it->second->flight;
  Flight* f = flightOf(flight_id);
  if (!f) return;
  it->second->blocked = false;
  pump(*f, *it->second);
  f = flightOf(flight_id);
  if (!f) return;
  trim(*f);
  if (f->paused && f->bytes.size() < kBehindHighWater / 2) {
    f->paused = false;
    if (f->attempt) f->attempt->resume();
  }
  maybeFinish(flight_id);
}

void StreamFanout::onDone(uint64_t flight_id, const AttemptEnd& result) {
  Flight* f = flightOf(flight_id);
  if (!f) return;
  f->phase = Flight::Phase::Done;
  auto k = by_key_.find(f->work.key);
  if (k != by_key_.end() && k->second == flight_id) by_key_.erase(k);
  if (result.failure != UpstreamFailure::None && !f->head_seen) {
    dropAndTell(flight_id, [&](StreamSubscriber& cb) {
      if (cb.failed) cb.failed(result.failure);
    });
    return;
  }
  f->complete = result.failure == UpstreamFailure::None;
  if (f->complete && f->head.status == 200 && f->storable && f->work.store) {
    cache_.store(f->work.key,
                 std::make_shared<CachedResponse>(
                     storedResponse(f->head.status, f->head.reason, f->head.headers, f->bytes, true,
                                    ports_.runtime.unixMillis())),
                 f->work.keep_ms);
  } else if (!f->complete) {
    spdlog::info("stream {} cut short upstream: not stored", f->work.key);
  }
  maybeFinish(flight_id);
}

void StreamFanout::maybeFinish(uint64_t flight_id) {
  Flight* f = flightOf(flight_id);
  if (!f || f->phase != Flight::Phase::Done) return;
  auto subs = f->subs;
  for (uint64_t s : subs) {
    f = flightOf(flight_id);
    if (!f) return;
    auto it = subs_.find(s);
    if (it == subs_.end()) continue;
    // A cut stream ends at once; a complete one once the client has it all.
    if (f->complete && it->second->sent < f->end()) continue;
    auto end = std::move(it->second->cb.end);
    std::erase(f->subs, s);
    subs_.erase(it);
    bool complete = f->complete;
    if (end) end(complete);
  }
  f = flightOf(flight_id);
  if (f && f->subs.empty()) drop(flight_id);
}

void StreamFanout::leave(uint64_t subscriber) {
  auto it = subs_.find(subscriber);
  if (it == subs_.end()) return;
  uint64_t flight_id = it->second->flight;
  subs_.erase(it);
  Flight* f = flightOf(flight_id);
  if (!f) return;
  std::erase(f->subs, subscriber);
  if (!f->subs.empty() && f->phase == Flight::Phase::Token && !anyMayRun(*f)) {
    // Only only-if-cached subscribers are left: nothing starts for them.
    dropAndTell(flight_id, [](StreamSubscriber& cb) {
      if (cb.not_cached) cb.not_cached();
    });
    return;
  }
  if (!f->subs.empty()) {
    trim(*f);
    if (f->paused && f->bytes.size() < kBehindHighWater / 2) {
      f->paused = false;
      if (f->attempt) f->attempt->resume();
    }
    return;
  }
  switch (f->phase) {
    case Flight::Phase::Streaming:
      if (f->work.store && f->storable) {
        // Runs to the end and is stored: the next identical request hits.
        if (f->paused) {
          f->paused = false;
          if (f->attempt) f->attempt->resume();
        }
        return;
      }
      drop(flight_id);
      return;
    case Flight::Phase::Token:
      // Queued: leaves the queue, spends nothing. Fetching: the token is paid
      // for either way; without anyone to stream to, stop.
      drop(flight_id);
      return;
    case Flight::Phase::Done:
      drop(flight_id);
      return;
  }
}

bool StreamFanout::anyMayRun(const Flight& f) const {
  for (uint64_t s : f.subs) {
    auto it = subs_.find(s);
    if (it != subs_.end() && it->second->cb.may_run) return true;
  }
  return false;
}

void StreamFanout::dropAndTell(uint64_t flight_id, const std::function<void(StreamSubscriber&)>& tell) {
  Flight* f = flightOf(flight_id);
  if (!f) return;
  auto subs = f->subs;
  drop(flight_id);
  for (uint64_t s : subs) {
    auto it = subs_.find(s);
    if (it == subs_.end()) continue;  // left during an earlier subscriber's callback
    StreamSubscriber cb = std::move(it->second->cb);
    subs_.erase(it);
    tell(cb);
  }
}

void StreamFanout::drop(uint64_t flight_id) {
  auto it = flights_.find(flight_id);
  if (it == flights_.end()) return;
  std::unique_ptr<Flight> f = std::move(it->second);
  flights_.erase(it);
  auto k = by_key_.find(f->work.key);
  if (k != by_key_.end() && k->second == flight_id) by_key_.erase(k);
  // f goes here, and its attempt with it: out of the queue, or the transfer
  // cancelled.
}

}  // namespace wfp
