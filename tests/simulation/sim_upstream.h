// A simulated upstream for the fleet simulation: the Run Workflow API as the
// proxy sees it (runs, stream tokens, token streams), with a sliding-window
// rate limit per organisation, latency, and faults (5xx, connection resets,
// 429 with Retry-After, hangs until the proxy's timeout).
//
// It records every request that reached it — the key, the X-Request-Id, the
// body, when, what it answered — for the checks. Every successful run's body
// names the run ("run#N"), so the bytes a client got say which run made them.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "proxy/upstream_client.h"
#include "tests/simulation/sim_rng.h"
#include "tests/simulation/sim_runtime.h"
#include "tests/simulation/sim_trace.h"

namespace wfp::sim {

enum class StartKind { Run, Token, Stream, Other };

// One request that reached the upstream.
struct UpstreamStart {
  uint64_t serial = 0;
  int instance = 0;
  StartKind kind = StartKind::Other;
  int64_t start_us = 0;
  int64_t done_us = -1;  // when the answer was complete (or failed); -1: never
  std::string method;
  std::string target;      // path and query
  std::string workflow;    // runs and streams
  std::string key;         // the bearer key, "" when none
  std::string org;         // whose key it was, "" when unknown
  std::string request_id;  // X-Request-Id as received
  std::string body;
  int status = 0;          // 0: no answer (reset, hang)
  std::string answer;      // the response body
  std::string fault;       // "", "5xx", "reset", "429", "hang", "limit", "revoked"
  bool cancelled = false;  // the proxy gave up on it
};

class SimUpstream {
 public:
  SimUpstream(SimRuntime& rt, Rng& rng, Trace& trace) : rt_(rt), rng_(rng), trace_(trace) {}

  // Keys: valid from now on / refused from now on (a rotation revokes the old one).
  void allowKey(const std::string& key, const std::string& org) { keys_[key] = Key{org, true}; }
  void revokeKey(const std::string& key) {
    if (auto it = keys_.find(key); it != keys_.end()) it->second.valid = false;
  }

  // A token the client got itself (a client-token stream).
  void issueToken(const std::string& token) { tokens_.insert(token); }

  // The limit the upstream enforces per organisation (runs and token fetches);
  // pass_through keys are organisations of their own, with `key_limit`.
  int limit = 10;
  int key_limit = 10;
  int64_t window_us = 1'000'000;
  // Faults, per request.
  double p_5xx = 0, p_reset = 0, p_429 = 0, p_hang = 0;
  int64_t latency_min_us = 2'000, latency_max_us = 200'000;
  double p_slow = 0;  // a run that takes seconds
  int64_t timeout_us = 5'000'000;  // the proxy's upstream.timeout_s (libcurl's job, done here)

  const std::vector<UpstreamStart>& starts() const { return starts_; }
  UpstreamStart& at(uint64_t serial) { return starts_[serial - 1]; }

 private:
  friend class SimTransport;
  struct Key {
    std::string org;
    bool valid = true;
  };
  struct Answer {
    int status = 0;  // 0: none (reset/hang)
    HttpHeaders headers;
    std::vector<std::string> chunks;
    bool hang = false;
  };
  // Receives a request (now) and decides the answer.
  Answer receive(UpstreamStart& s, const UpstreamRequest& request);
  Answer json(UpstreamStart& s, int status, std::string body, HttpHeaders extra = {});

  SimRuntime& rt_;
  Rng& rng_;
  Trace& trace_;
  std::map<std::string, Key> keys_;
  std::map<std::string, std::deque<int64_t>> window_;  // org → start times in the window
  std::set<std::string> tokens_;                       // issued, unused
  std::vector<UpstreamStart> starts_;
};

// The proxy instance's side: the UpstreamTransport the run path is given.
class SimTransport final : public UpstreamTransport {
 public:
  SimTransport(SimRuntime& rt, SimUpstream& upstream, int instance) : rt_(rt), up_(upstream), instance_(instance) {}
  ~SimTransport() override { *alive_ = false; }

  uint64_t start(UpstreamRequest request, UpstreamCallbacks callbacks) override;
  void cancel(uint64_t id) override;
  void resume(uint64_t id) override;
  size_t active() const override { return active_.size(); }

 private:
  struct Transfer {
    uint64_t serial = 0;
    UpstreamCallbacks cb;
    SimUpstream::Answer answer;
    size_t next_chunk = 0;
    bool paused = false;
    bool head_sent = false;
    int64_t started_us = 0;
  };
  void sendHead(uint64_t id);
  void pump(uint64_t id);
  void done(uint64_t id, UpstreamFailure failure, const std::string& detail);
  Transfer* find(uint64_t id);

  SimRuntime& rt_;
  SimUpstream& up_;
  int instance_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, Transfer> active_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace wfp::sim
