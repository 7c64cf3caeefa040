// libFuzzer harness for what the proxy reads back from Redis (docs/security.md):
// cache values (decodeCachedResponse, proxy/cache.h) and flight outcomes
// from pub/sub (decodeOutcome, proxy/flight_outcome.h). scripts/fuzz runs it.
//
// Input layout: byte 0 picks what the rest is (mod 5):
//   0  a cache value, as read from Redis
//   1  a cache value's payload; the harness adds "WFPC" and the XXH64
//      checksum (formats 2 and 3), as anyone who can write to Redis can
//   2  the same with format 1's truncated SHA-256
//   3  an outcome message, as published
//   4  an outcome "R" + rest[0] + a value sealed as in 1 from rest[1..]
// Sealing lets the fuzzer reach every field behind the checksum.
//
// Checks on every accepted value (the clock is fixed at kNow):
//   * status 100..599; a reason of at most kMaxReasonBytes, HTAB/SP/VCHAR/
//     obs-text only; 0 <= stored_at <= kNow + kMaxStoredAtSkewMs;
//   * every header name is a token, no value has CR, LF or NUL, none is
//     hop-by-hop or framing (Content-Length, Transfer-Encoding, Connection…);
//   * the client head is "token: value\r\n" lines with the same rules, and is
//     exactly what clientHead() builds from the decoded headers (nothing
//     stored in the value is trusted); the x-ratelimit values have no CR/LF/NUL;
//   * encode → decode gives the same entry, and encoding that gives the same
//     bytes; an outcome re-encodes and decodes to the same outcome;
//   * a rate-limited outcome's Retry-After is 0..kMaxOutcomeRetryAfterS.
//
// Seeds (tests/fuzz/corpus/redis_value_fuzz/, 12 files): payloads of
// formats 1, 2 and 3 and outcomes of each kind, written by hand with the
// layout in proxy/cache.cc (modes 1 to 4), and sealed_v3 / sealed_outcome,
// written by encodeCachedResponse (modes 0 and 3).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include <spdlog/spdlog.h>

#include "proxy/cache.h"
#include "proxy/flight_outcome.h"
#include "proxy/hash.h"
#include "proxy/headers.h"

namespace {

constexpr int64_t kNow = 1764340000123;

[[noreturn]] void die(const char* what, std::string_view detail) {
  std::fprintf(stderr, "redis_value_fuzz: %s: %.*s\n", what, static_cast<int>(std::min<size_t>(detail.size(), 200)),
               detail.data());
  std::abort();
}

// An oracle of its own, not the proxy's: RFC 9110 §5.6.2 tchar.
bool isToken(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s) {
    bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
    if (!ok || c == 0) return false;
  }
  return true;
}

bool hasCtl(std::string_view v) { return v.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos; }

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

bool isFramingOrHopByHop(std::string_view name) {
  const std::string n = lower(name);
  for (const char* f : {"content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te",
                        "trailer", "upgrade", "proxy-authenticate", "proxy-authorization"}) {
    if (n == f) return true;
  }
  return false;
}

void checkHeadLines(std::string_view lines) {
  while (!lines.empty()) {
    const size_t crlf = lines.find("\r\n");
    if (crlf == std::string_view::npos) die("client head line not terminated", lines);
    std::string_view line = lines.substr(0, crlf);
    lines.remove_prefix(crlf + 2);
    const size_t colon = line.find(": ");
    if (colon == std::string_view::npos) die("client head line is not a field", line);
    std::string_view name = line.substr(0, colon);
    if (!isToken(name)) die("client head name not a token", name);
    if (hasCtl(line)) die("CR/LF/NUL inside a client head line", line);
    if (isFramingOrHopByHop(name)) die("framing field in the client head", name);
  }
}

void checkEntry(const wfp::CachedResponse& e) {
  if (e.status < 100 || e.status > 599) die("status out of range", std::to_string(e.status));
  if (e.reason.size() > wfp::kMaxReasonBytes) die("reason too long", e.reason);
  for (unsigned char c : e.reason) {
    if (c != '\t' && (c < 0x20 || c == 0x7f)) die("control byte in the reason", e.reason);
  }
  if (e.stored_at_ms < 0 || e.stored_at_ms > kNow + wfp::kMaxStoredAtSkewMs) {
    die("stored_at out of range", std::to_string(e.stored_at_ms));
  }
  for (const auto& h : e.headers) {
    if (!isToken(h.name)) die("header name not a token", h.name);
    if (hasCtl(h.value)) die("CR/LF/NUL in a header value", h.name);
    if (isFramingOrHopByHop(h.name)) die("framing or hop-by-hop header accepted", h.name);
  }
  const wfp::CachedResponse::ClientHead& head = e.clientHead();
  checkHeadLines(head.lines);
  for (const auto* v : {&head.ratelimit_limit, &head.ratelimit_remaining}) {
    if (*v && hasCtl(**v)) die("CR/LF/NUL in a stored x-ratelimit value", **v);
  }
  // The head is the one built from the checked headers, not anything stored.
  wfp::CachedResponse fresh;
  fresh.headers = e.headers;
  const wfp::CachedResponse::ClientHead& rebuilt = fresh.clientHead();
  if (rebuilt.lines != head.lines || rebuilt.ratelimit_limit != head.ratelimit_limit ||
      rebuilt.ratelimit_remaining != head.ratelimit_remaining) {
    die("decoded client head differs from the one its headers give", head.lines);
  }

  // Round trip.
  const std::string enc = wfp::encodeCachedResponse(e);
  auto d = wfp::decodeCachedResponse(enc, kNow);
  if (!d) die("an accepted entry does not survive encode/decode", e.reason);
  bool same = d->status == e.status && d->reason == e.reason && d->body == e.body &&
              d->stored_at_ms == e.stored_at_ms && d->stream == e.stream && d->headers.size() == e.headers.size() &&
              d->clientHead().lines == head.lines && d->clientHead().ratelimit_limit == head.ratelimit_limit &&
              d->clientHead().ratelimit_remaining == head.ratelimit_remaining;
  for (size_t i = 0; same && i < e.headers.size(); ++i) {
    same = d->headers[i].name == e.headers[i].name && d->headers[i].value == e.headers[i].value;
  }
  if (!same) die("encode/decode changed an accepted entry", e.reason);
  if (wfp::encodeCachedResponse(*d) != enc) die("encoding is not stable", e.reason);
}

void checkOutcome(const wfp::FlightOutcome& o) {
  if (!o.remote) die("decoded outcome not marked remote", "");
  if (o.rejected == wfp::FlightOutcome::Rejected::RateLimited &&
      (o.retry_after_s < 0 || o.retry_after_s > wfp::kMaxOutcomeRetryAfterS)) {
    die("retry-after out of range", std::to_string(o.retry_after_s));
  }
  if (o.rejected == wfp::FlightOutcome::Rejected::ShuttingDown) die("shutting-down outcome decoded", "");
  if (o.response) checkEntry(*o.response);
  const std::string enc = wfp::encodeOutcome(o);
  auto again = wfp::decodeOutcome(enc, kNow);
  if (!again) die("an accepted outcome does not survive encode/decode", enc);
  if (again->rejected != o.rejected || again->retry_after_s != o.retry_after_s || again->failure != o.failure ||
      again->stored != o.stored || (again->response == nullptr) != (o.response == nullptr)) {
    die("encode/decode changed an accepted outcome", enc);
  }
  if (o.response && wfp::encodeCachedResponse(*again->response) != wfp::encodeCachedResponse(*o.response)) {
    die("encode/decode changed an outcome's response", enc);
  }
}

std::string seal(std::string_view payload, bool sha) {
  std::string sum(8, '\0');
  if (sha) {
    wfp::Sha256 s = wfp::sha256(payload);
    std::memcpy(sum.data(), s.data(), 8);
  } else {
    const uint64_t x = wfp::xxh64(payload);
    for (int i = 0; i < 8; ++i) sum[i] = static_cast<char>((x >> (8 * i)) & 0xff);
  }
  return "WFPC" + sum + std::string(payload);
}

void entry(std::string_view value) {
  if (auto e = wfp::decodeCachedResponse(value, kNow)) checkEntry(*e);
}

void outcome(std::string_view message) {
  if (auto o = wfp::decodeOutcome(message, kNow)) checkOutcome(*o);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 5) {
    case 0: entry(rest); break;
    case 1: entry(seal(rest, false)); break;
    case 2: entry(seal(rest, true)); break;
    case 3: outcome(rest); break;
    case 4:
      if (!rest.empty()) outcome("R" + std::string(1, rest[0]) + seal(rest.substr(1), false));
      break;
  }
  return 0;
}
