#include "proxy/cache.h"

#include <cstring>

#include "proxy/hash.h"
#include "proxy/headers.h"

namespace wfp {

namespace {

constexpr std::string_view kMagic = "WFPC";
constexpr uint8_t kFormatVersion = 1;

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

}  // namespace

const CachedResponse::ClientHead& CachedResponse::clientHead() const {
  if (client_head_) return *client_head_;
  auto head = std::make_shared<ClientHead>();
  for (const HttpHeader& h : clientResponseHeaders(headers)) {
    if (equalsIgnoreCase(h.name, "x-ratelimit-limit")) {
      head->ratelimit_limit = findHeader(headers, "x-ratelimit-limit");
    } else if (equalsIgnoreCase(h.name, "x-ratelimit-remaining")) {
      head->ratelimit_remaining = findHeader(headers, "x-ratelimit-remaining");
    } else if (!equalsIgnoreCase(h.name, "x-request-id") && !equalsIgnoreCase(h.name, "server-timing")) {
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

std::string encodeCachedResponse(const CachedResponse& e) {
  std::string payload;
  payload.reserve(e.body.size() + 256);
  payload.push_back(static_cast<char>(kFormatVersion));
  payload.push_back(e.stream ? 1 : 0);
  putU32(payload, static_cast<uint32_t>(e.status));
  putU64(payload, static_cast<uint64_t>(e.stored_at_ms));
  putBytes(payload, e.reason);
  putU32(payload, static_cast<uint32_t>(e.headers.size()));
  for (const auto& h : e.headers) {
    putBytes(payload, h.name);
    putBytes(payload, h.value);
  }
  putBytes(payload, e.body);
  Sha256 sum = sha256(payload);
  std::string out;
  out.reserve(kMagic.size() + 8 + payload.size());
  out.append(kMagic);
  out.append(reinterpret_cast<const char*>(sum.data()), 8);  // truncated checksum
  out.append(payload);
  return out;
}

std::optional<CachedResponse> decodeCachedResponse(std::string_view bytes) {
  if (bytes.size() < kMagic.size() + 8 + 2 || bytes.substr(0, kMagic.size()) != kMagic) return std::nullopt;
  std::string_view sum = bytes.substr(kMagic.size(), 8);
  std::string_view payload = bytes.substr(kMagic.size() + 8);
  Sha256 actual = sha256(payload);
  if (std::memcmp(actual.data(), sum.data(), 8) != 0) return std::nullopt;
  Reader r{payload};
  CachedResponse e;
  if (r.u(1) != kFormatVersion) return std::nullopt;
  e.stream = r.u(1) != 0;
  e.status = static_cast<int>(r.u(4));
  e.stored_at_ms = static_cast<int64_t>(r.u(8));
  e.reason = r.bytes();
  uint64_t count = r.u(4);
  if (!r.ok || count > 10000) return std::nullopt;
  for (uint64_t i = 0; i < count && r.ok; ++i) {
    HttpHeader h;
    h.name = r.bytes();
    h.value = r.bytes();
    e.headers.push_back(std::move(h));
  }
  e.body = r.bytes();
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
