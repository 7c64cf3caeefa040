#include "proxy/cache.h"

#include <algorithm>
#include <cstring>

#include "proxy/hash.h"
#include "proxy/headers.h"

namespace wfp {

namespace {

constexpr std::string_view kMagic = "WFPC";
constexpr uint8_t kFormatVersion = 2;

void putU32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void putU64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void putBytes(std::string& out, std::string_view s) {
  putU32(out, static_cast<uint32_t>(s.size()));
  out.append(s);
}

struct Reader {
  std::string_view in;
  bool ok = true;
  uint64_t u(int n) {
    if (in.size() < static_cast<size_t>(n)) {
      ok = false;
      return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(in[i])) << (8 * i);
    in.remove_prefix(n);
    return v;
  }
  std::string bytes() {
    uint64_t n = u(4);
    if (!ok || in.size() < n) {
      ok = false;
      return {};
    }
    std::string s(in.substr(0, n));
    in.remove_prefix(n);
    return s;
  }
};

size_t footprint(const std::string& key, const CachedResponse& e) {
  size_t n = key.size() + e.body.size() + e.reason.size() + sizeof(CachedResponse) + 128;
  for (const auto& h : e.headers) n += h.name.size() + h.value.size() + 64;
  return n;
}

// A JSON scanner that validates structure and remembers nothing but the
// top-level "success" member.
class SuccessScan {
 public:
  explicit SuccessScan(std::string_view s) : s_(s) {}

  bool run() {
    ws();
    if (!eat('{')) return false;
    ws();
    bool success = false;
    if (!eat('}')) {
      for (;;) {
        ws();
        std::string_view key;
        bool plain = false;
        if (!string(&key, &plain)) return false;
        ws();
        if (!eat(':')) return false;
        ws();
        if (plain && key == "success") {
          std::string_view tok = literal();
          if (tok == "true") {
            success = true;
          } else if (tok == "false" || tok == "null") {
            success = false;
          } else {
            i_ -= tok.size();
            if (!value(1)) return false;
            success = false;
          }
        } else if (!value(1)) {
          return false;
        }
        ws();
        if (eat('}')) break;
        if (!eat(',')) return false;
      }
    }
    ws();
    return i_ == s_.size() && success;
  }

 private:
  static constexpr int kMaxDepth = 1000;

  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  bool eat(char c) {
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool string(std::string_view* out, bool* plain) {
    if (!eat('"')) return false;
    size_t start = i_;
    bool escaped = false;
    while (i_ < s_.size()) {
      const auto c = static_cast<unsigned char>(s_[i_]);
      if (c == '"') {
        if (out) *out = s_.substr(start, i_ - start);
        if (plain) *plain = !escaped;
        ++i_;
        return true;
      }
      if (c < 0x20) return false;
      if (c == '\\') {
        escaped = true;
        i_ += 2;
        continue;
      }
      ++i_;
    }
    return false;
  }
  std::string_view literal() {
    size_t start = i_;
    while (i_ < s_.size()) {
      char c = s_[i_];
      bool part = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' ||
                  c == '-' || c == '.';
      if (!part) break;
      ++i_;
    }
    return s_.substr(start, i_ - start);
  }
  bool value(int depth) {
    if (depth > kMaxDepth || i_ >= s_.size()) return false;
    char c = s_[i_];
    if (c == '"') return string(nullptr, nullptr);
    if (c == '{' || c == '[') {
      const char close = c == '{' ? '}' : ']';
      ++i_;
      ws();
      if (eat(close)) return true;
      for (;;) {
        ws();
        if (close == '}') {
          if (!string(nullptr, nullptr)) return false;
          ws();
          if (!eat(':')) return false;
          ws();
        }
        if (!value(depth + 1)) return false;
        ws();
        if (eat(close)) return true;
        if (!eat(',')) return false;
      }
    }
    std::string_view tok = literal();
    if (tok == "true" || tok == "false" || tok == "null") return true;
    return !tok.empty() && (tok[0] == '-' || (tok[0] >= '0' && tok[0] <= '9'));
  }

  std::string_view s_;
  size_t i_ = 0;
};

}  // namespace

bool isSuccessObject(std::string_view body) { return SuccessScan(body).run(); }

const CachedResponse::ClientHead& CachedResponse::clientHead() const {
  if (client_head_) return *client_head_;
  // `headers` are what storedResponse() kept (end-to-end, no X-Request-Id or
  // Server-Timing), also when decoded; the checks below only keep a foreign
  // or damaged entry from writing hop-by-hop or framing fields.
  auto head = std::make_shared<ClientHead>();
  head->lines.reserve(256);
  for (const HttpHeader& h : headers) {
    if (equalsIgnoreCase(h.name, "x-ratelimit-limit")) {
      if (!head->ratelimit_limit) head->ratelimit_limit = h.value;
    } else if (equalsIgnoreCase(h.name, "x-ratelimit-remaining")) {
      if (!head->ratelimit_remaining) head->ratelimit_remaining = h.value;
    } else if (!isHopByHop(h.name) && !equalsIgnoreCase(h.name, "x-request-id") &&
               !equalsIgnoreCase(h.name, "server-timing")) {
      appendHeaderLine(head->lines, h.name, h.value);
    }
  }
  client_head_ = std::move(head);
  return *client_head_;
}

CachedResponse storedResponse(int status, std::string reason, const HttpHeaders& upstream_headers, std::string body,
                              bool stream, int64_t now_ms) {
  CachedResponse e;
  e.status = status;
  e.reason = std::move(reason);
  e.headers = clientResponseHeaders(upstream_headers);
  removeHeader(e.headers, "x-request-id");
  removeHeader(e.headers, "server-timing");
  e.body = std::move(body);
  e.stored_at_ms = now_ms;
  e.stream = stream;
  return e;
}

// Layout: "WFPC", an 8-byte checksum of the payload, the payload. Payload:
// version (1 byte), stream flag, status, stored_at, reason, headers, body;
// version 2 adds the client head (see clientHead()), so that a hit from Redis
// does not filter and format the headers again, and checks the payload with
// XXH64 (version 1: truncated SHA-256, a tenth of a Redis hit's time).
// Version 1 values, written by older proxies of a fleet, are still read.
std::string encodeCachedResponse(const CachedResponse& e) {
  const CachedResponse::ClientHead& head = e.clientHead();
  std::string out;
  out.reserve(kMagic.size() + 8 + e.body.size() + head.lines.size() + 256);
  out.append(kMagic);
  out.append(8, '\0');  // the checksum, below
  const size_t payload_at = out.size();
  out.push_back(static_cast<char>(kFormatVersion));
  out.push_back(e.stream ? 1 : 0);
  putU32(out, static_cast<uint32_t>(e.status));
  putU64(out, static_cast<uint64_t>(e.stored_at_ms));
  putBytes(out, e.reason);
  putU32(out, static_cast<uint32_t>(e.headers.size()));
  for (const auto& h : e.headers) {
    putBytes(out, h.name);
    putBytes(out, h.value);
  }
  putBytes(out, e.body);
  putBytes(out, head.lines);
  for (const auto* v : {&head.ratelimit_limit, &head.ratelimit_remaining}) {
    out.push_back(v->has_value() ? 1 : 0);
    putBytes(out, v->has_value() ? std::string_view(**v) : std::string_view());
  }
  uint64_t sum = xxh64(std::string_view(out).substr(payload_at));
  for (size_t i = 0; i < 8; ++i) out[kMagic.size() + i] = static_cast<char>((sum >> (8 * i)) & 0xff);
  return out;
}

std::optional<CachedResponse> decodeCachedResponse(std::string_view bytes) {
  if (bytes.size() < kMagic.size() + 8 + 2 || bytes.substr(0, kMagic.size()) != kMagic) return std::nullopt;
  std::string_view sum = bytes.substr(kMagic.size(), 8);
  std::string_view payload = bytes.substr(kMagic.size() + 8);
  const auto version = static_cast<uint8_t>(payload[0]);
  if (version == 1) {
    Sha256 actual = sha256(payload);  // format 1: a truncated SHA-256
    if (std::memcmp(actual.data(), sum.data(), 8) != 0) return std::nullopt;
  } else if (version == kFormatVersion) {
    if (Reader{sum}.u(8) != xxh64(payload)) return std::nullopt;
  } else {
    return std::nullopt;
  }
  Reader r{payload.substr(1)};
  CachedResponse e;
  e.stream = r.u(1) != 0;
  e.status = static_cast<int>(r.u(4));
  e.stored_at_ms = static_cast<int64_t>(r.u(8));
  e.reason = r.bytes();
  uint64_t count = r.u(4);
  if (!r.ok || count > 10000 || count > r.in.size() / 8) return std::nullopt;  // 8: two empty byte strings
  e.headers.reserve(count);
  for (uint64_t i = 0; i < count && r.ok; ++i) {
    HttpHeader h;
    h.name = r.bytes();
    h.value = r.bytes();
    e.headers.push_back(std::move(h));
  }
  e.body = r.bytes();
  if (version == kFormatVersion) {
    auto head = std::make_shared<CachedResponse::ClientHead>();
    head->lines = r.bytes();
    for (auto* v : {&head->ratelimit_limit, &head->ratelimit_remaining}) {
      bool present = r.u(1) != 0;
      std::string value = r.bytes();
      if (present) *v = std::move(value);
    }
    e.client_head_ = std::move(head);
  }
  if (!r.ok || !r.in.empty() || e.status < 100 || e.status > 999) return std::nullopt;
  return e;
}

std::string cacheKey(std::string_view prefix, std::string_view ns, std::string_view route,
                     std::string_view workflow_id, uint64_t generation, std::string_view body_sha256_hex) {
  std::string key;
  key.reserve(prefix.size() + ns.size() + route.size() + workflow_id.size() + body_sha256_hex.size() + 32);
  key.append(prefix);
  key.append("v1:{");
  key.append(ns);
  key.append("}:");
  key.append(route);
  key.push_back(':');
  key.append(workflow_id);
  key.push_back(':');
  key.append(std::to_string(generation));
  key.push_back(':');
  key.append(body_sha256_hex);
  return key;
}

CachedResponsePtr MemoryCache::get(const std::string& key, int64_t now_ms) {
  auto it = map_.find(key);
  if (it == map_.end()) return nullptr;
  if (it->second->expires_at_ms <= now_ms) {
    bytes_ -= it->second->bytes;
    lru_.erase(it->second);
    map_.erase(it);
    return nullptr;
  }
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->entry;
}

void MemoryCache::put(const std::string& key, CachedResponsePtr entry, int64_t expires_at_ms) {
  size_t size = footprint(key, *entry);
  if (size > max_bytes_) return;  // would evict everything and still not fit
  erase(key);
  lru_.push_front(Slot{key, std::move(entry), expires_at_ms, size});
  map_.emplace(key, lru_.begin());
  bytes_ += size;
  evict();
}

void MemoryCache::erase(const std::string& key) {
  auto it = map_.find(key);
  if (it == map_.end()) return;
  bytes_ -= it->second->bytes;
  lru_.erase(it->second);
  map_.erase(it);
}

void MemoryCache::clear() {
  lru_.clear();
  map_.clear();
  bytes_ = 0;
}

void MemoryCache::setMaxBytes(size_t max_bytes) {
  max_bytes_ = max_bytes;
  evict();
}

void MemoryCache::evict() {
  while (bytes_ > max_bytes_ && !lru_.empty()) {
    const Slot& last = lru_.back();
    bytes_ -= last.bytes;
    map_.erase(last.key);
    lru_.pop_back();
  }
}

}  // namespace wfp
