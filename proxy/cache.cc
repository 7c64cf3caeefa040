#include "proxy/cache.h"

#include <chrono>
#include <cstring>

#include "proxy/hash.h"
#include "proxy/headers.h"

namespace wfp {

namespace {

constexpr std::string_view kMagic = "WFPC";
// 3: format 1's fields with format 2's XXH64 checksum. Format 2 also carried
// the client head preformatted, which a reader cannot trust (docs/security.md):
// it is read past and rebuilt from the checked headers.
constexpr uint8_t kFormatVersion = 3;
constexpr uint8_t kFormatWithHead = 2;
constexpr uint8_t kFormatSha256 = 1;

int64_t wallClockMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// reason-phrase = *( HTAB / SP / VCHAR / obs-text ) (RFC 9112 §4).
bool isReasonByte(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

bool isReasonPhrase(std::string_view s) {
  if (s.size() > kMaxReasonBytes) return false;
  for (unsigned char c : s) {
    if (!isReasonByte(c)) return false;
  }
  return true;
}

std::string cleanReasonPhrase(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (out.size() == kMaxReasonBytes) break;
    if (isReasonByte(c)) out.push_back(static_cast<char>(c));
  }
  return out;
}

// What a stored header is to a hit.
enum class Field {
  Line,                // written from the entry
  RateLimitLimit,      // x-ratelimit-*: written by the hit, from the entry or the latest seen
  RateLimitRemaining,
  PerRequest,          // X-Request-Id, Server-Timing: each hit writes its own
  Forbidden,           // hop-by-hop or framing: never from a stored entry
};

// Is `name` the lower-case `lower`, ignoring ASCII case? Inline, against a
// lower-case literal: this runs for every header of every value decoded
// from Redis (equalsIgnoreCase, a call that lowers both sides, cost a Redis
// hit 5% more instructions).
bool named(std::string_view name, std::string_view lower) {
  if (name.size() != lower.size()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + ('a' - 'A'));
    if (c != lower[i]) return false;
  }
  return true;
}

Field classify(std::string_view name) {
  if (isHopByHop(name) || named(name, "content-length")) return Field::Forbidden;
  if (named(name, "x-ratelimit-limit")) return Field::RateLimitLimit;
  if (named(name, "x-ratelimit-remaining")) return Field::RateLimitRemaining;
  if (named(name, "x-request-id") || named(name, "server-timing")) return Field::PerRequest;
  return Field::Line;
}

// Adds `h` to `head` the way a hit writes it. False, adding nothing, for a
// field a client must never receive from a stored entry: a name that is not
// a token, a value with CR, LF or NUL (appendHeaderLine, isSafeHeaderValue),
// a hop-by-hop or framing field (isHopByHop, Content-Length).
bool addToHead(CachedResponse::ClientHead& head, const HttpHeader& h) {
  const Field field = classify(h.name);
  switch (field) {
    case Field::Forbidden:
      return false;
    case Field::RateLimitLimit:
    case Field::RateLimitRemaining: {
      if (!isSafeHeaderValue(h.value)) return false;
      auto& slot = field == Field::RateLimitLimit ? head.ratelimit_limit : head.ratelimit_remaining;
      if (!slot) slot = h.value;
      return true;
    }
    case Field::PerRequest:
      return isSafeHeaderValue(h.value);
    case Field::Line:
      return appendHeaderLine(head.lines, h.name, h.value);
  }
  return false;
}

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
  void skipBytes() {
    uint64_t n = u(4);
    if (!ok || in.size() < n) {
      ok = false;
      return;
    }
    in.remove_prefix(n);
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
  // Server-Timing); a field a client may not get is left out.
  auto head = std::make_shared<ClientHead>();
  head->lines.reserve(256);
  for (const HttpHeader& h : headers) addToHead(*head, h);
  client_head_ = std::move(head);
  return *client_head_;
}

CachedResponse storedResponse(int status, std::string reason, HttpHeaders upstream_headers, std::string body,
                              bool stream, int64_t now_ms) {
  CachedResponse e;
  e.status = status;
  e.reason = std::move(reason);
  e.headers = clientResponseHeaders(std::move(upstream_headers));
  removeHeader(e.headers, "x-request-id");
  removeHeader(e.headers, "server-timing");
  e.body = std::move(body);
  e.stored_at_ms = now_ms;
  e.stream = stream;
  return e;
}

// Layout: "WFPC", an 8-byte checksum of the payload, the payload. Payload:
// version (1 byte), stream flag (0 or 1), status (4), stored_at (8), reason,
// header count (4), headers (name, value), body; byte strings are a 4-byte
// length and the bytes, integers little-endian.
//   format 1: checksum = truncated SHA-256 (a tenth of a Redis hit's time);
//   format 2: XXH64, and after the body the client head (lines, then the
//             x-ratelimit pair as flag + bytes), read past, never used;
//   format 3: XXH64, nothing after the body.
// Values of formats 1 and 2, written by older proxies of a fleet, are still
// read; an older proxy finds a format-3 value a miss and writes its own.
std::string encodeCachedResponse(const CachedResponse& e) {
  std::string out;
  out.reserve(kMagic.size() + 8 + e.body.size() + 256);
  out.append(kMagic);
  out.append(8, '\0');  // the checksum, below
  const size_t payload_at = out.size();
  out.push_back(static_cast<char>(kFormatVersion));
  out.push_back(e.stream ? 1 : 0);
  putU32(out, static_cast<uint32_t>(e.status));
  putU64(out, static_cast<uint64_t>(e.stored_at_ms));
  putBytes(out, isReasonPhrase(e.reason) ? e.reason : cleanReasonPhrase(e.reason));
  const size_t count_at = out.size();
  putU32(out, 0);  // the count of the headers kept, below
  uint32_t count = 0;
  CachedResponse::ClientHead scratch;  // what decoding will check, run here
  for (const auto& h : e.headers) {
    if (count == kMaxStoredHeaders || !addToHead(scratch, h)) continue;
    putBytes(out, h.name);
    putBytes(out, h.value);
    ++count;
  }
  for (size_t i = 0; i < 4; ++i) out[count_at + i] = static_cast<char>((count >> (8 * i)) & 0xff);
  putBytes(out, e.body);
  uint64_t sum = xxh64(std::string_view(out).substr(payload_at));
  for (size_t i = 0; i < 8; ++i) out[kMagic.size() + i] = static_cast<char>((sum >> (8 * i)) & 0xff);
  return out;
}

std::optional<CachedResponse> decodeCachedResponse(std::string_view bytes, int64_t now_ms) {
  if (bytes.size() < kMagic.size() + 8 + 2 || bytes.substr(0, kMagic.size()) != kMagic) return std::nullopt;
  std::string_view sum = bytes.substr(kMagic.size(), 8);
  std::string_view payload = bytes.substr(kMagic.size() + 8);
  const auto version = static_cast<uint8_t>(payload[0]);
  if (version == kFormatSha256) {
    Sha256 actual = sha256(payload);
    if (std::memcmp(actual.data(), sum.data(), 8) != 0) return std::nullopt;
  } else if (version == kFormatWithHead || version == kFormatVersion) {
    if (Reader{sum}.u(8) != xxh64(payload)) return std::nullopt;
  } else {
    return std::nullopt;
  }
  // A valid checksum proves nothing about who wrote the value: every field
  // is checked as if a client had sent it.
  Reader r{payload.substr(1)};
  CachedResponse e;
  const uint64_t stream = r.u(1);
  const uint64_t status = r.u(4);
  const auto stored_at = static_cast<int64_t>(r.u(8));
  if (!r.ok || stream > 1 || status < static_cast<uint64_t>(kMinStoredStatus) ||
      status > static_cast<uint64_t>(kMaxStoredStatus)) {
    return std::nullopt;
  }
  // Not before 1970, not in the future beyond the skew (the difference in
  // unsigned arithmetic: exact, and no overflow for any now_ms).
  if (stored_at < 0 || (stored_at > now_ms && static_cast<uint64_t>(stored_at) - static_cast<uint64_t>(now_ms) >
                                                     static_cast<uint64_t>(kMaxStoredAtSkewMs))) {
    return std::nullopt;
  }
  e.stream = stream == 1;
  e.status = static_cast<int>(status);
  e.stored_at_ms = stored_at;
  e.reason = r.bytes();
  if (!r.ok || !isReasonPhrase(e.reason)) return std::nullopt;
  uint64_t count = r.u(4);
  if (!r.ok || count > kMaxStoredHeaders || count > r.in.size() / 8) return std::nullopt;  // 8: two empty strings
  e.headers.reserve(count);
  auto head = std::make_shared<CachedResponse::ClientHead>();
  head->lines.reserve(256);
  for (uint64_t i = 0; i < count; ++i) {
    std::string name = r.bytes();
    std::string value = r.bytes();
    if (!r.ok) return std::nullopt;
    const HttpHeader& h = e.headers.emplace_back(HttpHeader{std::move(name), std::move(value)});
    if (!addToHead(*head, h)) return std::nullopt;
  }
  e.body = r.bytes();
  if (version == kFormatWithHead) {
    r.skipBytes();  // the stored lines: never trusted
    for (int i = 0; i < 2; ++i) {
      const uint64_t present = r.u(1);
      r.skipBytes();
      if (present > 1) return std::nullopt;
    }
  }
  if (!r.ok || !r.in.empty()) return std::nullopt;
  e.client_head_ = std::move(head);
  return e;
}

std::optional<CachedResponse> decodeCachedResponse(std::string_view bytes) {
  return decodeCachedResponse(bytes, wallClockMillis());
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

size_t MemoryCache::eraseWithPrefix(const std::vector<std::string>& prefixes) {
  size_t n = 0;
  for (auto it = lru_.begin(); it != lru_.end();) {
    bool match = false;
    for (const auto& p : prefixes) match = match || it->key.compare(0, p.size(), p) == 0;
    if (!match) {
      ++it;
      continue;
    }
    bytes_ -= it->bytes;
    map_.erase(it->key);
    it = lru_.erase(it);
    ++n;
  }
  return n;
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
