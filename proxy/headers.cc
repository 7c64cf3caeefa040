#include "proxy/headers.h"

#include <sys/random.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>

#include "proxy/hash.h"
#include "proxy/text.h"

namespace wfp {

namespace {

constexpr std::array<std::string_view, 9> kHopByHop = {
    "connection", "keep-alive", "proxy-connection", "te",     "trailer",
    "transfer-encoding", "upgrade", "proxy-authenticate", "proxy-authorization"};
// Bit n is set when some name above has n characters: most names are
// refused on their length alone.
constexpr uint32_t kHopByHopLengths = [] {
  uint32_t bits = 0;
  for (auto hop : kHopByHop) bits |= 1u << hop.size();
  return bits;
}();

// Is `name` one of the comma-separated tokens of any Connection header?
bool listedInConnection(const HttpHeaders& headers, std::string_view name) {
  for (const auto& h : headers) {
    if (!equalsIgnoreCase(h.name, "connection")) continue;
    std::string_view rest = h.value;
    while (!rest.empty()) {
      size_t comma = rest.find(',');
      std::string_view token = trimOws(rest.substr(0, comma));
      if (equalsIgnoreCase(token, name)) return true;
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return false;
}

bool hasConnectionHeader(const HttpHeaders& headers) {
  return std::any_of(headers.begin(), headers.end(),
                     [](const HttpHeader& h) { return equalsIgnoreCase(h.name, "connection"); });
}

}  // namespace

bool keptForClient(const HttpHeaders& all, const HttpHeader& h) {
  return !isHopByHop(h.name) && !equalsIgnoreCase(h.name, "content-length") && !listedInConnection(all, h.name);
}

bool isHopByHop(std::string_view name) {
  // Cheap refusals first: this runs for every header of every cache value
  // decoded from Redis.
  if (name.size() >= 32 || ((kHopByHopLengths >> name.size()) & 1) == 0) return false;
  for (auto hop : kHopByHop) {
    if (name.size() == hop.size() && (name[0] | 0x20) == hop[0] && equalsIgnoreCase(name, hop)) return true;
  }
  return false;
}

void removeHeader(HttpHeaders& headers, std::string_view name) {
  std::erase_if(headers, [&](const HttpHeader& h) { return equalsIgnoreCase(h.name, name); });
}

void setHeader(HttpHeaders& headers, std::string_view name, std::string value) {
  auto first = std::find_if(headers.begin(), headers.end(),
                            [&](const HttpHeader& h) { return equalsIgnoreCase(h.name, name); });
  if (first == headers.end()) {
    headers.push_back({std::string(name), std::move(value)});
    return;
  }
  first->value = std::move(value);
  size_t keep = static_cast<size_t>(first - headers.begin());
  size_t i = 0;
  std::erase_if(headers, [&](const HttpHeader& h) { return i++ > keep && equalsIgnoreCase(h.name, name); });
}

HttpHeaders upstreamRequestHeaders(HttpHeaders client, const UpstreamHeaderOptions& options) {
  // Which fields a Connection header names, read before anything moves
  // (rare: most requests have none).
  std::vector<char> listed;
  if (hasConnectionHeader(client)) {
    listed.resize(client.size());
    for (size_t i = 0; i < client.size(); ++i) listed[i] = listedInConnection(client, client[i].name);
  }
  bool authorization_placed = false;
  bool request_id_placed = false;
  bool encoding_placed = false;
  size_t kept = 0;  // client[0, kept) is what goes upstream, in the client's order
  for (size_t i = 0; i < client.size(); ++i) {
    HttpHeader& h = client[i];
    if (isHopByHop(h.name) || equalsIgnoreCase(h.name, "host") || equalsIgnoreCase(h.name, "content-length") ||
        equalsIgnoreCase(h.name, "expect") || (!listed.empty() && listed[i])) {
      continue;
    }
    if (equalsIgnoreCase(h.name, "authorization")) {
      if (authorization_placed) continue;
      authorization_placed = true;
      // Keep the client's position in the header order; swap the value.
      if (options.authorization) h.value = *options.authorization;
    } else if (equalsIgnoreCase(h.name, "x-request-id")) {
      if (request_id_placed) continue;
      request_id_placed = true;
      h.value = options.request_id;
    } else if (options.identity_encoding && equalsIgnoreCase(h.name, "accept-encoding")) {
      if (encoding_placed) continue;
      encoding_placed = true;
      h.value = "identity";
    }
    if (kept != i) client[kept] = std::move(h);
    ++kept;
  }
  client.erase(client.begin() + static_cast<std::ptrdiff_t>(kept), client.end());
  if (!authorization_placed && options.authorization) {
    client.push_back(HttpHeader{"Authorization", *options.authorization});
  }
  if (!request_id_placed && !options.request_id.empty()) {
    client.push_back(HttpHeader{"X-Request-Id", std::string(options.request_id)});
  }
  if (!encoding_placed && options.identity_encoding) {
    client.push_back(HttpHeader{"Accept-Encoding", "identity"});
  }
  client.shrink_to_fit();  // kept while the request waits in the queue
  return client;
}

HttpHeaders clientResponseHeaders(const HttpHeaders& upstream) {
  HttpHeaders out;
  out.reserve(upstream.size() + 4);
  for (const auto& h : upstream) {
    if (keptForClient(upstream, h)) out.push_back(h);
  }
  return out;
}

HttpHeaders clientResponseHeaders(HttpHeaders&& upstream) {
  // The rule reads the whole list (a Connection header names fields to
  // drop): filtered in place only when no Connection header can change it
  // while it is being filtered.
  if (hasConnectionHeader(upstream)) return clientResponseHeaders(static_cast<const HttpHeaders&>(upstream));
  static const HttpHeaders kNone;
  std::erase_if(upstream, [](const HttpHeader& h) { return !keptForClient(kNone, h); });
  return std::move(upstream);
}

std::string newRequestId() {
  // Unique, not secret: a per-thread xorshift128+ seeded once from the OS
  // (a getrandom() per request was a syscall on the hot path).
  thread_local uint64_t state[2] = {0, 0};
  if (state[0] == 0 && state[1] == 0) {
    size_t got = 0;
    auto* bytes = reinterpret_cast<uint8_t*>(state);
    while (got < sizeof state) {
      ssize_t n = getrandom(bytes + got, sizeof state - got, 0);
      if (n > 0) got += static_cast<size_t>(n);
    }
    if (state[0] == 0 && state[1] == 0) state[0] = 1;
  }
  std::array<uint8_t, 16> out{};
  for (int half = 0; half < 2; ++half) {
    uint64_t s1 = state[0];
    const uint64_t s0 = state[1];
    state[0] = s0;
    s1 ^= s1 << 23;
    state[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    uint64_t v = state[1] + s0;
    for (int i = 0; i < 8; ++i) out[half * 8 + i] = static_cast<uint8_t>(v >> (8 * i));
  }
  return toHex(out.data(), out.size());
}

bool isSafeHeaderValue(std::string_view value) {
  // Eight bytes at a time: a word with no byte below 0x0e (CR, LF and NUL
  // are) needs no closer look. (w - 0x0e..) & ~w & 0x80.. is non-zero when
  // some byte of w is below 0x0e; ~w keeps bytes >= 0x80 out of it.
  constexpr uint64_t kOnes = 0x0101010101010101ull;
  size_t i = 0;
  for (; i + 8 <= value.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, value.data() + i, 8);
    if (((w - 0x0e * kOnes) & ~w & 0x80 * kOnes) != 0) break;
  }
  for (; i < value.size(); ++i) {
    const char c = value[i];
    if (c == '\r' || c == '\n' || c == '\0') return false;
  }
  return true;
}

}  // namespace wfp
