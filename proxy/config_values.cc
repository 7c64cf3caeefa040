// Value grammars of the configuration (see config_values.h). Rules the spec
// leaves open, decided here (README "Configuration"):
//  * Booleans: true/false, yes/no, on/off (any case).
//  * Durations are seconds, fractional allowed, at most 1e9 (~31 years).
//  * Sizes: an integer number of bytes, or a number (fraction allowed) with
//    B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024),
//    unit case-insensitive, optional space before it; a fractional result is
//    rounded down to whole bytes.
//  * upstream.base_url must not contain user:password@ (credentials belong in
//    api_key) and may carry a path prefix (https://host/prefix).
//  * redis.url accepts exactly (parseRedisUrl(), the only parser of it: the
//    Redis client is given the parsed endpoint):
//      redis://[:PASSWORD@]HOST[:PORT][/DB]    HOST a name, IPv4 or [IPv6];
//                                               PORT 1-65535, default 6379;
//                                               DB 0-1048576, default 0
//      unix:PATH[?db=N][&password=PASSWORD]     also unix://PATH
//    PASSWORD (and PATH) may use %XX escapes (for '@', '/', '?', '&');
//    "default:PASSWORD@" is the same as ":PASSWORD@"; other ACL user names,
//    an empty password, other query parameters and rediss:// (TLS) are
//    rejected. No part of the URL is ever echoed in an error, since it may
//    hold the password.
//  * Client names follow the organisation-name rule [A-Za-z0-9_.-]{1,64}
//    (they appear in access logs).
#include "proxy/config_values.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/un.h>

#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdint>
#include <utility>

#include "proxy/text.h"

namespace wfp {
namespace {

bool allDigits(std::string_view s) { return !s.empty() && std::all_of(s.begin(), s.end(), isDigit); }

bool isHostName(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return isAlnum(c) || c == '.' || c == '-' || c == '_'; });
}

bool isIpv6(std::string_view s) {
  in6_addr addr{};
  return inet_pton(AF_INET6, std::string(s).c_str(), &addr) == 1;
}

// "0".."65535" (0 allowed: ephemeral ports in tests).
std::optional<uint16_t> parsePort(std::string_view s) {
  if (!allDigits(s) || s.size() > 5) return std::nullopt;
  unsigned v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  if (v > 65535) return std::nullopt;
  return static_cast<uint16_t>(v);
}

// A URL authority: "name", "1.2.3.4" or "[v6]", then ":port". Returns false
// when malformed; sets `host` (brackets stripped) and, when present, `port`.
bool parseAuthority(std::string_view authority, std::string_view& host, std::optional<uint16_t>& port) {
  std::string_view rest;
  if (!authority.empty() && authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return false;
    host = authority.substr(1, close - 1);
    if (!isIpv6(host)) return false;
    rest = authority.substr(close + 1);
  } else {
    size_t colon = authority.find(':');
    host = authority.substr(0, colon);
    if (!isHostName(host)) return false;
    rest = colon == std::string_view::npos ? std::string_view() : authority.substr(colon);
  }
  if (rest.empty()) return true;
  if (rest.front() != ':') return false;
  port = parsePort(rest.substr(1));
  return port.has_value();
}

// %XX escapes well formed, no control characters.
bool isValidPercentText(std::string_view s) {
  for (size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) return false;
    if (c == '%') {
      if (i + 2 >= s.size() || !isHexDigit(s[i + 1]) || !isHexDigit(s[i + 2])) return false;
      i += 2;
    }
  }
  return true;
}

int hexValue(char c) {
  if (isDigit(c)) return c - '0';
  return asciiLower(c) - 'a' + 10;
}

// Decodes text that passed isValidPercentText().
std::string percentDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%') {
      out += static_cast<char>(hexValue(s[i + 1]) * 16 + hexValue(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

// Validates and normalises upstream.base_url. Returns the problem, or nullopt
// with `out` set. Errors never echo the URL.
std::optional<std::string> baseUrlProblem(std::string_view url, std::string& out) {
  std::string_view rest;
  if (startsWithIgnoreCase(url, "http://")) {
    rest = url.substr(7);
  } else if (startsWithIgnoreCase(url, "https://")) {
    rest = url.substr(8);
  } else {
    return std::string("expected an http:// or https:// URL");
  }
  for (char c : url) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      return std::string("must not contain whitespace or control characters");
    }
  }
  if (url.find_first_of("?#") != std::string_view::npos) {
    return std::string("must not contain a query or fragment");
  }
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  if (authority.find('@') != std::string_view::npos) {
    return std::string("must not contain credentials (the organisation's api_key is sent instead)");
  }
  if (authority.empty()) return std::string("URL has no host");
  std::string_view host;
  std::optional<uint16_t> port;
  if (!parseAuthority(authority, host, port) || (port && *port == 0)) {
    return std::string("bad host or port in URL");
  }
  out.assign(url);
  if (out.size() > 1 && out.back() == '/' && slash != std::string_view::npos) out.pop_back();
  return std::nullopt;
}

// ---------------------------------------------------------------------------
// redis.url (the README's "Configuration" lists the accepted forms).

// "0".."kMaxRedisDb".
std::optional<int> parseRedisDb(std::string_view s) {
  if (!allDigits(s) || s.size() > 7) return std::nullopt;
  int v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  if (v > kMaxRedisDb) return std::nullopt;
  return v;
}

const std::string kRedisForms = "expected redis://[:password@]host[:port][/db] or unix:PATH[?db=N&password=...]";
const std::string kBadDb = "database must be a number from 0 to " + std::to_string(kMaxRedisDb);
const std::string kBadPassword = "malformed password (bad %-escape or control character)";

// redis://[[default]:PASSWORD@]HOST[:PORT][/DB]; `rest` follows "redis://".
std::optional<std::string> parseTcpRedisUrl(std::string_view rest, RedisUrl& out) {
  if (rest.find_first_of("?#") != std::string_view::npos) {
    return "query and fragment are not supported in redis:// URLs; " + kRedisForms;
  }
  // The DB path cannot hold '@': the last one ends the password, which may
  // therefore hold '@' and '/' unescaped.
  size_t at = rest.rfind('@');
  if (at != std::string_view::npos) {
    std::string_view userinfo = rest.substr(0, at);
    size_t colon = userinfo.find(':');
    if (colon == std::string_view::npos) {
      return std::string("a user name without a password is not supported; write redis://:PASSWORD@host");
    }
    // AUTH <password> authenticates the "default" user, so that one name is
    // the same as none; other ACL users would need AUTH <user> <password>.
    std::string_view user = userinfo.substr(0, colon);
    if (!user.empty() && user != "default") {
      return std::string("ACL user names are not supported (only the default user); write redis://:PASSWORD@host");
    }
    std::string_view password = userinfo.substr(colon + 1);
    if (password.empty()) return std::string("empty password");
    if (!isValidPercentText(password)) return kBadPassword;
    out.password = percentDecode(password);
    rest = rest.substr(at + 1);
  }
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view host;
  std::optional<uint16_t> port;
  if (!parseAuthority(authority, host, port)) return "bad host or port; " + kRedisForms;
  if (port && *port == 0) return std::string("port 0 is not a valid Redis port");
  out.host.assign(host);
  if (port) out.port = *port;
  if (slash != std::string_view::npos) {
    std::string_view db = rest.substr(slash + 1);
    if (!db.empty()) {
      auto v = parseRedisDb(db);
      if (!v) return kBadDb;
      out.db = *v;
    }
  }
  return std::nullopt;
}

// unix:PATH[?db=N][&password=PASSWORD] (also unix://PATH); `rest` follows "unix:".
std::optional<std::string> parseUnixRedisUrl(std::string_view rest, RedisUrl& out) {
  if (rest.substr(0, 2) == "//") rest.remove_prefix(2);
  size_t q = rest.find('?');
  std::string_view path = rest.substr(0, q);
  if (path.empty()) return "empty socket path; " + kRedisForms;
  if (!isValidPercentText(path)) return std::string("malformed socket path (bad %-escape or control character)");
  out.unix_path = percentDecode(path);
  if (out.unix_path.find('\0') != std::string::npos) return std::string("socket path holds a NUL byte");
  if (out.unix_path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return "socket path longer than " + std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes";
  }
  if (q == std::string_view::npos) return std::nullopt;
  std::string_view query = rest.substr(q + 1);
  bool seen_db = false;
  bool seen_password = false;
  for (;;) {
    size_t amp = query.find('&');
    std::string_view param = query.substr(0, amp);
    size_t eq = param.find('=');
    if (eq == std::string_view::npos) return "malformed query (expected db=N and/or password=...); " + kRedisForms;
    std::string_view key = param.substr(0, eq);
    std::string_view value = param.substr(eq + 1);
    if (key == "db") {
      if (seen_db) return std::string("db given twice");
      seen_db = true;
      auto v = parseRedisDb(value);
      if (!v) return kBadDb;
      out.db = *v;
    } else if (key == "password") {
      if (seen_password) return std::string("password given twice");
      seen_password = true;
      if (value.empty()) return std::string("empty password");
      if (!isValidPercentText(value)) return kBadPassword;
      out.password = percentDecode(value);
    } else {
      // The name is not echoed: a mistyped "pasword=" would show the password's neighbourhood.
      return std::string("unknown query parameter (only db and password are accepted)");
    }
    if (amp == std::string_view::npos) break;
    query = query.substr(amp + 1);
  }
  return std::nullopt;
}

}  // namespace

std::optional<size_t> parseSize(std::string_view text) {
  std::string_view s = trimSpace(text);
  size_t i = 0;
  while (i < s.size() && isDigit(s[i])) ++i;
  std::string_view whole = s.substr(0, i);
  if (whole.empty()) return std::nullopt;
  std::string_view frac;
  if (i < s.size() && s[i] == '.') {
    size_t start = ++i;
    while (i < s.size() && isDigit(s[i])) ++i;
    frac = s.substr(start, i - start);
    if (frac.empty()) return std::nullopt;
  }
  std::string_view unit = trimSpace(s.substr(i));

  struct Unit {
    std::string_view name;
    uint64_t factor;
  };
  static constexpr Unit kUnits[] = {
      {"", 1},
      {"b", 1},
      {"kb", 1000ULL},
      {"mb", 1000ULL * 1000},
      {"gb", 1000ULL * 1000 * 1000},
      {"tb", 1000ULL * 1000 * 1000 * 1000},
      {"kib", 1ULL << 10},
      {"mib", 1ULL << 20},
      {"gib", 1ULL << 30},
      {"tib", 1ULL << 40},
  };
  const Unit* found = nullptr;
  for (const Unit& u : kUnits) {
    if (equalsIgnoreCase(unit, u.name)) found = &u;
  }
  if (found == nullptr) return std::nullopt;
  if (!frac.empty() && found->factor == 1) return std::nullopt;  // fractional bytes

  using u128 = unsigned __int128;
  constexpr u128 kMax = static_cast<u128>(SIZE_MAX);
  u128 value = 0;
  for (char c : whole) {
    value = value * 10 + static_cast<unsigned>(c - '0');
    if (value > kMax) return std::nullopt;
  }
  value *= found->factor;
  if (value > kMax) return std::nullopt;
  if (!frac.empty()) {
    // Only the first 18 digits matter: beyond them the result is below a byte.
    frac = frac.substr(0, 18);
    u128 num = 0;
    u128 den = 1;
    for (char c : frac) {
      num = num * 10 + static_cast<unsigned>(c - '0');
      den *= 10;
    }
    value += num * found->factor / den;
    if (value > kMax) return std::nullopt;
  }
  return static_cast<size_t>(value);
}

std::optional<ListenAddress> parseListenAddress(std::string_view text) {
  ListenAddress addr;
  addr.text = std::string(text);
  if (text.substr(0, 5) == "unix:") {
    std::string_view path = text.substr(5);
    if (path.empty() || path.size() >= sizeof(sockaddr_un{}.sun_path)) return std::nullopt;
    if (path.find('\0') != std::string_view::npos) return std::nullopt;
    addr.kind = ListenAddress::Kind::Unix;
    addr.path = std::string(path);
    return addr;
  }
  std::string_view host;
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return std::nullopt;
    }
    host = text.substr(1, close - 1);
    if (!isIpv6(host)) return std::nullopt;
    port = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = text.substr(0, colon);
    if (!isHostName(host)) return std::nullopt;  // also rejects unbracketed IPv6
    port = text.substr(colon + 1);
  }
  auto p = parsePort(port);
  if (!p) return std::nullopt;
  addr.kind = ListenAddress::Kind::Tcp;
  addr.host = std::string(host);
  addr.port = *p;
  return addr;
}

std::optional<double> parseSeconds(std::string_view text) {
  double v = 0;
  auto r = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || r.ec != std::errc() || r.ptr != text.data() + text.size() || !std::isfinite(v)) {
    return std::nullopt;
  }
  if (v == 0) v = 0;  // -0 → 0
  return v;
}

std::optional<bool> parseBool(std::string_view text) {
  for (std::string_view yes : {"true", "yes", "on"}) {
    if (equalsIgnoreCase(text, yes)) return true;
  }
  for (std::string_view no : {"false", "no", "off"}) {
    if (equalsIgnoreCase(text, no)) return false;
  }
  return std::nullopt;
}

std::optional<std::string> parseBaseUrl(std::string_view url, std::string* error) {
  std::string out;
  if (auto problem = baseUrlProblem(url, out)) {
    if (error) *error = std::move(*problem);
    return std::nullopt;
  }
  return out;
}

std::optional<RedisUrl> parseRedisUrl(std::string_view url, std::string* error) {
  RedisUrl out;
  std::optional<std::string> problem;
  if (startsWithIgnoreCase(url, "rediss://")) {
    problem = "TLS to Redis is not supported (rediss://); use redis:// or unix:";
  } else if (startsWithIgnoreCase(url, "redis://")) {
    problem = parseTcpRedisUrl(url.substr(8), out);
  } else if (startsWithIgnoreCase(url, "unix:")) {
    problem = parseUnixRedisUrl(url.substr(5), out);
  } else {
    problem = kRedisForms;
  }
  if (problem) {
    if (error) *error = std::move(*problem);
    return std::nullopt;
  }
  return out;
}

std::optional<Sha256> parseHexDigest(std::string_view hex) {
  if (hex.size() != 64) return std::nullopt;
  Sha256 out{};
  for (size_t i = 0; i < 32; ++i) {
    uint8_t byte = 0;
    auto r = std::from_chars(hex.data() + 2 * i, hex.data() + 2 * i + 2, byte, 16);
    if (r.ec != std::errc() || r.ptr != hex.data() + 2 * i + 2) return std::nullopt;
    out[i] = byte;
  }
  return out;
}

bool isOrganisationName(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return isAlnum(c) || c == '_' || c == '.' || c == '-'; });
}

void AddrinfoFree::operator()(addrinfo* list) const {
  if (list) ::freeaddrinfo(list);
}

AddrinfoList resolveListenAddress(const ListenAddress& address, std::string* error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port = std::to_string(address.port);
  int rc = ::getaddrinfo(address.host.empty() ? nullptr : address.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    if (error) *error = "resolve " + address.host + ": " + ::gai_strerror(rc);
    return nullptr;
  }
  return AddrinfoList(res);
}

}  // namespace wfp
