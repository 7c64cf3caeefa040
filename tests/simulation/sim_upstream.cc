#include "tests/simulation/sim_upstream.h"

#include "proxy/http_server.h"

namespace wfp::sim {

namespace {

constexpr std::string_view kRunPrefix = "/api/v1/run/";

int hexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// URLSearchParams' reading of one component: '+' is a space, %XX a byte.
// (The simulation's own, not the proxy's stream_token.cc: it checks that.)
std::string decode(std::string_view in) {
  std::string out;
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '+') {
      out += ' ';
    } else if (in[i] == '%' && i + 2 < in.size() && hexDigit(in[i + 1]) >= 0 && hexDigit(in[i + 2]) >= 0) {
      out += static_cast<char>(hexDigit(in[i + 1]) * 16 + hexDigit(in[i + 2]));
      i += 2;
    } else {
      out += in[i];
    }
  }
  return out;
}

// The first value of `name` in the target's query, names and values decoded.
std::string queryValue(std::string_view target, std::string_view name) {
  size_t q = target.find('?');
  if (q == std::string_view::npos) return {};
  std::string_view rest = target.substr(q + 1);
  while (!rest.empty()) {
    size_t amp = rest.find('&');
    std::string_view pair = rest.substr(0, amp);
    size_t eq = pair.find('=');
    if (decode(pair.substr(0, eq)) == name) return eq == std::string_view::npos ? "" : decode(pair.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    rest.remove_prefix(amp + 1);
  }
  return {};
}

}  // namespace

SimUpstream::Answer SimUpstream::json(UpstreamStart& s, int status, std::string body, HttpHeaders extra) {
  Answer a;
  a.status = status;
  a.headers = {{"Content-Type", "application/json"}};
  for (auto& h : extra) a.headers.push_back(std::move(h));
  s.status = status;
  s.answer = body;
  a.chunks.push_back(std::move(body));
  return a;
}

SimUpstream::Answer SimUpstream::receive(UpstreamStart& s, const UpstreamRequest& request) {
  std::string target_path = s.target.substr(0, s.target.find('?'));
  std::string_view path = target_path;
  bool run_route = s.method == "POST" && path.substr(0, kRunPrefix.size()) == kRunPrefix;
  if (run_route) {
    std::string_view rest = path.substr(kRunPrefix.size());
    bool stream = rest.size() > 7 && rest.substr(rest.size() - 7) == "/stream";
    if (stream) rest.remove_suffix(7);
    s.workflow = std::string(rest);
    s.kind = stream ? StartKind::Stream : StartKind::Run;
  } else if (s.method == "GET" && path == "/api/v1/token") {
    s.kind = StartKind::Token;
  }
  if (const std::string* auth = findHeader(request.headers, "authorization")) {
    if (auth->rfind("Bearer ", 0) == 0) s.key = auth->substr(7);
  }
  if (const std::string* id = findHeader(request.headers, "x-request-id")) s.request_id = *id;

  if (s.kind == StartKind::Stream) {
    std::string token = queryValue(s.target, "token");
    if (!tokens_.erase(token)) {
      s.fault = "token";
      return json(s, 401, R"({"error":"Invalid or expired token","success":false})");
    }
  } else if (s.kind == StartKind::Run || s.kind == StartKind::Token) {
    auto key = keys_.find(s.key);
    if (key == keys_.end() || !key->second.valid) {
      s.fault = key == keys_.end() ? "unknown-key" : "revoked";
      return json(s, 401, R"({"error":"Invalid API key","success":false})");
    }
    s.org = key->second.org;
    std::deque<int64_t>& w = window_[s.org];
    while (!w.empty() && w.front() <= s.start_us - window_us) w.pop_front();
    int allowed = s.org.rfind("pt-", 0) == 0 ? key_limit : limit;
    if (static_cast<int>(w.size()) >= allowed) {
      s.fault = "limit";
      return json(s, 429, R"({"error":"Rate limit exceeded","success":false})",
                  {{"Retry-After", "1"}, {"x-ratelimit-limit", std::to_string(limit)}, {"x-ratelimit-remaining", "0"}});
    }
    w.push_back(s.start_us);
  } else {
    s.fault = "unknown-route";
    return json(s, 404, R"({"error":"Not found","success":false})");
  }

  // Injected faults.
  if (rng_.chance(p_hang)) {
    s.fault = "hang";
    Answer a;
    a.hang = true;
    return a;
  }
  if (rng_.chance(p_reset)) {
    s.fault = "reset";
    return Answer{};
  }
  if (rng_.chance(p_5xx)) {
    s.fault = "5xx";
    return json(s, 500, R"({"error":"Internal error","success":false})");
  }
  if (s.kind != StartKind::Stream && rng_.chance(p_429)) {
    s.fault = "429";
    return json(s, 429, R"({"error":"Too many requests","success":false})",
                {{"Retry-After", "1"}, {"x-ratelimit-limit", std::to_string(limit)}, {"x-ratelimit-remaining", "0"}});
  }

  int allowed = s.org.rfind("pt-", 0) == 0 ? key_limit : limit;
  std::string remaining = std::to_string(allowed - static_cast<int>(window_[s.org].size()));
  HttpHeaders rl{{"x-ratelimit-limit", std::to_string(allowed)}, {"x-ratelimit-remaining", remaining}};
  std::string name = "run#" + std::to_string(s.serial);
  switch (s.kind) {
    case StartKind::Run:
      return json(s, 200, R"({"success":true,"result":")" + s.workflow + " " + name + R"("})", rl);
    case StartKind::Token: {
      std::string token = "pub_tok_" + std::to_string(s.serial);
      tokens_.insert(token);
      return json(s, 200, R"({"success":true,"token":")" + token + R"(","ttl":60})", rl);
    }
    case StartKind::Stream: {
      Answer a;
      a.status = 200;
      a.headers = {{"Content-Type", "text/plain; charset=utf-8"}};
      int parts = static_cast<int>(rng_.range(1, 4));
      for (int i = 0; i < parts; ++i) a.chunks.push_back(name + " part " + std::to_string(i) + "\n");
      s.status = 200;
      for (const auto& c : a.chunks) s.answer += c;
      return a;
    }
    case StartKind::Other:
      break;
  }
  return Answer{};
}

// --- the instance's transport ---------------------------------------------------

SimTransport::Transfer* SimTransport::find(uint64_t id) {
  auto it = active_.find(id);
  return it == active_.end() ? nullptr : &it->second;
}

uint64_t SimTransport::start(UpstreamRequest request, UpstreamCallbacks callbacks) {
  uint64_t id = next_id_++;
  Transfer& t = active_[id];
  t.cb = std::move(callbacks);
  t.started_us = rt_.nowUs();
  std::weak_ptr<bool> alive = alive_;
  // The request reaches the upstream now (what the upstream decides depends
  // on the moment it was sent: a key rotated a moment later was still good);
  // the proxy hears of it only on later passes, never inside start():
  // on_sending first, as libcurl's would, then the answer.
  UpstreamStart s;
  s.serial = up_.starts_.size() + 1;
  s.instance = instance_;
  s.start_us = rt_.nowUs();
  s.method = request.method;
  static constexpr std::string_view kBase = "http://upstream.sim";
  s.target = request.url.rfind(kBase, 0) == 0 ? request.url.substr(kBase.size()) : request.url;
  s.body = request.body;
  up_.starts_.push_back(s);
  UpstreamStart& rec = up_.starts_.back();
  t.serial = rec.serial;
  t.answer = up_.receive(rec, request);
  up_.trace_.add("upstream: #" + std::to_string(rec.serial) + " from instance " + std::to_string(instance_) + " " +
                 rec.method + " " + rec.target + " id=" + rec.request_id + " key=" + rec.key +
                 (rec.fault.empty() ? "" : " fault=" + rec.fault) + " → " + std::to_string(rec.status));
  rt_.post([this, alive, id] {
    if (alive.expired()) return;
    Transfer* tr = find(id);
    if (!tr) return;
    if (tr->cb.on_sending) tr->cb.on_sending();
    tr = find(id);
    if (!tr) return;
    if (tr->answer.hang) {
      rt_.at(tr->started_us + up_.timeout_us, [this, alive, id] {
        if (!alive.expired()) done(id, UpstreamFailure::Timeout, "timeout (simulated hang)");
      });
      return;
    }
    int64_t latency = up_.rng_.range(up_.latency_min_us, up_.latency_max_us);
    if (up_.rng_.chance(up_.p_slow)) latency += up_.rng_.range(500'000, 3'000'000);
    if (tr->answer.status == 0) {
      rt_.after(latency, [this, alive, id] {
        if (!alive.expired()) done(id, UpstreamFailure::Unavailable, "connection reset (simulated)");
      });
      return;
    }
    rt_.after(latency, [this, alive, id] {
      if (!alive.expired()) sendHead(id);
    });
  });
  return id;
}

void SimTransport::sendHead(uint64_t id) {
  Transfer* t = find(id);
  if (!t) return;
  t->head_sent = true;
  UpstreamHead head;
  head.status = t->answer.status;
  head.reason = head.status == 200 ? "OK" : "Error";
  head.headers = t->answer.headers;
  if (t->cb.on_head) t->cb.on_head(head);
  pump(id);
}

void SimTransport::pump(uint64_t id) {
  Transfer* t = find(id);
  if (!t || t->paused) return;
  if (t->next_chunk < t->answer.chunks.size()) {
    const std::string& chunk = t->answer.chunks[t->next_chunk];
    bool taken = t->cb.on_data ? t->cb.on_data(chunk) : true;
    t = find(id);
    if (!t) return;  // cancelled inside on_data
    if (!taken) {
      t->paused = true;  // comes again after resume()
      return;
    }
    ++t->next_chunk;
    std::weak_ptr<bool> alive = alive_;
    rt_.after(up_.rng_.range(0, 20'000), [this, alive, id] {
      if (!alive.expired()) pump(id);
    });
    return;
  }
  done(id, UpstreamFailure::None, "");
}

void SimTransport::done(uint64_t id, UpstreamFailure failure, const std::string& detail) {
  auto it = active_.find(id);
  if (it == active_.end()) return;
  Transfer t = std::move(it->second);
  active_.erase(it);
  if (t.serial) up_.at(t.serial).done_us = rt_.nowUs();
  UpstreamResult result;
  result.failure = failure;
  result.detail = detail;
  result.head_received = t.head_sent;
  result.elapsed = std::chrono::microseconds(rt_.nowUs() - t.started_us);
  if (t.cb.on_done) t.cb.on_done(result);
}

void SimTransport::cancel(uint64_t id) {
  auto it = active_.find(id);
  if (it == active_.end()) return;
  if (it->second.serial) up_.at(it->second.serial).cancelled = true;
  active_.erase(it);
}

void SimTransport::resume(uint64_t id) {
  Transfer* t = find(id);
  if (!t || !t->paused) return;
  t->paused = false;
  std::weak_ptr<bool> alive = alive_;
  rt_.post([this, alive, id] {
    if (!alive.expired()) pump(id);
  });
}

}  // namespace wfp::sim
