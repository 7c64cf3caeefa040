// upstream_sim: a standalone simulator of the "AI Tutor Run Workflow API"
// (its behaviour: tests/upstream_sim/README.md), used by the integration tests, scripts/run
// and scripts/bench.  Single-threaded libevent evhttp server.  Usage and the
// control API (/__sim/...) are documented in tests/upstream_sim/README.md.

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;
using Headers = std::vector<std::pair<std::string, std::string>>;

// ---------------------------------------------------------------------------
// Exact upstream bodies (docs/upstream-api.md)

constexpr const char* kErr401 =
    R"({"error":"Unauthorized. Please provide a valid secret key.","success":false})";
constexpr const char* kErr402Run =
    R"({"error":"No credits remaining. Please add credits to continue using the service.","success":false,"code":"invalid_billing"})";
constexpr const char* kErr402Token =
    R"({"error":"Invalid billing. Please contact support.","success":false,"code":"invalid_billing"})";
constexpr const char* kErr404Workflow = R"({"error":"Workflow not found","success":false})";
constexpr const char* kErr429 = R"({"error":"Rate limit exceeded","success":false})";
constexpr const char* kErr500Run =
    R"({"error":"Failed to run workflow","success":false,"code":"internal_server_error"})";
constexpr const char* kErr500Stream =
    R"({"error":"Failed to run workflow: simulated failure","success":false,"code":"internal_server_error"})";
constexpr const char* kErr404 = R"({"error":"Not found","success":false})";

constexpr const char* kJson = "application/json";
constexpr const char* kTextPlain = "text/plain; charset=utf-8";

constexpr size_t kMiB = 1024 * 1024;
constexpr size_t kMaxRecordedBody = 4 * kMiB;
constexpr size_t kHugePiece = 256 * 1024;

// ---------------------------------------------------------------------------
// Time

using Clock = std::chrono::steady_clock;
Clock::time_point g_t0 = Clock::now();

double now_ms() {
  return std::chrono::duration<double, std::milli>(Clock::now() - g_t0).count();
}

timeval ms_to_tv(double ms) {
  if (!(ms > 0)) ms = 0;
  timeval tv;
  tv.tv_sec = static_cast<time_t>(ms / 1000.0);
  tv.tv_usec = static_cast<suseconds_t>(std::fmod(ms, 1000.0) * 1000.0);
  if (tv.tv_usec >= 1000000) tv.tv_usec = 999999;
  return tv;
}

// ---------------------------------------------------------------------------
// Small helpers

std::string dumpj(const ojson& j) {
  return j.dump(-1, ' ', false, ojson::error_handler_t::replace);
}

bool starts_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.compare(0, p.size(), p) == 0;
}

bool iequals_prefix(std::string_view s, std::string_view p) {
  if (s.size() < p.size()) return false;
  for (size_t i = 0; i < p.size(); ++i) {
    char a = s[i], b = p[i];
    if (a >= 'A' && a <= 'Z') a = static_cast<char>(a - 'A' + 'a');
    if (b >= 'A' && b <= 'Z') b = static_cast<char>(b - 'A' + 'a');
    if (a != b) return false;
  }
  return true;
}

bool valid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    unsigned c = p[i];
    if (c < 0x80) { ++i; continue; }
    size_t len;
    unsigned cp;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
    else return false;
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return false;
    if (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) return false;
    i += len;
  }
  return true;
}

std::string base64(const std::string& in) {
  static const char* tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  for (; i + 2 < in.size(); i += 3) {
    unsigned v = (p[i] << 16) | (p[i + 1] << 8) | p[i + 2];
    out += tbl[(v >> 18) & 63]; out += tbl[(v >> 12) & 63];
    out += tbl[(v >> 6) & 63];  out += tbl[v & 63];
  }
  if (i + 1 == in.size()) {
    unsigned v = p[i] << 16;
    out += tbl[(v >> 18) & 63]; out += tbl[(v >> 12) & 63]; out += "==";
  } else if (i + 2 == in.size()) {
    unsigned v = (p[i] << 16) | (p[i + 1] << 8);
    out += tbl[(v >> 18) & 63]; out += tbl[(v >> 12) & 63];
    out += tbl[(v >> 6) & 63];  out += '=';
  }
  return out;
}

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// application/x-www-form-urlencoded decoding as URLSearchParams does it.
std::string form_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '+') { out += ' '; continue; }
    if (c == '%' && i + 2 < s.size()) {
      int h = hexval(s[i + 1]), l = hexval(s[i + 2]);
      if (h >= 0 && l >= 0) { out += static_cast<char>(h * 16 + l); i += 2; continue; }
    }
    out += c;
  }
  return out;
}

// URLSearchParams.get(name): first occurrence, or nullopt.
std::optional<std::string> query_get(std::string_view query, std::string_view name) {
  size_t pos = 0;
  while (pos <= query.size()) {
    size_t amp = query.find('&', pos);
    if (amp == std::string_view::npos) amp = query.size();
    std::string_view part = query.substr(pos, amp - pos);
    if (!part.empty()) {
      size_t eq = part.find('=');
      std::string key = form_decode(part.substr(0, eq));
      if (key == name)
        return eq == std::string_view::npos ? std::string() : form_decode(part.substr(eq + 1));
    }
    pos = amp + 1;
  }
  return std::nullopt;
}

// JavaScript Number(string); nullopt means NaN.
std::optional<double> js_number(std::string s) {
  auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
  size_t b = 0, e = s.size();
  while (b < e && ws(s[b])) ++b;
  while (e > b && ws(s[e - 1])) --e;
  s = s.substr(b, e - b);
  if (s.empty()) return 0.0;
  if (s == "Infinity" || s == "+Infinity") return HUGE_VAL;
  if (s == "-Infinity") return -HUGE_VAL;
  if (s.size() > 2 && s[0] == '0' && std::strchr("xXoObB", s[1])) {
    int base = (s[1] == 'x' || s[1] == 'X') ? 16 : (s[1] == 'o' || s[1] == 'O') ? 8 : 2;
    double v = 0;
    for (size_t i = 2; i < s.size(); ++i) {
      int d = hexval(s[i]);
      if (d < 0 || d >= base) return std::nullopt;
      v = v * base + d;
    }
    return v;
  }
  size_t i = 0;
  if (s[i] == '+' || s[i] == '-') ++i;
  size_t digits = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') { ++i; ++digits; }
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') { ++i; ++digits; }
  }
  if (digits == 0) return std::nullopt;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    size_t ed = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') { ++i; ++ed; }
    if (ed == 0) return std::nullopt;
  }
  if (i != s.size()) return std::nullopt;
  return std::strtod(s.c_str(), nullptr);
}

// Formats a number the way JSON.stringify does for the values we produce.
std::string js_num_str(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
    return buf;
  }
  return json(v).dump();
}

const char* reason_phrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
  }
  return nullptr;  // libevent's default phrase
}

const char* method_name(evhttp_cmd_type t) {
  switch (t) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
  }
  return "UNKNOWN";
}

// ---------------------------------------------------------------------------
// State

struct KeyInfo {
  std::string org;
  int rps = 10;
};

struct Workflow {
  double latency_ms = 0;
  json citations;  // null or array; emitted only when a non-empty array
  int status = 0;  // 0 = behave normally; 404/402/500/... forced
  std::string owner;  // empty = belongs to every organisation
  bool published = true;
  int chunks = 4;
  double chunk_delay_ms = 10;
  long chunk_bytes = 0;  // > 0: each stream chunk is this many filler bytes
  std::optional<std::string> result;
};

struct TokenInfo {
  std::string org;
  double expires_ms = 0;
};

struct Fault {
  std::string mode;
  long remaining = 1;  // -1 = unlimited
  double delay_ms = 0;
  std::string path_prefix;
  std::string method;
  int status = 500;  // mode "status"
  std::string body;  // mode "status"
  std::string content_type = kJson;
  size_t bytes = 64 * kMiB;  // mode "huge_body"
};

enum class Route { Run, Stream, Token, Chat, Balance, Options, Other };

const char* route_name(Route r) {
  switch (r) {
    case Route::Run: return "run";
    case Route::Stream: return "stream";
    case Route::Token: return "token";
    case Route::Chat: return "chat";
    case Route::Balance: return "balance";
    case Route::Options: return "options";
    case Route::Other: return "other";
  }
  return "other";
}

struct Record {
  uint64_t seq = 0;
  double time_ms = 0;
  std::string method, uri, path;
  Headers headers;
  std::string body;
  size_t body_len = 0;
  bool body_kept = false;
  bool body_truncated = false;
  std::string org;
  bool has_org = false;
  Route route = Route::Other;
  std::string fault;
  int status = 0;
  double first_byte_ms = -1, done_ms = -1, aborted_ms = -1;
};

struct Stats {
  uint64_t runs = 0, tokens = 0, streams = 0, other = 0, total = 0;
  uint64_t status_429 = 0, ok = 0;
  uint64_t run_ok = 0, stream_ok = 0, token_ok = 0;
  uint64_t aborted = 0, faults_applied = 0;
  std::map<int, uint64_t> by_status;
};

enum class PKind { Full, Stream, Hang, Huge, MidBody };

struct Pending {
  PKind kind = PKind::Full;
  evhttp_request* req = nullptr;
  evhttp_connection* evcon = nullptr;
  uint64_t tag = 0;
  event* timer = nullptr;
  event* watch = nullptr;
  int status = 200;
  Headers headers;
  std::string body;
  std::vector<std::string> chunks;
  size_t next = 0;
  double chunk_delay_ms = 0;
  bool started = false;
  int phase = 0;
  size_t huge_total = 0, huge_sent = 0;
};

struct Action {
  bool stream = false;
  int status = 200;
  Headers headers;
  std::string body;
  std::vector<std::string> chunks;
  double chunk_delay_ms = 0;
  double delay_ms = 0;
};

struct Sim {
  event_base* base = nullptr;
  evhttp* http = nullptr;
  bool quiet = false;
  bool keep_bodies = true;
  size_t max_records = 100000;

  std::unordered_map<std::string, KeyInfo> keys, cli_keys;
  std::set<std::string> no_credits, cli_no_credits;
  std::unordered_map<std::string, Workflow> workflows;
  std::unordered_map<std::string, std::deque<double>> buckets;
  std::unordered_map<std::string, TokenInfo> tokens;
  uint64_t tokens_issued = 0;
  std::vector<Fault> faults;

  std::deque<Record> records;
  uint64_t next_seq = 1;
  uint64_t gen = 0;
  Stats stats;
  uint64_t run_counter = 0, stream_counter = 0, chat_counter = 0;

  std::unordered_map<evhttp_connection*, Pending*> pending;
  std::mt19937_64 rng{std::random_device{}()};
};

Sim* g = nullptr;

void logf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void logf(const char* fmt, ...) {
  if (g && g->quiet) return;
  va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "upstream_sim: ");
  std::vfprintf(stderr, fmt, ap);
  std::fputc('\n', stderr);
  va_end(ap);
}

// ---------------------------------------------------------------------------
// Records

constexpr int kSeqBits = 40;

uint64_t make_tag(uint64_t seq) { return (g->gen << kSeqBits) | seq; }

Record* find_record(uint64_t tag) {
  if (tag == 0) return nullptr;
  if ((tag >> kSeqBits) != (g->gen & ((1ULL << (64 - kSeqBits)) - 1))) return nullptr;
  uint64_t seq = tag & ((1ULL << kSeqBits) - 1);
  if (g->records.empty()) return nullptr;
  uint64_t first = g->records.front().seq;
  if (seq < first) return nullptr;
  uint64_t idx = seq - first;
  if (idx >= g->records.size()) return nullptr;
  Record& r = g->records[idx];
  return r.seq == seq ? &r : nullptr;
}

void mark_start(uint64_t tag, int status) {
  Stats& s = g->stats;
  if (status == 200) ++s.ok;
  if (status == 429) ++s.status_429;
  ++s.by_status[status];
  if (Record* r = find_record(tag)) {
    r->status = status;
    r->first_byte_ms = now_ms();
  }
}

void mark_aborted(uint64_t tag) {
  ++g->stats.aborted;
  if (Record* r = find_record(tag)) {
    if (r->aborted_ms < 0 && r->done_ms < 0) r->aborted_ms = now_ms();
  }
}

void on_complete(evhttp_request*, void* arg) {
  if (Record* r = find_record(reinterpret_cast<uintptr_t>(arg))) r->done_ms = now_ms();
}

// ---------------------------------------------------------------------------
// Sending

void add_headers(evhttp_request* req, const Headers& h) {
  evkeyvalq* oh = evhttp_request_get_output_headers(req);
  for (const auto& [k, v] : h) evhttp_add_header(oh, k.c_str(), v.c_str());
}

void send_now(evhttp_request* req, uint64_t tag, int status, const Headers& h,
              const std::string& body) {
  add_headers(req, h);
  evbuffer_add(evhttp_request_get_output_buffer(req), body.data(), body.size());
  mark_start(tag, status);
  evhttp_send_reply(req, status, reason_phrase(status), nullptr);
}

// Control-API replies (not recorded).
void send_ctrl(evhttp_request* req, int status, const ojson& j) {
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", kJson);
  std::string body = dumpj(j);
  evbuffer_add(evhttp_request_get_output_buffer(req), body.data(), body.size());
  evhttp_send_reply(req, status, reason_phrase(status), nullptr);
}

void set_nodelay(evhttp_connection* evcon) {
  int fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evcon));
  if (fd < 0) return;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// Close the connection with a TCP RST (no FIN first).  evhttp_connection_free
// would shutdown(SHUT_WR) (sending a FIN) before closing, so the connected
// socket is closed with SO_LINGER 0 by dup2()-ing an unconnected socket over
// its descriptor; libevent then shuts down and closes the dummy.
void rst_close(evhttp_connection* evcon) {
  int fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evcon));
  if (fd >= 0) {
    linger l{};
    l.l_onoff = 1;
    l.l_linger = 0;
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    int dummy = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (dummy >= 0) {
      dup2(dummy, fd);
      close(dummy);
    }
  }
  evhttp_connection_free(evcon);
}

// ---------------------------------------------------------------------------
// Pending (asynchronous) responses.  A Pending owns its timers and a watcher
// on the client socket (evhttp stops reading once a request is handed over,
// so a client that goes away would otherwise only be noticed on write).

void pending_timer_cb(evutil_socket_t, short, void* arg);
void pending_watch_cb(evutil_socket_t fd, short, void* arg);
void on_conn_close(evhttp_connection* evcon, void*);

Pending* new_pending(evhttp_request* req, uint64_t tag, PKind kind) {
  evhttp_connection* evcon = evhttp_request_get_connection(req);
  auto* p = new Pending;
  p->kind = kind;
  p->req = req;
  p->evcon = evcon;
  p->tag = tag;
  p->timer = evtimer_new(g->base, pending_timer_cb, p);
  int fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evcon));
  if (fd >= 0) {
    p->watch = event_new(g->base, fd, EV_READ, pending_watch_cb, p);
    event_add(p->watch, nullptr);
  }
  g->pending[evcon] = p;
  evhttp_connection_set_closecb(evcon, on_conn_close, nullptr);
  return p;
}

void release(Pending* p) {
  auto it = g->pending.find(p->evcon);
  if (it != g->pending.end() && it->second == p) g->pending.erase(it);
  if (p->timer) event_free(p->timer);
  if (p->watch) event_free(p->watch);
  delete p;
}

void arm(Pending* p, double ms) {
  timeval tv = ms_to_tv(ms);
  evtimer_add(p->timer, &tv);
}

// Connection close callback: the client went away (or a write failed) while a
// response was pending.
void on_conn_close(evhttp_connection* evcon, void*) {
  auto it = g->pending.find(evcon);
  if (it == g->pending.end()) return;
  Pending* p = it->second;
  evhttp_request* req = p->req;
  mark_aborted(p->tag);
  // On a failed write libevent detaches the unfinished request (its
  // connection becomes NULL) and leaves it to us; otherwise it is still
  // queued on the connection and libevent frees it.
  bool detached = evhttp_request_get_connection(req) == nullptr;
  release(p);
  if (detached) evhttp_request_free(req);
}

void pending_watch_cb(evutil_socket_t fd, short, void* arg) {
  auto* p = static_cast<Pending*>(arg);
  char c;
  ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (r > 0) return;  // pipelined data: stop watching
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
    event_add(p->watch, nullptr);
    return;
  }
  // EOF or error: the client is gone.
  evhttp_connection* evcon = p->evcon;
  mark_aborted(p->tag);
  release(p);
  evhttp_connection_free(evcon);  // also frees the queued request
}

void huge_pump(Pending* p);

void huge_drain_cb(evhttp_connection*, void* arg) {
  auto* p = static_cast<Pending*>(arg);
  if (p->huge_sent >= p->huge_total) {
    evhttp_request* req = p->req;
    release(p);
    evhttp_send_reply_end(req);
    return;
  }
  huge_pump(p);
}

void huge_pump(Pending* p) {
  static const std::string xs(kHugePiece, 'x');
  static const std::string prefix = R"({"success":true,"result":")";
  static const std::string suffix = R"("})";
  size_t total = p->huge_total;
  size_t start = p->huge_sent;
  size_t end = std::min(total, start + kHugePiece);
  evbuffer* b = evbuffer_new();
  for (size_t pos = start; pos < end;) {
    if (pos < prefix.size()) {
      size_t n = std::min(end, prefix.size()) - pos;
      evbuffer_add(b, prefix.data() + pos, n);
      pos += n;
    } else if (pos >= total - suffix.size()) {
      size_t off = pos - (total - suffix.size());
      size_t n = end - pos;
      evbuffer_add(b, suffix.data() + off, n);
      pos += n;
    } else {
      size_t n = std::min(end, total - suffix.size()) - pos;
      evbuffer_add(b, xs.data(), n);
      pos += n;
    }
  }
  p->huge_sent = end;
  evhttp_send_reply_chunk_with_cb(p->req, b, huge_drain_cb, p);
  evbuffer_free(b);
}

void mid_drain_cb(evhttp_connection*, void* arg) {
  auto* p = static_cast<Pending*>(arg);
  if (p->phase == 1) {
    p->phase = 2;
    arm(p, 20);  // give the client time to read the partial body, then RST
  }
}

void pending_timer_cb(evutil_socket_t, short, void* arg) {
  auto* p = static_cast<Pending*>(arg);
  evhttp_request* req = p->req;
  switch (p->kind) {
    case PKind::Full: {
      int status = p->status;
      Headers h = std::move(p->headers);
      std::string body = std::move(p->body);
      uint64_t tag = p->tag;
      release(p);
      send_now(req, tag, status, h, body);
      return;
    }
    case PKind::Stream: {
      if (!p->started) {
        p->started = true;
        set_nodelay(p->evcon);
        add_headers(req, p->headers);
        mark_start(p->tag, p->status);
        evhttp_send_reply_start(req, p->status, reason_phrase(p->status));
      }
      if (p->next < p->chunks.size()) {
        const std::string& c = p->chunks[p->next++];
        evbuffer* b = evbuffer_new();
        evbuffer_add(b, c.data(), c.size());
        evhttp_send_reply_chunk(req, b);
        evbuffer_free(b);
      }
      if (p->next >= p->chunks.size()) {
        release(p);
        evhttp_send_reply_end(req);
      } else {
        arm(p, p->chunk_delay_ms);
      }
      return;
    }
    case PKind::Huge: {
      set_nodelay(p->evcon);
      add_headers(req, p->headers);
      evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Length",
                        std::to_string(p->huge_total).c_str());
      mark_start(p->tag, 200);
      evhttp_send_reply_start(req, 200, "OK");
      huge_pump(p);
      return;
    }
    case PKind::MidBody: {
      if (p->phase == 0) {
        p->phase = 1;
        set_nodelay(p->evcon);
        add_headers(req, p->headers);
        mark_start(p->tag, 200);
        evhttp_send_reply_start(req, 200, "OK");  // chunked (HTTP/1.1)
        evbuffer* b = evbuffer_new();
        evbuffer_add(b, p->body.data(), p->body.size());
        evhttp_send_reply_chunk_with_cb(req, b, mid_drain_cb, p);
        evbuffer_free(b);
        return;
      }
      evhttp_connection* evcon = p->evcon;
      mark_aborted(p->tag);
      release(p);
      rst_close(evcon);  // frees the queued request too
      return;
    }
    case PKind::Hang:
      return;
  }
}

void dispatch(evhttp_request* req, uint64_t tag, Action&& a) {
  if (!a.stream && a.delay_ms <= 0) {
    send_now(req, tag, a.status, a.headers, a.body);
    return;
  }
  Pending* p = new_pending(req, tag, a.stream ? PKind::Stream : PKind::Full);
  p->status = a.status;
  p->headers = std::move(a.headers);
  p->body = std::move(a.body);
  p->chunks = std::move(a.chunks);
  p->chunk_delay_ms = a.chunk_delay_ms;
  arm(p, a.delay_ms);
}

Action json_action(int status, std::string body) {
  Action a;
  a.status = status;
  a.headers.emplace_back("Content-Type", kJson);
  a.body = std::move(body);
  return a;
}

void add_cors(Headers& h) {
  h.emplace_back("Access-Control-Allow-Origin", "*");
  h.emplace_back("Access-Control-Allow-Methods", "POST, OPTIONS");
  h.emplace_back("Access-Control-Allow-Headers", "*");
}

// ---------------------------------------------------------------------------
// Domain logic

const std::string* bearer_key(evhttp_request* req, std::string& storage) {
  const char* a = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
  if (!a || !*a) return nullptr;
  // authorization.split("Bearer ")[1]
  std::string_view s(a);
  size_t pos = s.find("Bearer ");
  if (pos == std::string_view::npos) return nullptr;
  std::string_view rest = s.substr(pos + 7);
  size_t nxt = rest.find("Bearer ");
  if (nxt != std::string_view::npos) rest = rest.substr(0, nxt);
  if (rest.empty()) return nullptr;
  storage.assign(rest);
  return &storage;
}

const KeyInfo* lookup_key(const std::string* key) {
  if (!key) return nullptr;
  auto it = g->keys.find(*key);
  return it == g->keys.end() ? nullptr : &it->second;
}

// Exact sliding 1 s window.  Returns remaining (>= 0) if allowed, -1 if not.
int rate_check(const std::string& bucket, int limit) {
  double now = now_ms();
  auto& dq = g->buckets[bucket];
  while (!dq.empty() && dq.front() <= now - 1000.0) dq.pop_front();
  if (static_cast<long>(dq.size()) >= limit) return -1;
  dq.push_back(now);
  long rem = static_cast<long>(limit) - static_cast<long>(dq.size());
  return rem < 0 ? 0 : static_cast<int>(rem);
}

void add_ratelimit_headers(Headers& h, int limit, int remaining) {
  h.emplace_back("x-ratelimit-limit", std::to_string(limit));
  h.emplace_back("x-ratelimit-remaining", std::to_string(remaining));
}

const Workflow& workflow(const std::string& id) {
  static const Workflow def;
  auto it = g->workflows.find(id);
  return it == g->workflows.end() ? def : it->second;
}

bool has_credits(const std::string& org) { return g->no_credits.count(org) == 0; }

std::string gen_token() {
  static const char* alnum = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string t = "pub_tok_";
  t += static_cast<char>('a' + g->rng() % 26);
  for (int i = 1; i < 24; ++i) t += alnum[g->rng() % 36];
  return t;
}

std::vector<std::string> split_chunks(const std::string& s, int n) {
  std::vector<std::string> out;
  if (n < 1) n = 1;
  size_t len = s.size(), start = 0;
  for (int i = 0; i < n && start < len; ++i) {
    size_t end = (i == n - 1) ? len : len * static_cast<size_t>(i + 1) / static_cast<size_t>(n);
    while (end < len && end > start && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) ++end;
    if (end <= start) continue;
    out.push_back(s.substr(start, end - start));
    start = end;
  }
  if (start < len) {
    if (out.empty()) out.emplace_back();
    out.back() += s.substr(start);
  }
  return out;
}

std::vector<std::string> filler_chunks(int n, long bytes) {
  static const std::string pat = "lorem ipsum dolor sit amet, consectetur adipiscing elit. ";
  std::vector<std::string> out;
  size_t pos = 0;
  for (int i = 0; i < n; ++i) {
    std::string c;
    c.reserve(static_cast<size_t>(bytes));
    for (long k = 0; k < bytes; ++k) c += pat[pos++ % pat.size()];
    out.push_back(std::move(c));
  }
  return out;
}

std::string simulated_status_body(int status) {
  if (status == 429) return kErr429;
  ojson j;
  j["error"] = "Simulated status " + std::to_string(status);
  j["success"] = false;
  return dumpj(j);
}

Action handle_run(const std::string& wf_id, const KeyInfo* ki, const std::string& key,
                  const std::string& body) {
  if (!ki) return json_action(401, kErr401);
  int rem = rate_check("k:" + key, ki->rps);
  if (rem < 0) return json_action(429, kErr429);
  const Workflow& wf = workflow(wf_id);
  if (!has_credits(ki->org) || wf.status == 402) return json_action(402, kErr402Run);
  if (!wf.published || wf.status == 404 || (!wf.owner.empty() && wf.owner != ki->org))
    return json_action(404, kErr404Workflow);
  if (wf.status == 500) {
    Action a = json_action(500, kErr500Run);
    a.delay_ms = wf.latency_ms;
    return a;
  }
  if (wf.status != 0 && wf.status != 200) {
    Action a = json_action(wf.status, simulated_status_body(wf.status));
    a.delay_ms = wf.latency_ms;
    return a;
  }
  uint64_t n = ++g->run_counter;
  ++g->stats.run_ok;
  ojson j;
  j["success"] = true;
  j["result"] = wf.result ? *wf.result
                          : "run " + std::to_string(n) + " of " + wf_id + " for " + ki->org + ": " + body;
  if (wf.citations.is_array() && !wf.citations.empty()) j["citations"] = wf.citations;
  Action a = json_action(200, dumpj(j));
  add_ratelimit_headers(a.headers, ki->rps, rem);
  a.delay_ms = wf.latency_ms;
  return a;
}

Action handle_token(evhttp_request* req, const std::string& query, const KeyInfo* ki,
                    const std::string& key) {
  if (!ki) return json_action(401, kErr401);
  const char* uid = evhttp_find_header(evhttp_request_get_input_headers(req), "x-user-id");
  std::string bucket = uid ? std::string("u:") + uid : "k:" + key;
  int rem = rate_check(bucket, ki->rps);
  if (rem < 0) return json_action(429, kErr429);
  if (!has_credits(ki->org)) return json_action(402, kErr402Token);
  double ttl = 60;
  if (auto q = query_get(query, "ttl")) {
    auto v = js_number(*q);
    ttl = v ? std::min(std::max(*v, 1.0), 300.0) : 60.0;
  }
  std::string tok = gen_token();
  g->tokens[tok] = TokenInfo{ki->org, now_ms() + ttl * 1000.0};
  if (++g->tokens_issued % 1024 == 0) {  // sweep expired tokens now and then
    double now = now_ms();
    for (auto it = g->tokens.begin(); it != g->tokens.end();) {
      if (it->second.expires_ms <= now) it = g->tokens.erase(it);
      else ++it;
    }
  }
  ++g->stats.token_ok;
  std::string body = R"({"success":true,"token":")" + tok + R"(","ttl":)" + js_num_str(ttl) + "}";
  Action a = json_action(200, std::move(body));
  add_ratelimit_headers(a.headers, ki->rps, rem);
  return a;
}

// Looks the stream token up without consuming it (for the record's org).
const TokenInfo* peek_token(const std::string& query) {
  auto t = query_get(query, "token");
  if (!t || t->empty()) return nullptr;
  auto it = g->tokens.find(*t);
  if (it == g->tokens.end() || it->second.expires_ms <= now_ms()) return nullptr;
  return &it->second;
}

Action handle_stream(const std::string& wf_id, const std::string& query, const std::string& body) {
  auto t = query_get(query, "token");
  if (!t || t->empty()) return json_action(401, kErr401);
  auto it = g->tokens.find(*t);
  if (it == g->tokens.end()) return json_action(401, kErr401);
  TokenInfo tok = it->second;
  g->tokens.erase(it);  // burned before any other check (even if expired)
  if (tok.expires_ms <= now_ms()) return json_action(401, kErr401);
  const Workflow& wf = workflow(wf_id);
  if (!wf.published || wf.status == 404) return json_action(404, kErr404Workflow);
  if (!wf.owner.empty() && wf.owner != tok.org) return json_action(401, kErr401);
  if (!has_credits(tok.org) || wf.status == 402) return json_action(402, kErr402Run);
  if (wf.status == 500) {
    Action a = json_action(500, kErr500Stream);
    a.delay_ms = wf.latency_ms;
    return a;
  }
  if (wf.status != 0 && wf.status != 200) {
    Action a = json_action(wf.status, simulated_status_body(wf.status));
    a.delay_ms = wf.latency_ms;
    return a;
  }
  uint64_t n = ++g->stream_counter;
  ++g->stats.stream_ok;
  Action a;
  a.stream = true;
  a.status = 200;
  a.headers.emplace_back("Content-Type", kTextPlain);
  add_cors(a.headers);
  if (wf.chunk_bytes > 0) {
    a.chunks = filler_chunks(wf.chunks, wf.chunk_bytes);
  } else {
    std::string text = wf.result ? *wf.result
                                 : "stream " + std::to_string(n) + " of " + wf_id + " for " + tok.org + ": " + body;
    a.chunks = split_chunks(text, wf.chunks);
  }
  a.chunk_delay_ms = wf.chunk_delay_ms;
  a.delay_ms = wf.latency_ms;
  return a;
}

std::string openai_error(const char* message, const char* type) {
  ojson j;
  j["error"] = {{"message", message}, {"type", type}, {"code", nullptr}};
  return dumpj(j);
}

Action handle_chat(const KeyInfo* ki, const std::string& key, const std::string& body) {
  if (!ki) return json_action(401, openai_error("Unauthorized. Please provide a valid secret key.", "invalid_request_error"));
  int rem = rate_check("k:" + key, ki->rps);
  if (rem < 0) return json_action(429, openai_error("Rate limit exceeded", "rate_limit_error"));
  if (!has_credits(ki->org))
    return json_action(402, openai_error("No credits remaining. Please add credits to continue using the service.",
                                         "insufficient_quota"));
  json in = json::parse(body, nullptr, false);
  std::string model = "default", content;
  bool stream = false;
  if (in.is_object()) {
    if (in.contains("model") && in["model"].is_string()) model = in["model"].get<std::string>();
    if (in.contains("stream") && in["stream"].is_boolean()) stream = in["stream"].get<bool>();
    if (in.contains("messages") && in["messages"].is_array() && !in["messages"].empty()) {
      const json& last = in["messages"].back();
      if (last.is_object() && last.contains("content") && last["content"].is_string())
        content = last["content"].get<std::string>();
    }
  }
  const Workflow& wf = workflow(model);
  uint64_t n = ++g->chat_counter;
  std::string id = "chatcmpl-sim" + std::to_string(n);
  long created = static_cast<long>(std::time(nullptr));
  std::string text = wf.result ? *wf.result : "chat " + std::to_string(n) + " of " + model + " for " + ki->org + ": " + content;
  if (!stream) {
    ojson j;
    j["id"] = id;
    j["object"] = "chat.completion";
    j["created"] = created;
    j["model"] = model;
    j["choices"] = ojson::array({ojson{{"index", 0},
                                       {"message", {{"role", "assistant"}, {"content", text}}},
                                       {"finish_reason", "stop"}}});
    size_t pt = content.size() / 4 + 1, ct = text.size() / 4 + 1;
    j["usage"] = {{"prompt_tokens", pt}, {"completion_tokens", ct}, {"total_tokens", pt + ct}};
    Action a = json_action(200, dumpj(j));
    add_ratelimit_headers(a.headers, ki->rps, rem);
    a.delay_ms = wf.latency_ms;
    return a;
  }
  Action a;
  a.stream = true;
  a.status = 200;
  a.headers.emplace_back("Content-Type", "text/event-stream");
  a.headers.emplace_back("Cache-Control", "no-cache");
  add_ratelimit_headers(a.headers, ki->rps, rem);
  auto event = [&](const ojson& delta, const ojson& finish) {
    ojson j;
    j["id"] = id;
    j["object"] = "chat.completion.chunk";
    j["created"] = created;
    j["model"] = model;
    j["choices"] = ojson::array({ojson{{"index", 0}, {"delta", delta}, {"finish_reason", finish}}});
    return "data: " + dumpj(j) + "\n\n";
  };
  bool first = true;
  for (const std::string& piece : split_chunks(text, wf.chunks)) {
    ojson delta;
    if (first) delta["role"] = "assistant";
    delta["content"] = piece;
    first = false;
    a.chunks.push_back(event(delta, nullptr));
  }
  a.chunks.push_back(event(ojson::object(), "stop"));
  a.chunks.push_back("data: [DONE]\n\n");
  a.chunk_delay_ms = wf.chunk_delay_ms;
  a.delay_ms = wf.latency_ms;
  return a;
}

Action handle_balance(const KeyInfo* ki, const std::string& key) {
  if (!ki) return json_action(401, kErr401);
  int rem = rate_check("b:" + key, ki->rps);
  if (rem < 0) return json_action(429, kErr429);
  Action a = json_action(200, has_credits(ki->org) ? R"({"success":true,"credits":1000})"
                                                   : R"({"success":true,"credits":0})");
  add_ratelimit_headers(a.headers, ki->rps, rem);
  return a;
}

// ---------------------------------------------------------------------------
// Faults

std::optional<Fault> take_fault(const std::string& method, const std::string& path) {
  for (size_t i = 0; i < g->faults.size(); ++i) {
    Fault& f = g->faults[i];
    if (!f.path_prefix.empty() && !starts_with(path, f.path_prefix)) continue;
    if (!f.method.empty() && f.method != method) continue;
    Fault out = f;
    if (f.remaining > 0 && --f.remaining == 0) g->faults.erase(g->faults.begin() + static_cast<long>(i));
    return out;
  }
  return std::nullopt;
}

ojson fault_json(const Fault& f) {
  ojson j;
  j["mode"] = f.mode;
  j["remaining"] = f.remaining;
  if (f.mode == "delay") j["delay_ms"] = f.delay_ms;
  if (!f.path_prefix.empty()) j["path"] = f.path_prefix;
  if (!f.method.empty()) j["method"] = f.method;
  if (f.mode == "status") {
    j["status"] = f.status;
    j["body"] = f.body;
    j["content_type"] = f.content_type;
  }
  if (f.mode == "huge_body") j["bytes"] = f.bytes;
  return j;
}

// ---------------------------------------------------------------------------
// Main request handler for the simulated upstream API

void handle_api(evhttp_request* req, const std::string& path, const std::string& query) {
  evhttp_cmd_type cmd = evhttp_request_get_command(req);
  const char* method = method_name(cmd);

  // Route classification.
  Route route = Route::Other;
  std::string wf_id;
  bool method_ok = false;
  if (cmd == EVHTTP_REQ_OPTIONS && starts_with(path, "/api/")) {
    route = Route::Options;
    method_ok = true;
  } else if (starts_with(path, "/api/v1/run/")) {
    std::string rest = path.substr(12);
    size_t slash = rest.find('/');
    if (slash == std::string::npos && !rest.empty()) {
      route = Route::Run;
      wf_id = rest;
      method_ok = cmd == EVHTTP_REQ_POST;
    } else if (slash != std::string::npos && slash > 0 && rest.substr(slash) == "/stream") {
      route = Route::Stream;
      wf_id = rest.substr(0, slash);
      method_ok = cmd == EVHTTP_REQ_POST;
    }
  } else if (path == "/api/v1/token") {
    route = Route::Token;
    method_ok = cmd == EVHTTP_REQ_GET;
  } else if (path == "/api/v1/chat/completions") {
    route = Route::Chat;
    method_ok = cmd == EVHTTP_REQ_POST;
  } else if (path == "/api/v1/balance") {
    route = Route::Balance;
    method_ok = cmd == EVHTTP_REQ_GET;
  }
  bool known = route != Route::Other;
  if (!method_ok) route = Route::Other;

  // Counters.
  Stats& st = g->stats;
  ++st.total;
  if (route == Route::Run) ++st.runs;
  else if (route == Route::Token) ++st.tokens;
  else if (route == Route::Stream) ++st.streams;
  else ++st.other;

  // Body.
  evbuffer* in = evhttp_request_get_input_buffer(req);
  size_t blen = evbuffer_get_length(in);
  std::string body(blen, '\0');
  if (blen) evbuffer_copyout(in, body.data(), blen);

  // Organisation (for the record).
  std::string key_storage;
  const std::string* key = bearer_key(req, key_storage);
  const KeyInfo* ki = lookup_key(key);
  const std::string* org = nullptr;
  if (route == Route::Stream) {
    if (const TokenInfo* t = peek_token(query)) org = &t->org;
  } else if (ki) {
    org = &ki->org;
  }

  // Record.
  uint64_t seq = g->next_seq++;
  uint64_t tag = make_tag(seq);
  {
    Record r;
    r.seq = seq;
    r.time_ms = now_ms();
    r.method = method;
    const char* uri = evhttp_request_get_uri(req);
    r.uri = uri ? uri : "";
    r.path = path;
    r.route = route;
    r.body_len = blen;
    if (org) {
      r.org = *org;
      r.has_org = true;
    }
    if (g->keep_bodies) {
      for (evkeyval* h = evhttp_request_get_input_headers(req)->tqh_first; h; h = h->next.tqe_next)
        r.headers.emplace_back(h->key, h->value);
      r.body_kept = true;
      if (blen > kMaxRecordedBody) {
        r.body.assign(body, 0, kMaxRecordedBody);
        r.body_truncated = true;
      } else {
        r.body = body;
      }
    }
    g->records.push_back(std::move(r));
    while (g->records.size() > g->max_records) g->records.pop_front();
  }
  evhttp_request_set_on_complete_cb(req, on_complete, reinterpret_cast<void*>(static_cast<uintptr_t>(tag)));

  // Faults.
  double extra_delay = 0;
  if (!g->faults.empty()) {
    if (auto f = take_fault(method, path)) {
      ++st.faults_applied;
      if (Record* r = find_record(tag)) r->fault = f->mode;
      logf("fault %s on %s %s", f->mode.c_str(), method, path.c_str());
      const std::string& m = f->mode;
      if (m == "reset") {
        mark_aborted(tag);
        rst_close(evhttp_request_get_connection(req));
        return;
      }
      if (m == "malformed") {
        static const char garbage[] = "HTTP/1.1 abc xyz\r\n\x00\x01\x02garbage \xff\xfe not http\r\n\r\n";
        evhttp_connection* evcon = evhttp_request_get_connection(req);
        int fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evcon));
        if (fd >= 0) {
          ssize_t w = send(fd, garbage, sizeof garbage - 1, MSG_NOSIGNAL);
          (void)w;
        }
        mark_aborted(tag);
        evhttp_connection_free(evcon);
        return;
      }
      if (m == "hang") {
        new_pending(req, tag, PKind::Hang);
        return;
      }
      if (m == "huge_body") {
        Pending* p = new_pending(req, tag, PKind::Huge);
        p->headers.emplace_back("Content-Type", kJson);
        p->huge_total = std::max<size_t>(f->bytes, 32);
        arm(p, 0);
        return;
      }
      if (m == "reset_mid_body") {
        Pending* p = new_pending(req, tag, PKind::MidBody);
        p->headers.emplace_back("Content-Type", route == Route::Stream ? kTextPlain : kJson);
        if (route == Route::Stream) add_cors(p->headers);
        p->body = route == Route::Stream ? "partial stream output, then the connection dies"
                                         : R"({"success":true,"result":"partial result, then the connec)";
        arm(p, 0);
        return;
      }
      if (m == "status_429") {
        dispatch(req, tag, json_action(429, kErr429));
        return;
      }
      if (m == "status") {
        Action a;
        a.status = f->status;
        if (!f->content_type.empty()) a.headers.emplace_back("Content-Type", f->content_type);
        a.body = f->body;
        dispatch(req, tag, std::move(a));
        return;
      }
      if (m == "delay") extra_delay = f->delay_ms;
    }
  }

  Action a;
  switch (route) {
    case Route::Options: {
      a = json_action(200, "{}");
      add_cors(a.headers);
      break;
    }
    case Route::Run:
      a = handle_run(wf_id, ki, key ? *key : std::string(), body);
      break;
    case Route::Stream:
      a = handle_stream(wf_id, query, body);
      break;
    case Route::Token:
      a = handle_token(req, query, ki, key ? *key : std::string());
      break;
    case Route::Chat:
      a = handle_chat(ki, key ? *key : std::string(), body);
      break;
    case Route::Balance:
      a = handle_balance(ki, key ? *key : std::string());
      break;
    case Route::Other:
      if (known) {
        a.status = 405;  // known path, wrong method (Next.js answers 405, empty body)
      } else {
        a = json_action(404, kErr404);
      }
      break;
  }
  a.delay_ms += extra_delay;
  dispatch(req, tag, std::move(a));
}

// ---------------------------------------------------------------------------
// Control API (/__sim/...)

ojson record_json(const Record& r) {
  ojson j;
  j["seq"] = r.seq;
  j["time_ms"] = r.time_ms;
  j["method"] = r.method;
  j["uri"] = r.uri;
  j["path"] = r.path;
  j["route"] = route_name(r.route);
  ojson hs = ojson::array();
  for (const auto& [k, v] : r.headers) hs.push_back(ojson::array({k, v}));
  j["headers"] = std::move(hs);
  if (!r.body_kept) {
    j["body"] = nullptr;
  } else if (valid_utf8(r.body)) {
    j["body"] = r.body;
  } else {
    j["body"] = nullptr;
    j["body_b64"] = base64(r.body);
  }
  j["body_len"] = r.body_len;
  if (r.body_truncated) j["body_truncated"] = true;
  j["org"] = r.has_org ? ojson(r.org) : ojson(nullptr);
  j["fault"] = r.fault.empty() ? ojson(nullptr) : ojson(r.fault);
  j["status"] = r.status ? ojson(r.status) : ojson(nullptr);
  j["first_byte_ms"] = r.first_byte_ms >= 0 ? ojson(r.first_byte_ms) : ojson(nullptr);
  j["done_ms"] = r.done_ms >= 0 ? ojson(r.done_ms) : ojson(nullptr);
  j["aborted_ms"] = r.aborted_ms >= 0 ? ojson(r.aborted_ms) : ojson(nullptr);
  return j;
}

ojson stats_json() {
  const Stats& s = g->stats;
  ojson j;
  j["runs"] = s.runs;
  j["tokens"] = s.tokens;
  j["streams"] = s.streams;
  j["other"] = s.other;
  j["total"] = s.total;
  j["status_429"] = s.status_429;
  j["ok"] = s.ok;
  j["run_ok"] = s.run_ok;
  j["stream_ok"] = s.stream_ok;
  j["token_ok"] = s.token_ok;
  j["aborted"] = s.aborted;
  j["faults_applied"] = s.faults_applied;
  j["pending"] = g->pending.size();
  ojson bs = ojson::object();
  for (const auto& [code, n] : s.by_status) bs[std::to_string(code)] = n;
  j["by_status"] = std::move(bs);
  return j;
}

ojson workflow_json(const Workflow& w) {
  ojson j;
  j["latency_ms"] = w.latency_ms;
  j["citations"] = w.citations.is_null() ? ojson(nullptr) : ojson::parse(w.citations.dump());
  j["status"] = w.status ? ojson(w.status) : ojson(nullptr);
  j["owner"] = w.owner.empty() ? ojson(nullptr) : ojson(w.owner);
  j["published"] = w.published;
  j["chunks"] = w.chunks;
  j["chunk_delay_ms"] = w.chunk_delay_ms;
  j["chunk_bytes"] = w.chunk_bytes ? ojson(w.chunk_bytes) : ojson(nullptr);
  j["result"] = w.result ? ojson(*w.result) : ojson(nullptr);
  return j;
}

struct BadRequest {
  std::string msg;
};

double num_field(const json& v, const char* name) {
  if (!v.is_number()) throw BadRequest{std::string(name) + " must be a number"};
  return v.get<double>();
}

void merge_workflow(Workflow& w, const json& cfg) {
  if (!cfg.is_object()) throw BadRequest{"workflow config must be an object or null"};
  for (const auto& [k, v] : cfg.items()) {
    if (k == "latency_ms") {
      w.latency_ms = v.is_null() ? 0 : num_field(v, "latency_ms");
    } else if (k == "citations") {
      if (!v.is_null() && !v.is_array()) throw BadRequest{"citations must be an array or null"};
      w.citations = v;
    } else if (k == "status") {
      w.status = v.is_null() ? 0 : static_cast<int>(num_field(v, "status"));
    } else if (k == "owner") {
      if (!v.is_null() && !v.is_string()) throw BadRequest{"owner must be a string or null"};
      w.owner = v.is_null() ? "" : v.get<std::string>();
    } else if (k == "published") {
      if (!v.is_boolean()) throw BadRequest{"published must be a boolean"};
      w.published = v.get<bool>();
    } else if (k == "chunks") {
      w.chunks = v.is_null() ? 4 : static_cast<int>(num_field(v, "chunks"));
      if (w.chunks < 1) throw BadRequest{"chunks must be >= 1"};
    } else if (k == "chunk_delay_ms") {
      w.chunk_delay_ms = v.is_null() ? 10 : num_field(v, "chunk_delay_ms");
    } else if (k == "chunk_bytes") {
      w.chunk_bytes = v.is_null() ? 0 : static_cast<long>(num_field(v, "chunk_bytes"));
      if (w.chunk_bytes < 0) throw BadRequest{"chunk_bytes must be >= 0"};
    } else if (k == "result") {
      if (!v.is_null() && !v.is_string()) throw BadRequest{"result must be a string or null"};
      if (v.is_null()) w.result.reset();
      else w.result = v.get<std::string>();
    } else {
      throw BadRequest{"unknown workflow field: " + k};
    }
  }
}

Fault parse_fault(const json& f) {
  if (!f.is_object()) throw BadRequest{"fault must be an object"};
  Fault out;
  if (!f.contains("mode") || !f["mode"].is_string()) throw BadRequest{"fault needs a string \"mode\""};
  out.mode = f["mode"].get<std::string>();
  static const std::set<std::string> modes = {"none", "reset", "reset_mid_body", "hang", "malformed",
                                              "huge_body", "status_429", "delay", "status"};
  if (!modes.count(out.mode)) throw BadRequest{"unknown fault mode: " + out.mode};
  for (const auto& [k, v] : f.items()) {
    if (k == "mode") continue;
    if (k == "count") out.remaining = static_cast<long>(num_field(v, "count"));
    else if (k == "delay_ms") out.delay_ms = num_field(v, "delay_ms");
    else if (k == "path") {
      if (!v.is_string()) throw BadRequest{"path must be a string"};
      out.path_prefix = v.get<std::string>();
    } else if (k == "method") {
      if (!v.is_string()) throw BadRequest{"method must be a string"};
      out.method = v.get<std::string>();
    } else if (k == "status") out.status = static_cast<int>(num_field(v, "status"));
    else if (k == "body") {
      if (!v.is_string()) throw BadRequest{"body must be a string"};
      out.body = v.get<std::string>();
    } else if (k == "content_type") {
      if (!v.is_string()) throw BadRequest{"content_type must be a string"};
      out.content_type = v.get<std::string>();
    } else if (k == "bytes") {
      double b = num_field(v, "bytes");
      if (b < 32) throw BadRequest{"bytes must be >= 32"};
      out.bytes = static_cast<size_t>(b);
    } else {
      throw BadRequest{"unknown fault field: " + k};
    }
  }
  if (out.mode == "status" && !f.contains("body"))
    out.body = simulated_status_body(out.status);
  if (out.remaining == 0) out.remaining = 1;
  if (out.remaining < 0) out.remaining = -1;
  return out;
}

void do_reset() {
  g->records.clear();
  g->stats = Stats{};
  g->run_counter = g->stream_counter = g->chat_counter = 0;
  g->faults.clear();
  g->workflows.clear();
  g->buckets.clear();
  g->tokens.clear();
  g->keys = g->cli_keys;
  g->no_credits = g->cli_no_credits;
  ++g->gen;
  g->next_seq = 1;
}

void handle_echo(evhttp_request* req) {
  evkeyvalq* ih = evhttp_request_get_input_headers(req);
  ojson j;
  j["method"] = method_name(evhttp_request_get_command(req));
  const char* uri = evhttp_request_get_uri(req);
  j["uri"] = uri ? uri : "";
  ojson hs = ojson::array();
  evkeyvalq* oh = evhttp_request_get_output_headers(req);
  int status = 200;
  for (evkeyval* h = ih->tqh_first; h; h = h->next.tqe_next) {
    hs.push_back(ojson::array({h->key, h->value}));
    std::string_view name(h->key);
    if (iequals_prefix(name, "x-sim-set-") && name.size() > 10) {
      evhttp_add_header(oh, h->key + 10, h->value);
    } else if (iequals_prefix(name, "x-sim-status") && name.size() == 12) {
      int s = std::atoi(h->value);
      if (s >= 100 && s <= 999) status = s;
    }
  }
  j["headers"] = std::move(hs);
  evbuffer* in = evhttp_request_get_input_buffer(req);
  size_t blen = evbuffer_get_length(in);
  std::string body(blen, '\0');
  if (blen) evbuffer_copyout(in, body.data(), blen);
  if (valid_utf8(body)) {
    j["body"] = body;
  } else {
    j["body"] = nullptr;
    j["body_b64"] = base64(body);
  }
  send_ctrl(req, status, j);
}

void handle_control(evhttp_request* req, const std::string& path, const std::string& query) {
  evhttp_cmd_type cmd = evhttp_request_get_command(req);
  if (starts_with(path, "/__sim/echo")) {
    handle_echo(req);
    return;
  }
  evbuffer* in = evhttp_request_get_input_buffer(req);
  size_t blen = evbuffer_get_length(in);
  std::string body(blen, '\0');
  if (blen) evbuffer_copyout(in, body.data(), blen);
  json in_json;
  bool is_post = cmd == EVHTTP_REQ_POST || cmd == EVHTTP_REQ_PUT;
  if (is_post && body.find_first_not_of(" \t\r\n") != std::string::npos) {
    in_json = json::parse(body, nullptr, false);
    if (in_json.is_discarded()) {
      send_ctrl(req, 400, ojson{{"error", "invalid JSON body"}});
      return;
    }
  }
  auto ok = [&](ojson extra = ojson::object()) {
    ojson j;
    j["ok"] = true;
    for (auto& [k, v] : extra.items()) j[k] = v;
    send_ctrl(req, 200, j);
  };
  try {
    if (path == "/__sim/health") {
      ok();
    } else if (path == "/__sim/requests" && cmd == EVHTTP_REQ_GET) {
      uint64_t since = 0;
      if (auto s = query_get(query, "since")) since = std::strtoull(s->c_str(), nullptr, 10);
      std::string prefix = query_get(query, "path").value_or("");
      ojson arr = ojson::array();
      for (const Record& r : g->records) {
        if (r.seq <= since) continue;
        if (!prefix.empty() && !starts_with(r.path, prefix)) continue;
        arr.push_back(record_json(r));
      }
      ojson j;
      j["requests"] = std::move(arr);
      j["next_seq"] = g->next_seq;
      send_ctrl(req, 200, j);
    } else if (path == "/__sim/stats" && cmd == EVHTTP_REQ_GET) {
      send_ctrl(req, 200, stats_json());
    } else if (path == "/__sim/reset" && is_post) {
      do_reset();
      logf("reset");
      ok();
    } else if (path == "/__sim/workflows") {
      if (cmd == EVHTTP_REQ_DELETE) {
        if (auto id = query_get(query, "id")) g->workflows.erase(*id);
        else g->workflows.clear();
        ok();
      } else if (is_post) {
        if (!in_json.is_object()) throw BadRequest{"body must be an object {workflow_id: config}"};
        auto next = g->workflows;
        for (const auto& [id, cfg] : in_json.items()) {
          if (cfg.is_null()) {
            next.erase(id);
            continue;
          }
          Workflow w = next.count(id) ? next[id] : Workflow{};
          merge_workflow(w, cfg);
          next[id] = std::move(w);
        }
        g->workflows = std::move(next);
        ok();
      } else {
        ojson j = ojson::object();
        for (const auto& [id, w] : g->workflows) j[id] = workflow_json(w);
        send_ctrl(req, 200, ojson{{"workflows", j}});
      }
    } else if (path == "/__sim/faults") {
      if (cmd == EVHTTP_REQ_DELETE) {
        g->faults.clear();
        ok();
      } else if (is_post) {
        std::vector<Fault> list;
        if (in_json.is_array()) {
          for (const json& f : in_json) {
            Fault x = parse_fault(f);
            if (x.mode != "none") list.push_back(std::move(x));
          }
        } else {
          Fault x = parse_fault(in_json);
          if (x.mode != "none") list.push_back(std::move(x));
        }
        g->faults = std::move(list);
        ojson arr = ojson::array();
        for (const Fault& f : g->faults) arr.push_back(fault_json(f));
        logf("faults set (%zu)", g->faults.size());
        ok(ojson{{"faults", arr}});
      } else {
        ojson arr = ojson::array();
        for (const Fault& f : g->faults) arr.push_back(fault_json(f));
        send_ctrl(req, 200, ojson{{"faults", arr}});
      }
    } else if (path == "/__sim/ratelimit" && is_post) {
      if (!in_json.is_object()) throw BadRequest{"body must be an object {key_or_org: rps}"};
      int updated = 0;
      for (const auto& [name, v] : in_json.items()) {
        int rps = static_cast<int>(num_field(v, "rps"));
        auto it = g->keys.find(name);
        if (it != g->keys.end()) {
          it->second.rps = rps;
          ++updated;
          continue;
        }
        for (auto& [k, info] : g->keys) {
          if (info.org == name) {
            info.rps = rps;
            ++updated;
          }
        }
      }
      if (updated == 0) {
        send_ctrl(req, 404, ojson{{"error", "no such key or organisation"}});
        return;
      }
      ok(ojson{{"updated", updated}});
    } else if (path == "/__sim/credits" && is_post) {
      if (!in_json.is_object()) throw BadRequest{"body must be an object {org: bool}"};
      for (const auto& [org, v] : in_json.items()) {
        bool has = v.is_boolean() ? v.get<bool>() : v.is_number() ? v.get<double>() > 0 : true;
        if (has) g->no_credits.erase(org);
        else g->no_credits.insert(org);
      }
      ok();
    } else if (path == "/__sim/keys") {
      if (is_post) {
        if (!in_json.is_object()) throw BadRequest{"body must be an object {key: {org, rps}}"};
        for (const auto& [k, v] : in_json.items()) {
          if (v.is_null()) {
            g->keys.erase(k);
            continue;
          }
          if (!v.is_object() || !v.contains("org") || !v["org"].is_string())
            throw BadRequest{"key config must be {\"org\": string, \"rps\": number}"};
          KeyInfo ki;
          ki.org = v["org"].get<std::string>();
          if (v.contains("rps")) ki.rps = static_cast<int>(num_field(v["rps"], "rps"));
          g->keys[k] = ki;
        }
        ok();
      } else {
        ojson j = ojson::object();
        for (const auto& [k, info] : g->keys) j[k] = ojson{{"org", info.org}, {"rps", info.rps}};
        ojson nc = ojson::array();
        for (const auto& o : g->no_credits) nc.push_back(o);
        send_ctrl(req, 200, ojson{{"keys", j}, {"no_credits", nc}});
      }
    } else if (path == "/__sim/tokens" && cmd == EVHTTP_REQ_GET) {
      double now = now_ms();
      ojson arr = ojson::array();
      for (const auto& [t, info] : g->tokens) {
        if (info.expires_ms <= now) continue;
        arr.push_back(ojson{{"token", t}, {"org", info.org}, {"expires_in_ms", info.expires_ms - now}});
      }
      size_t live = arr.size();
      send_ctrl(req, 200, ojson{{"live", live}, {"tokens", arr}});
    } else {
      send_ctrl(req, 404, ojson{{"error", "unknown simulator endpoint"}, {"path", path}});
    }
  } catch (const BadRequest& e) {
    send_ctrl(req, 400, ojson{{"error", e.msg}});
  } catch (const json::exception& e) {
    send_ctrl(req, 400, ojson{{"error", e.what()}});
  }
}

void on_request(evhttp_request* req, void*) {
  const evhttp_uri* pu = evhttp_request_get_evhttp_uri(req);
  const char* p = pu ? evhttp_uri_get_path(pu) : nullptr;
  const char* q = pu ? evhttp_uri_get_query(pu) : nullptr;
  std::string path = p ? p : "";
  std::string query = q ? q : "";
  if (path == "/__sim" || starts_with(path, "/__sim/")) {
    handle_control(req, path, query);
  } else {
    handle_api(req, path, query);
  }
}

// ---------------------------------------------------------------------------
// Main

void on_signal(evutil_socket_t, short, void*) { event_base_loopbreak(g->base); }

void libevent_log(int severity, const char* msg) {
  if (severity >= EVENT_LOG_WARN) logf("libevent: %s", msg);
}

[[noreturn]] void usage(int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: upstream_sim [--listen HOST:PORT] [--key KEY=ORG[:RPS]]... [--no-credits ORG]...\n"
               "                    [--quiet] [--no-record] [--max-records N]\n"
               "See tests/upstream_sim/README.md.\n");
  std::exit(code);
}

bool parse_listen(const std::string& s, std::string& host, uint16_t& port) {
  std::string p;
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':') return false;
    host = s.substr(1, close - 1);
    p = s.substr(close + 2);
  } else {
    size_t colon = s.rfind(':');
    if (colon == std::string::npos) {
      host = "127.0.0.1";
      p = s;
    } else {
      host = s.substr(0, colon);
      p = s.substr(colon + 1);
      if (host.empty()) host = "127.0.0.1";
    }
  }
  if (p.empty() || p.find_first_not_of("0123456789") != std::string::npos) return false;
  long v = std::strtol(p.c_str(), nullptr, 10);
  if (v < 0 || v > 65535) return false;
  port = static_cast<uint16_t>(v);
  return true;
}

bool parse_key(const std::string& s, std::string& key, KeyInfo& ki) {
  size_t eq = s.find('=');
  if (eq == std::string::npos || eq == 0) return false;
  key = s.substr(0, eq);
  std::string rest = s.substr(eq + 1);
  size_t colon = rest.rfind(':');
  ki.rps = 10;
  if (colon != std::string::npos) {
    std::string r = rest.substr(colon + 1);
    if (r.empty() || r.find_first_not_of("0123456789") != std::string::npos) return false;
    ki.rps = std::atoi(r.c_str());
    rest = rest.substr(0, colon);
  }
  if (rest.empty()) return false;
  ki.org = rest;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  g_t0 = Clock::now();
  std::signal(SIGPIPE, SIG_IGN);
  Sim sim;
  g = &sim;

  std::string host = "127.0.0.1";
  uint16_t port = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto need = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "upstream_sim: %s needs an argument\n", a.c_str());
        usage(2);
      }
      return argv[++i];
    };
    if (a == "--listen") {
      if (!parse_listen(need(), host, port)) {
        std::fprintf(stderr, "upstream_sim: bad --listen value\n");
        return 2;
      }
    } else if (a == "--key") {
      std::string key;
      KeyInfo ki;
      if (!parse_key(need(), key, ki)) {
        std::fprintf(stderr, "upstream_sim: bad --key value (want KEY=ORG[:RPS])\n");
        return 2;
      }
      sim.cli_keys[key] = ki;
    } else if (a == "--no-credits") {
      sim.cli_no_credits.insert(need());
    } else if (a == "--quiet") {
      sim.quiet = true;
    } else if (a == "--no-record") {
      sim.keep_bodies = false;
    } else if (a == "--max-records") {
      long n = std::strtol(need().c_str(), nullptr, 10);
      sim.max_records = n > 0 ? static_cast<size_t>(n) : 1;
    } else if (a == "--help" || a == "-h") {
      usage(0);
    } else {
      std::fprintf(stderr, "upstream_sim: unknown argument %s\n", a.c_str());
      usage(2);
    }
  }
  if (sim.cli_keys.empty()) {
    sim.cli_keys["sk_sim_acme"] = KeyInfo{"acme", 10};
    sim.cli_keys["sk_sim_globex"] = KeyInfo{"globex", 10};
  }
  sim.keys = sim.cli_keys;
  sim.no_credits = sim.cli_no_credits;

  event_set_log_callback(libevent_log);
  sim.base = event_base_new();
  if (!sim.base) {
    std::fprintf(stderr, "upstream_sim: event_base_new failed\n");
    return 1;
  }
  sim.http = evhttp_new(sim.base);
  evhttp_set_allowed_methods(sim.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                                           EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                           EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
  evhttp_set_max_body_size(sim.http, static_cast<ev_ssize_t>(64 * kMiB + 64 * 1024));
  evhttp_set_default_content_type(sim.http, nullptr);
  evhttp_set_timeout(sim.http, 120);
  evhttp_set_gencb(sim.http, on_request, nullptr);

  evhttp_bound_socket* bound = evhttp_bind_socket_with_handle(sim.http, host.c_str(), port);
  if (!bound) {
    std::fprintf(stderr, "upstream_sim: cannot listen on %s:%u: %s\n", host.c_str(), port, std::strerror(errno));
    return 1;
  }
  sockaddr_storage ss{};
  socklen_t sl = sizeof ss;
  getsockname(evhttp_bound_socket_get_fd(bound), reinterpret_cast<sockaddr*>(&ss), &sl);
  unsigned actual = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                             : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  std::printf("PORT %u\n", actual);
  std::fflush(stdout);
  logf("listening on %s port %u (%zu keys)", host.c_str(), actual, sim.keys.size());

  event* sigterm = evsignal_new(sim.base, SIGTERM, on_signal, nullptr);
  event* sigint = evsignal_new(sim.base, SIGINT, on_signal, nullptr);
  event_add(sigterm, nullptr);
  event_add(sigint, nullptr);

  event_base_dispatch(sim.base);

  // Orderly teardown: drop our pending objects (their requests are still
  // queued on live connections, which evhttp_free releases).
  std::vector<Pending*> ps;
  for (auto& [evcon, p] : sim.pending) ps.push_back(p);
  for (Pending* p : ps) release(p);
  evhttp_free(sim.http);
  event_free(sigterm);
  event_free(sigint);
  event_base_free(sim.base);
  g = nullptr;
  return 0;
}
