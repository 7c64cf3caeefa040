// What the cache stores, its key (docs/http.md), and the in-process LRU
// that serves as the memory backend and as the L1 in front of Redis.
//
// An entry keeps the response's status, end-to-end headers, body bytes and
// the time it was stored. Entries are encoded with a format version and a
// checksum; a value that does not decode (corrupt, foreign, older format) is
// a miss, never a crash or a wrong answer.
//
// A value read from Redis is untrusted input (docs/security.md): anyone who can
// write to the shared Redis can compute a valid checksum. The decoder checks
// every field like client input and rebuilds what a hit writes from the
// checked headers; it never copies preformatted bytes from a value.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "proxy/http_types.h"

namespace wfp {

struct CachedResponse {
  int status = 200;
  std::string reason;
  HttpHeaders headers;  // end-to-end headers as the upstream sent them
  std::string body;
  int64_t stored_at_ms = 0;  // unix time
  bool stream = false;       // a stored stream: replayed chunked

  // The headers as a client receives them on a hit, formatted once
  // ("Name: value\r\n" lines, see appendHeaderLine): clientResponseHeaders()
  // without X-Request-Id, Server-Timing, x-ratelimit-limit and
  // x-ratelimit-remaining, which every hit writes itself. Built on first use
  // (entries are immutable once shared, and used on the loop thread only),
  // or by decodeCachedResponse() from the headers it checked. A field whose
  // name is not a token, whose value has CR, LF or NUL, or that is hop-by-hop
  // or framing (Content-Length, Transfer-Encoding, Connection, ...) is never
  // in it.
  struct ClientHead {
    std::string lines;
    std::optional<std::string> ratelimit_limit;  // the stored values, if any
    std::optional<std::string> ratelimit_remaining;
  };
  const ClientHead& clientHead() const;

  // Cache of clientHead(); not part of the entry's value.
  mutable std::shared_ptr<const ClientHead> client_head_;
};
using CachedResponsePtr = std::shared_ptr<const CachedResponse>;

// What is stored of an upstream response: its end-to-end headers (without
// the X-Request-Id and Server-Timing the proxy adds per request). The
// headers are filtered in place: a caller done with them moves them in.
CachedResponse storedResponse(int status, std::string reason, HttpHeaders upstream_headers, std::string body,
                              bool stream, int64_t now_ms);

// Is `body` a JSON object whose "success" member is `true` (what makes a
// 200 storable, docs/http.md)? Scans the bytes without building anything: a DOM
// of a 64 MiB body cost several copies of it. Nesting beyond 1000 levels or
// malformed JSON: false.
bool isSuccessObject(std::string_view body);

// Bounds a decoded value must keep (docs/security.md); anything else is a miss.
inline constexpr int kMinStoredStatus = 100;  // RFC 9110 §15: 100..599
inline constexpr int kMaxStoredStatus = 599;
inline constexpr size_t kMaxReasonBytes = 1024;
inline constexpr uint64_t kMaxStoredHeaders = 10000;
// How far a stored time may be ahead of the reader's clock (instances of a
// fleet disagree a little). Beyond it the value is a miss: a time in the
// future would otherwise keep an entry fresh for as long as it is ahead.
inline constexpr int64_t kMaxStoredAtSkewMs = 60'000;

// Writes format 3. Fields a decoder would refuse are left out (a header that
// may not reach a client) or cleaned (reason-phrase bytes outside HTAB, SP,
// VCHAR, obs-text; beyond kMaxReasonBytes), so what this proxy stores always
// reads back.
std::string encodeCachedResponse(const CachedResponse& entry);
// Reads formats 1, 2 and 3. nullopt (a miss) unless the checksum holds and
// every field is in bounds: status kMinStoredStatus..kMaxStoredStatus; a
// reason phrase of at most kMaxReasonBytes of HTAB, SP, VCHAR or obs-text;
// 0 <= stored_at_ms <= now_ms + kMaxStoredAtSkewMs; at most
// kMaxStoredHeaders headers, each with a token name, a value without CR, LF
// or NUL, none hop-by-hop or Content-Length; no byte left over. The entry's
// clientHead() is built here from those headers (format 2's stored head is
// read past and ignored). `now_ms`: unix time; without it, the wall clock.
std::optional<CachedResponse> decodeCachedResponse(std::string_view bytes, int64_t now_ms);
std::optional<CachedResponse> decodeCachedResponse(std::string_view bytes);

// <prefix>v1:{<namespace>}:<route>:<workflow_id>:<generation>:<input digest>
// (the input digest: key_rules.h inputDigest, the hex SHA-256 of the canonical
// body as the workflow's key rules shape it)
std::string cacheKey(std::string_view prefix, std::string_view ns, std::string_view route,
                     std::string_view workflow_id, uint64_t generation, std::string_view body_sha256_hex);

// Bounded LRU. Not thread-safe (one owner: the loop).
class MemoryCache {
 public:
  explicit MemoryCache(size_t max_bytes) : max_bytes_(max_bytes) {}

  // The entry if present and not past `expires_at_ms` (which includes any
  // stale-if-error window); freshness is the caller's decision.
  CachedResponsePtr get(const std::string& key, int64_t now_ms);
  void put(const std::string& key, CachedResponsePtr entry, int64_t expires_at_ms);
  void erase(const std::string& key);
  // Drops every entry whose key starts with one of `prefixes`; O(entries),
  // for rare events (an input purge another instance made).
  size_t eraseWithPrefix(const std::vector<std::string>& prefixes);
  void clear();
  void setMaxBytes(size_t max_bytes);

  size_t entries() const { return map_.size(); }
  size_t bytes() const { return bytes_; }

 private:
  struct Slot {
    std::string key;
    CachedResponsePtr entry;
    int64_t expires_at_ms;
    size_t bytes;
  };
  void evict();

  size_t max_bytes_;
  size_t bytes_ = 0;
  std::list<Slot> lru_;  // front: most recently used
  std::unordered_map<std::string, std::list<Slot>::iterator> map_;
};

}  // namespace wfp
