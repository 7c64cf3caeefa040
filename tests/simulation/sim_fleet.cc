#include "tests/simulation/sim_fleet.h"

#include <algorithm>
#include <map>
#include <memory>
#include <optional>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include "proxy/access_log.h"
#include "proxy/cache_store.h"
#include "proxy/canonical_json.h"
#include "proxy/config.h"
#include "proxy/metrics.h"
#include "proxy/run_handler.h"
#include "proxy/scheduler.h"
#include "tests/simulation/sim_client.h"
#include "tests/simulation/sim_redis.h"
#include "tests/simulation/sim_rng.h"
#include "tests/simulation/sim_runtime.h"
#include "tests/simulation/sim_trace.h"
#include "tests/simulation/sim_upstream.h"

namespace wfp::sim {

namespace {

constexpr int64_t kMs = 1000;
constexpr int64_t kSecond = 1'000'000;
// Virtual time by which a seed must be quiet (no event left).
constexpr int64_t kQuiesceBy = 600 * kSecond;

// The inputs clients send, each in several spellings (key order, spaces):
// the proxy must see one input in each group.
const std::vector<std::vector<std::string>> kInputs = {
    {R"({"story":"a dog named charlie"})", R"({ "story" : "a dog named charlie" })"},
    {R"({"a":1,"b":[true,null]})", R"({"b":[true,null],"a":1})"},
    {R"({"topic":"tides","level":2})", R"({"level":2,"topic":"tides"})"},
};
const std::vector<std::string> kWorkflows = {"wf_one", "wf_two"};
const std::vector<std::string> kCacheControls = {"",        "",         "",          "",
                                                 "no-cache", "no-store", "max-age=0", "max-age=1",
                                                 "max-age=5", "only-if-cached", "no-cache, max-age=3"};

struct Parsed {
  bool no_cache = false, no_store = false, only_if_cached = false;
  std::optional<int64_t> max_age;
};

// The client's own reading of its Cache-Control (the proxy's parser is not
// trusted to check itself).
Parsed parse(const std::string& cc) {
  Parsed p;
  p.no_cache = cc.find("no-cache") != std::string::npos;
  p.no_store = cc.find("no-store") != std::string::npos;
  p.only_if_cached = cc.find("only-if-cached") != std::string::npos;
  if (size_t at = cc.find("max-age="); at != std::string::npos) p.max_age = std::stoll(cc.substr(at + 8));
  return p;
}

std::string canonical(const std::string& body) {
  CanonicalJson c = canonicalizeJson(body);
  return c.ok ? c.canonical : "!" + body;
}

// The proxy's own log lines go into the trace, in their place.
class TraceSink final : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
 public:
  Trace* trace = nullptr;

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    if (trace) trace->add("  log " + std::string(spdlog::level::to_string_view(msg.level).data()) + ": " +
                          std::string(msg.payload.data(), msg.payload.size()));
  }
  void flush_() override {}
};

std::shared_ptr<TraceSink> traceSink() {
  static std::shared_ptr<TraceSink> sink = [] {
    auto s = std::make_shared<TraceSink>();
    auto logger = std::make_shared<spdlog::logger>("sim", s);
    logger->set_level(spdlog::level::info);
    spdlog::set_default_logger(logger);
    return s;
  }();
  return sink;
}

struct Instance {
  int index = 0;
  std::unique_ptr<SimRedisLink> redis;
  std::unique_ptr<SimTransport> transport;
  std::unique_ptr<Metrics> metrics;
  std::unique_ptr<AccessLog> access_log;
  std::unique_ptr<CacheStore> cache;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<RunHandler> handler;
};

struct Purge {
  int instance = 0;
  std::string workflow;
  std::string canonical;  // "" : the whole workflow
  int64_t issued_us = 0;
};

class Fleet {
 public:
  Fleet(uint64_t seed) : rng_(seed), trace_(rt_), redis_(rt_, rng_, trace_), upstream_(rt_, rng_, trace_) {}
  ~Fleet() {
    // Handlers first: they cancel what they started on the transports and links.
    for (auto& in : instances_) in.handler.reset();
    for (auto& in : instances_) {
      in.scheduler.reset();
      in.cache.reset();
    }
  }

  SeedResult run(const SeedOptions& options);

 private:
  std::string configYaml() const;
  ConfigPtr makeConfig();
  void build();
  void plan();
  void send(int serial);
  void purge(const Purge& p);
  void reload();
  void check();
  void checkRequests();
  void checkUpstream();
  void checkDuplicates();
  void checkQuiet();
  bool redisIncident(int64_t from_us, int64_t to_us) const;
  // The client request whose X-Request-Id an upstream request carried, and its namespace.
  const ClientRequest* ownerOf(const UpstreamStart& s) const;
  std::string nsOf(const UpstreamStart& s) const;
  void fail(std::string what) { failures_.push_back(std::move(what)); }

  SimRuntime rt_;
  Rng rng_;
  Trace trace_;
  SimRedisServer redis_;
  SimUpstream upstream_;
  std::vector<Instance> instances_;
  std::vector<std::unique_ptr<ClientRequest>> requests_;
  std::vector<std::unique_ptr<SimExchange>> exchanges_;
  std::vector<std::shared_ptr<void>> connections_;  // one per request (auth memo)
  std::vector<Purge> purges_;
  std::vector<std::pair<int64_t, int64_t>> incidents_;  // Redis trouble, [from, to]
  std::vector<std::string> failures_;
  int links_down_ = 0;

  // The seed's settings.
  int n_instances_ = 1;
  int limit_ = 10;
  double ttl_s_ = 10;
  double stale_s_ = 0;
  int key_generation_ = 1;
  bool streams_ = true;
  bool pass_through_ = false;
  bool redis_backend_ = true;  // false: the memory backend, no Redis at all
};

std::string Fleet::configYaml() const {
  int per_instance = std::max(1, limit_ / n_instances_);
  std::string y;
  y += "upstream:\n  base_url: http://upstream.sim\n  timeout_s: 5\n";
  if (redis_backend_) y += "redis:\n  url: redis://127.0.0.1:6379/0\n  key_prefix: \"wfp:\"\n  timeout_ms: 250\n";
  y += std::string("cache:\n  backend: ") + (redis_backend_ ? "redis" : "memory") + "\n  ttl_s: " + std::to_string(ttl_s_) +
       "\n  stale_if_error_s: " + std::to_string(stale_s_) + "\n  streams: " + (streams_ ? "true" : "false") + "\n";
  y += "rate_limit:\n  queue_max: 40\n  max_wait_s: 8\n  retry_429: 2\n";
  y += std::string("unknown_keys: ") + (pass_through_ ? "pass_through" : "reject") + "\n";
  y += "organisations:\n  - name: acme\n    api_key: sk_acme_" + std::to_string(key_generation_) + "\n";
  y += "    rate_limit:\n      requests: " + std::to_string(per_instance) + "\n      window_s: 1\n      max_concurrent: 4\n";
  y += "    clients:\n      - name: one\n        key: client-key-1\n";
  return y;
}

ConfigPtr Fleet::makeConfig() {
  ConfigResult r = loadConfigString(configYaml(), "sim.yaml", [](const std::string&) -> std::optional<std::string> {
    return std::nullopt;
  });
  if (!r.config) {
    std::string all;
    for (const auto& e : r.errors) all += e + "; ";
    fail("the simulation's configuration does not load: " + all);
  }
  return r.config;
}

void Fleet::build() {
  n_instances_ = static_cast<int>(rng_.range(1, 4));
  limit_ = static_cast<int>(rng_.range(std::max(3, n_instances_), 10));
  ttl_s_ = static_cast<double>(rng_.range(1, 20));
  stale_s_ = rng_.chance(0.3) ? 5 : 0;
  streams_ = !rng_.chance(0.2);
  pass_through_ = rng_.chance(0.4);
  redis_backend_ = !rng_.chance(0.2);
  upstream_.limit = limit_;
  // Each instance allows a pass_through key the upstream's default (10 a
  // second, the proxy's BudgetConfig): the fleet together, N times that.
  upstream_.key_limit = 10 * n_instances_;
  upstream_.allowKey("sk_acme_1", "acme");
  ConfigPtr config = makeConfig();
  if (!config) return;
  for (int i = 0; i < n_instances_; ++i) {
    Instance in;
    in.index = i;
    if (redis_backend_) in.redis = std::make_unique<SimRedisLink>(rt_, redis_, std::to_string(i), 250);
    in.transport = std::make_unique<SimTransport>(rt_, upstream_, i);
    in.metrics = std::make_unique<Metrics>();
    in.access_log = std::make_unique<AccessLog>();
    in.cache = std::make_unique<CacheStore>(rt_, in.redis.get(), "wfp:", config->cache.memory_max_bytes);
    in.scheduler = std::make_unique<Scheduler>(rt_, rt_, *in.metrics);
    in.handler = std::make_unique<RunHandler>(rt_, *in.transport, *in.scheduler, *in.access_log, *in.metrics,
                                              *in.cache, in.redis.get());
    in.handler->setConfig(config);  // and the scheduler
    instances_.push_back(std::move(in));
  }
}

void Fleet::plan() {
  // A link that is down is Redis in trouble from the instance's side, from
  // the moment it went down until every link is up again.
  redis_.on_link_state = [this](bool up) {
    links_down_ += up ? -1 : 1;
    if (!up && links_down_ == 1) incidents_.push_back({rt_.nowUs(), INT64_MAX});
    if (up && links_down_ == 0 && !incidents_.empty()) {
      for (auto& inc : incidents_) {
        if (inc.second == INT64_MAX) inc.second = rt_.nowUs() + 500 * kMs;
      }
    }
  };
  // Faults of this seed.
  redis_.drop_pubsub = rng_.chance(0.3) ? 0.3 : 0;
  if (rng_.chance(0.3)) redis_.latency_max_us = 30 * kMs;
  upstream_.p_5xx = rng_.chance(0.3) ? 0.1 : 0;
  upstream_.p_reset = rng_.chance(0.2) ? 0.05 : 0;
  upstream_.p_429 = rng_.chance(0.3) ? 0.1 : 0;
  upstream_.p_hang = rng_.chance(0.1) ? 0.05 : 0;
  upstream_.p_slow = rng_.chance(0.3) ? 0.2 : 0;

  int n = static_cast<int>(rng_.range(5, 80));
  int64_t span = rng_.range(1, 8) * kSecond;
  for (int i = 0; i < n; ++i) {
    auto r = std::make_unique<ClientRequest>();
    r->serial = i + 1;
    r->instance = static_cast<int>(rng_.range(0, n_instances_ - 1));
    r->request_id = "req-" + std::to_string(i + 1);
    r->stream = rng_.chance(0.2);
    r->workflow = rng_.pick(kWorkflows);
    if (pass_through_ && rng_.chance(0.2)) {
      // A key the proxy does not know, forwarded as the client's own.
      r->key = r->ns = "pt-" + std::to_string(rng_.range(1, 30));
      upstream_.allowKey(r->key, r->key);
    } else if (rng_.chance(0.08)) {
      // A stream with the client's own token, in any spelling of the name.
      r->stream = true;
      r->ns.clear();
      r->client_token = "pub_tok_client_" + std::to_string(i + 1);
      upstream_.issueToken(r->client_token);
      static const std::vector<std::string> kSpellings = {"token=", "%74oken=", "tok%65n=", "a=1&token=", "%74%6F%6B%65%6E="};
      r->token_query = rng_.pick(kSpellings) + r->client_token;
      if (rng_.chance(0.5)) r->key.clear();
    }
    const auto& input = kInputs[static_cast<size_t>(rng_.range(0, static_cast<int64_t>(kInputs.size()) - 1))];
    r->body = rng_.pick(input);
    r->canonical = canonical(r->body);
    r->cache_control = rng_.pick(kCacheControls);
    r->arrival_us = rng_.range(0, span);
    if (rng_.chance(0.15)) r->leave_at_us = r->arrival_us + rng_.range(0, 2 * kSecond);
    ClientRequest* raw = r.get();
    requests_.push_back(std::move(r));
    rt_.at(raw->arrival_us, [this, serial = raw->serial] { send(serial); });
  }
  int purges = static_cast<int>(rng_.range(0, 3));
  for (int i = 0; i < purges; ++i) {
    Purge p;
    p.instance = static_cast<int>(rng_.range(0, n_instances_ - 1));
    p.workflow = rng_.pick(kWorkflows);
    if (rng_.chance(0.5)) p.canonical = canonical(rng_.pick(kInputs)[0]);
    p.issued_us = rng_.range(0, span);
    rt_.at(p.issued_us, [this, p] { purge(p); });
    purges_.push_back(p);
  }
  if (rng_.chance(0.3)) rt_.at(rng_.range(0, span), [this] { reload(); });
  // Rare meetings, made common in a share of the seeds so that the CI's
  // seeds reach them: a purge, Redis losing everything, then the same
  // workflow purged from another instance (generations and purge counters
  // that must not go backwards); a burst beyond the budget, then a reload
  // that raises the limit while it waits (queued runs start inside the
  // reload, and must carry the new key).
  if (redis_backend_ && n_instances_ > 1 && rng_.chance(0.15)) {
    int64_t t1 = rng_.range(0, span / 2);
    int64_t t2 = t1 + rng_.range(50 * kMs, kSecond);
    int64_t t3 = t2 + rng_.range(0, kSecond);
    Purge first;
    first.instance = static_cast<int>(rng_.range(0, n_instances_ - 1));
    first.workflow = rng_.pick(kWorkflows);
    if (rng_.chance(0.5)) first.canonical = canonical(rng_.pick(kInputs)[0]);
    first.issued_us = t1;
    Purge second = first;
    second.instance = (first.instance + 1) % n_instances_;
    if (rng_.chance(0.5)) second.canonical = rng_.chance(0.5) ? "" : canonical(rng_.pick(kInputs)[0]);
    second.issued_us = t3;
    for (const Purge& p : {first, second}) {
      rt_.at(p.issued_us, [this, p] { purge(p); });
      purges_.push_back(p);
    }
    incidents_.push_back({t2, t2 + kSecond});
    // Restarted (connections drop and come back), or flushed under them
    // (FLUSHALL, eviction): nothing tells the instances of the second.
    if (rng_.chance(0.5)) {
      rt_.at(t2, [this] { redis_.restart(); });
    } else {
      rt_.at(t2, [this] { redis_.flush(); });
    }
  }
  if (redis_backend_ && n_instances_ > 1 && rng_.chance(0.1)) {
    // Two instances purge two inputs of one workflow within a round trip
    // of each other, and purge messages are often lost: the input-purge
    // counter is what must tell each instance of the other's purge.
    redis_.drop_pubsub = 0.6;
    int64_t at = rng_.range(span / 4, span);
    std::string workflow = rng_.pick(kWorkflows);
    for (int i = 0; i < 2; ++i) {
      Purge p;
      p.instance = i;
      p.workflow = workflow;
      p.canonical = canonical(kInputs[static_cast<size_t>(i)][0]);
      p.issued_us = at + rng_.range(0, 3 * kMs);
      rt_.at(p.issued_us, [this, p] { purge(p); });
      purges_.push_back(p);
    }
  }
  if (rng_.chance(0.15)) {
    int64_t burst_at = rng_.range(0, span / 2);
    int burst = static_cast<int>(rng_.range(limit_ + 1, 3 * limit_));
    for (int i = 0; i < burst; ++i) {
      auto r = std::make_unique<ClientRequest>();
      r->serial = static_cast<int>(requests_.size()) + 1;
      r->instance = static_cast<int>(rng_.range(0, n_instances_ - 1));
      r->request_id = "req-" + std::to_string(r->serial);
      r->workflow = rng_.pick(kWorkflows);
      // Inputs of their own: each is a run that waits for the budget.
      r->body = R"({"burst":)" + std::to_string(i) + "}";
      r->canonical = canonical(r->body);
      r->arrival_us = burst_at;
      ClientRequest* raw = r.get();
      requests_.push_back(std::move(r));
      rt_.at(raw->arrival_us, [this, serial = raw->serial] { send(serial); });
    }
    rt_.at(burst_at + rng_.range(1, 500) * kMs, [this] { reload(); });
  }
  if (rng_.chance(0.2)) {
    int64_t at = rng_.range(0, span);
    int64_t d = rng_.range(100 * kMs, 2 * kSecond);
    incidents_.push_back({at, at + d + 500 * kMs});
    rt_.at(at, [this, d] { redis_.pauseFor(d); });
  }
  if (rng_.chance(0.25)) {
    int64_t at = rng_.range(0, span);
    incidents_.push_back({at, at + kSecond});
    rt_.at(at, [this] { redis_.restart(); });
  }
}

void Fleet::send(int serial) {
  ClientRequest& r = *requests_[static_cast<size_t>(serial - 1)];
  Instance& in = instances_[static_cast<size_t>(r.instance)];
  trace_.add("client #" + std::to_string(serial) + " → instance " + std::to_string(r.instance) + " " +
             (r.stream ? "stream " : "run ") + r.workflow + (r.token_query.empty() ? "" : "?" + r.token_query) +
             " as " + (r.key.empty() ? "(no key)" : r.key) + " " + r.body +
             (r.cache_control.empty() ? "" : " [" + r.cache_control + "]"));
  connections_.push_back(nullptr);
  std::shared_ptr<void>& conn = connections_.back();
  // The server offers the head first (docs/http.md), then the whole request.
  auto head = std::make_unique<SimExchange>(rt_, trace_, r, conn, false);
  SimExchange* head_raw = head.get();
  exchanges_.push_back(std::move(head));
  if (!in.handler->handleHead(*head_raw)) {
    head_raw->discard();  // dropped by the server; a new exchange carries the body
    auto ex = std::make_unique<SimExchange>(rt_, trace_, r, conn, true);
    SimExchange* raw = ex.get();
    exchanges_.push_back(std::move(ex));
    in.handler->handleClient(*raw);
    if (r.leave_at_us >= 0) {
      rt_.at(r.leave_at_us, [raw] { raw->leave(); });
    }
  }
}

void Fleet::purge(const Purge& p) {
  auto r = std::make_unique<ClientRequest>();
  r->serial = static_cast<int>(requests_.size()) + 1;
  r->instance = p.instance;
  r->admin = true;
  r->request_id = "purge-" + std::to_string(r->serial);
  r->body = R"({"organisation":"acme","workflow_id":")" + p.workflow + "\"";
  if (!p.canonical.empty()) r->body += ",\"body\":" + p.canonical;
  r->body += "}";
  r->arrival_us = rt_.nowUs();
  trace_.add("purge #" + std::to_string(r->serial) + " on instance " + std::to_string(p.instance) + ": " + r->body);
  connections_.push_back(nullptr);
  auto ex = std::make_unique<SimExchange>(rt_, trace_, *r, connections_.back(), true);
  SimExchange* raw = ex.get();
  exchanges_.push_back(std::move(ex));
  requests_.push_back(std::move(r));
  instances_[static_cast<size_t>(p.instance)].handler->handleAdmin(*raw);
}

void Fleet::reload() {
  std::string old_key = "sk_acme_" + std::to_string(key_generation_);
  ++key_generation_;
  // Often the plan grew too: the upstream allows more from now on, and so
  // does the proxy (never fewer: starts already counted would pass the new
  // limit in the upstream's window).
  bool raised = limit_ < 12 && rng_.chance(0.6);
  if (raised) {
    limit_ = static_cast<int>(rng_.range(limit_ + 1, 12));
    upstream_.limit = limit_;
  }
  ConfigPtr config = makeConfig();
  if (!config) return;
  trace_.add("SIGHUP: every instance reloads; the organisation's key rotates to generation " +
             std::to_string(key_generation_) + " and the old one is revoked" +
             (raised ? "; the limit goes up to " + std::to_string(limit_) + "/s" : ""));
  upstream_.allowKey("sk_acme_" + std::to_string(key_generation_), "acme");
  upstream_.revokeKey(old_key);
  for (auto& in : instances_) in.handler->setConfig(config);  // as Proxy::reload does
}

const ClientRequest* Fleet::ownerOf(const UpstreamStart& s) const {
  for (const auto& r : requests_) {
    if (r->request_id == s.request_id) return r.get();
  }
  return nullptr;
}

std::string Fleet::nsOf(const UpstreamStart& s) const {
  const ClientRequest* owner = ownerOf(s);
  return owner ? owner->ns : "?";
}

bool Fleet::redisIncident(int64_t from_us, int64_t to_us) const {
  for (const auto& [a, b] : incidents_) {
    if (a <= to_us && b >= from_us) return true;
  }
  return false;
}

// --- checks -----------------------------------------------------------------------

void Fleet::checkRequests() {
  const auto& starts = upstream_.starts();
  for (const auto& rp : requests_) {
    const ClientRequest& r = *rp;
    std::string who = "client #" + std::to_string(r.serial) + " (" + r.request_id + ")";
    for (const auto& c : r.contract) fail(who + ": exchange contract: " + c);
    if (!r.left && r.answers != 1) {
      fail(who + " got " + std::to_string(r.answers) + " responses");
      continue;
    }
    if (r.answers == 0) continue;
    const std::string* id = r.header("x-request-id");
    if (!id || *id != r.request_id) fail(who + ": X-Request-Id " + (id ? *id : "(none)"));
    if (r.admin) {
      if (r.status != 200) fail(who + ": purge answered " + std::to_string(r.status));
      continue;
    }
    if (r.status == 401) fail(who + ": 401 — the proxy sent a key the upstream refused, or lost the client's");
    if (r.status != 200 || r.left || r.cut) continue;
    // Which run made these bytes?
    const UpstreamStart* made = nullptr;
    for (const auto& s : starts) {
      if (s.status == 200 && s.answer == r.got && (s.kind == StartKind::Run || s.kind == StartKind::Stream)) {
        made = &s;
        break;
      }
    }
    if (!made) {
      fail(who + ": 200 with bytes no upstream run sent: " + r.got.substr(0, 80));
      continue;
    }
    bool same_input = made->workflow == r.workflow && canonical(made->body) == r.canonical &&
                      (made->kind == StartKind::Stream) == r.stream && nsOf(*made) == r.ns;
    if (!r.client_token.empty()) {
      const std::string* xc = r.header("x-cache");
      if (!xc || *xc != "BYPASS") fail(who + ": a client-token stream answered X-Cache " + (xc ? *xc : "(none)"));
      if (made->request_id != r.request_id) fail(who + ": a client-token stream got run #" + std::to_string(made->serial));
    }
    if (!same_input) {
      fail(who + ": got the answer of run #" + std::to_string(made->serial) + " for another input");
      continue;
    }
    // Fresh enough for the request's Cache-Control (1 ms: stored times are whole ms).
    Parsed cc = parse(r.cache_control);
    const std::string* xc = r.header("x-cache");
    bool stale = xc && *xc == "STALE";
    int64_t floor = r.arrival_us - static_cast<int64_t>((ttl_s_ + (stale ? stale_s_ : 0)) * kSecond) - kMs;
    if (cc.max_age) floor = std::max(floor, r.arrival_us - *cc.max_age * kSecond - kMs);
    // (no-cache: a run that ended in the millisecond the request came is
    // one the proxy cannot tell from a later one: stored times are ms.)
    if (cc.no_cache || cc.no_store) floor = std::max(floor, r.arrival_us - kMs);
    if (made->done_us < floor) {
      fail(who + " [" + r.cache_control + "]: answered with run #" + std::to_string(made->serial) + " done at " +
           std::to_string(made->done_us / kMs) + " ms, older than it accepts (" + std::to_string(floor / kMs) +
           " ms)" + (xc ? " X-Cache " + *xc : ""));
    }
    if (cc.only_if_cached && xc && (*xc == "MISS" || *xc == "BYPASS")) {
      fail(who + ": only-if-cached made a run (" + *xc + ")");
    }
    // A purge acknowledged before the request came hides every older answer,
    // on every instance once it has heard (a second), unless Redis failed.
    for (const auto& rq : requests_) {
      if (!rq->admin || rq->status != 200 || rq->answered_us < 0 || rq->answered_us > r.arrival_us) continue;
      const Purge* p = nullptr;
      for (const auto& pp : purges_) {
        if (pp.issued_us == rq->arrival_us && pp.instance == rq->instance) p = &pp;
      }
      if (!p || r.ns != "acme" || p->workflow != r.workflow || (!p->canonical.empty() && p->canonical != r.canonical)) {
        continue;  // (purges name the organisation acme)
      }
      bool here = p->instance == r.instance;
      bool heard = redis_backend_ && r.arrival_us > rq->answered_us + 1500 * kMs &&
                   !redisIncident(p->issued_us - kSecond, r.arrival_us);
      if ((here || heard) && made->done_us < p->issued_us) {
        fail(who + ": run #" + std::to_string(made->serial) + " was done before the purge of " + p->workflow +
             " at " + std::to_string(p->issued_us / kMs) + " ms, answered after it");
      }
    }
  }
}

void Fleet::checkUpstream() {
  for (const auto& s : upstream_.starts()) {
    std::string what = "upstream #" + std::to_string(s.serial) + " (instance " + std::to_string(s.instance) + ")";
    if (s.fault == "limit") fail(what + ": more starts than the upstream's limit in one window");
    if (s.fault == "revoked") fail(what + ": sent a revoked key");
    if (s.fault == "unknown-key") fail(what + ": sent a key the upstream never issued");
    // The X-Request-Id is that of a request of this instance for this input
    // still waiting for its answer.
    const ClientRequest* owner = ownerOf(s);
    if (!owner) {
      fail(what + ": X-Request-Id " + s.request_id + " is no client's");
      continue;
    }
    if (!owner->client_token.empty()) {
      // Forwarded at once with its own token; never a token of the proxy's.
      if (s.kind == StartKind::Token) fail(what + ": fetched a token for " + s.request_id + ", a client-token stream");
      if (s.kind == StartKind::Stream && s.fault == "token") {
        fail(what + ": " + s.request_id + "'s own token did not reach the upstream: " + s.target);
      }
      continue;
    }
    if (s.kind == StartKind::Stream) continue;  // carries its token
    if (owner->ns != "acme" && s.key != owner->key) {
      fail(what + ": a pass_through request of " + owner->key + " went with the key " + s.key);
    }
    if (owner->instance != s.instance) fail(what + ": carries " + s.request_id + " of another instance");
    if (s.kind == StartKind::Run && (owner->workflow != s.workflow || owner->canonical != canonical(s.body))) {
      fail(what + ": carries " + s.request_id + " of another input");
    }
    if (owner->answered_us >= 0 && owner->answered_us < s.start_us) {
      fail(what + ": carries " + s.request_id + ", a request answered at " + std::to_string(owner->answered_us / kMs) +
           " ms, before this start");
    }
  }
}

void Fleet::checkDuplicates() {
  const auto& starts = upstream_.starts();
  int64_t ttl_us = static_cast<int64_t>(ttl_s_ * kSecond);
  for (const auto& s2 : starts) {
    if (s2.kind != StartKind::Run && s2.kind != StartKind::Stream) continue;
    if (s2.kind == StartKind::Stream && !streams_) continue;  // streams are not shared then
    std::string c2 = canonical(s2.body);
    for (const auto& s1 : starts) {
      if (s1.serial >= s2.serial) break;
      if (s1.kind != s2.kind || s1.workflow != s2.workflow || s1.cancelled || nsOf(s1) != nsOf(s2)) continue;
      if (nsOf(s1).empty()) continue;  // client-token streams are never shared
      // Streams fan out within an instance; across instances they share
      // only what is stored (no fleet lock yet: the flight model will
      // give them one).
      if (s2.kind == StartKind::Stream && s1.instance != s2.instance) continue;
      if (!redis_backend_ && s1.instance != s2.instance) continue;  // nothing shared without Redis
      if (canonical(s1.body) != c2) continue;
      bool running = s1.done_us < 0 || s1.done_us > s2.start_us;
      bool stored_fresh = !running && s1.status == 200 && s1.fault.empty() && s2.start_us < s1.done_us + ttl_us - kMs;
      if (!running && !stored_fresh) continue;
      if (running && s1.status != 0 && s1.status != 200) continue;  // it failed (the answer is known already)
      // Excused: Redis in trouble, a purge between, a request that forbade
      // the cache — since the flights were made (when their requests came:
      // a flight decides to lead, and its key, then).
      int64_t made_us = s1.start_us;
      for (const auto& r : requests_) {
        if (r->request_id == s1.request_id || r->request_id == s2.request_id) {
          made_us = std::min(made_us, r->arrival_us);
        }
      }
      if (redisIncident(made_us, s2.start_us)) continue;
      bool excused = false;
      for (const auto& p : purges_) {
        if (p.workflow == s1.workflow && p.issued_us >= made_us - 2 * kSecond && p.issued_us <= s2.start_us) {
          excused = true;
        }
      }
      // The generation in Redis moved meanwhile (a purge that reached Redis
      // late, a repair after a restart): the runs had different keys.
      for (const auto& [t, key] : redis_.generation_changes) {
        bool of_it = key.size() > s1.workflow.size() &&
                     key.compare(key.size() - s1.workflow.size() - 1, std::string::npos, ":" + s1.workflow) == 0;
        if (of_it && t >= made_us - 2 * kSecond && t <= s2.start_us) excused = true;
      }
      for (const auto& r : requests_) {
        if (r->admin || r->workflow != s1.workflow || r->canonical != c2 || r->stream != (s1.kind == StartKind::Stream) ||
            r->ns != nsOf(s1)) {
          continue;
        }
        if (r->arrival_us > s2.start_us) continue;
        Parsed cc = parse(r->cache_control);
        bool forbids = cc.no_cache || cc.no_store ||
                       (cc.max_age && !running && s2.start_us - s1.done_us > *cc.max_age * kSecond - kMs);
        if (forbids && (r->answered_us < 0 || r->answered_us >= s2.start_us)) excused = true;
        // A run made for a request that stores nothing is not there to find.
        if (r->request_id == s1.request_id && cc.no_store) excused = true;
      }
      if (excused) continue;
      fail("upstream #" + std::to_string(s2.serial) + " (instance " + std::to_string(s2.instance) +
           ") ran an input that run #" + std::to_string(s1.serial) + " (instance " + std::to_string(s1.instance) +
           ") " + (running ? "was running" : "had stored at " + std::to_string(s1.done_us / kMs) + " ms") +
           " at the time");
      break;
    }
  }
}

void Fleet::checkQuiet() {
  if (rt_.pendingEvents() != 0) {
    fail("not quiet after " + std::to_string(kQuiesceBy / kSecond) + " s of virtual time (" +
         std::to_string(rt_.pendingEvents()) + " events pending)");
  }
  for (const auto& in : instances_) {
    std::string who = "instance " + std::to_string(in.index) + ": ";
    for (const auto& [map, n] : in.handler->trackedEntries()) {
      std::string_view m = map;
      // Bounded rather than empty: remembered rate-limit figures (one per
      // organisation) and purge generations (one per purged workflow).
      // Generations: without Redis, only purged workflows have one; with
      // Redis, those read in the last second too, swept once the map has
      // doubled past 1024.
      size_t bound = m == "ratelimit_seen" ? 1 : m != "generations" ? 0 : redis_backend_ ? 1024 : purges_.size();
      if (n > bound) fail(who + std::string(map) + " holds " + std::to_string(n) + " at quiescence");
    }
    if (in.handler->runsInFlight() != 0) fail(who + "runs still in flight");
    if (in.scheduler->queued() != 0) fail(who + "requests still queued");
    if (in.scheduler->budgets() > 1) fail(who + std::to_string(in.scheduler->budgets()) + " budgets");
    if (in.transport->active() != 0) fail(who + "upstream transfers left open");
    if (in.redis && in.redis->pendingCommands() != 0) fail(who + "Redis commands left waiting");
  }
}

void Fleet::check() {
  checkRequests();
  checkUpstream();
  checkDuplicates();
  checkQuiet();
}

SeedResult Fleet::run(const SeedOptions& options) {
  SeedResult result;
  traceSink()->trace = &trace_;
  build();
  if (failures_.empty()) {
    plan();
    while (rt_.nowUs() <= kQuiesceBy && rt_.step()) {
    }
    check();
  }
  result.summary = std::to_string(n_instances_) + " instance(s), limit " + std::to_string(limit_) + "/s, ttl " +
                   std::to_string(static_cast<int>(ttl_s_)) + " s, " + std::to_string(requests_.size()) +
                   " requests, " + std::to_string(upstream_.starts().size()) + " upstream starts, " +
                   std::to_string(redis_.restarts()) + " Redis restart(s) or flush(es), " + std::to_string(rt_.eventsRun()) +
                   " events";
  result.failures = std::move(failures_);
  result.events = rt_.eventsRun();
  if (!result.failures.empty() || options.trace) result.trace = trace_.text();
  return result;
}

}  // namespace

SeedResult runSeed(uint64_t seed, const SeedOptions& options) {
  auto sink = traceSink();
  Fleet fleet(seed);
  SeedResult result = fleet.run(options);
  sink->trace = nullptr;
  return result;
}

}  // namespace wfp::sim
