// The grammars of single configuration values (docs/configuration.md): sizes, durations,
// booleans, listen addresses, the upstream base URL, redis.url, client key
// digests and names. Pure and YAML-free: each takes the text of one value
// (after ${ENV} expansion) and returns the value or nullopt; the loader
// (config.cc) turns a nullopt into a "file:line: key: ..." error.
//
// Errors and failures never echo a value: a secret (a key, a Redis
// password) may have been written in the wrong place.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

struct addrinfo;

namespace wfp {

using Sha256 = std::array<uint8_t, 32>;

struct ListenAddress {
  enum class Kind { Tcp, Unix };
  Kind kind = Kind::Tcp;
  std::string host;  // Tcp: "127.0.0.1", "::1", "0.0.0.0" (brackets stripped)
  uint16_t port = 0; // Tcp: 0 = ephemeral (tests)
  std::string path;  // Unix: socket path
  std::string text;  // as written, for logs
};

// Where Redis is, from redis.url (parseRedisUrl below).
struct RedisUrl {
  std::string host;       // TCP: a name, IPv4 or IPv6 (no brackets)
  int port = 6379;
  std::string unix_path;  // unix:PATH (percent-decoded)
  std::string password;   // percent-decoded; never logged
  int db = 0;
};

// Durations are seconds, fractional allowed, at most this (~31 years).
constexpr double kMaxSeconds = 1e9;
constexpr int kMaxRedisDb = 1 << 20;

// "1MiB" → 1048576; "512KiB", "2GiB", "100" (bytes), "10KB" (1000s). nullopt if malformed.
std::optional<size_t> parseSize(std::string_view text);
// A finite decimal number ("30", "0.5", "1e3"); -0 is 0. The range (at least
// 0 or above 0, at most kMaxSeconds) is the caller's, which names the key.
std::optional<double> parseSeconds(std::string_view text);
// true/false, yes/no, on/off, in any case.
std::optional<bool> parseBool(std::string_view text);
// "127.0.0.1:8080", "[::1]:8080", "localhost:80", "unix:/path". nullopt if malformed.
std::optional<ListenAddress> parseListenAddress(std::string_view text);

// upstream.base_url: http(s)://HOST[:PORT][/PREFIX], no credentials, query
// or fragment. Returns the URL without a trailing '/' after a path, or
// nullopt with `error` set (it never holds any part of the URL).
std::optional<std::string> parseBaseUrl(std::string_view url, std::string* error);

// The one grammar of redis.url, used by the loader (so --check-config) and
// nowhere else: the Redis client gets the parsed RedisConfig::endpoint.
//   redis://[[default]:PASSWORD@]HOST[:PORT][/DB]   unix:PATH[?db=N][&password=PASSWORD]
// nullopt and `error` when malformed; `error` never holds any part of the URL
// (it may hold a password).
std::optional<RedisUrl> parseRedisUrl(std::string_view url, std::string* error = nullptr);

// A client's key_sha256: exactly 64 hexadecimal digits, either case.
std::optional<Sha256> parseHexDigest(std::string_view hex);

// [A-Za-z0-9_.-]{1,64}: organisation and client names (they appear in
// access logs and metric labels).
bool isOrganisationName(std::string_view s);

// A TCP listen address resolved as the listener binds it (getaddrinfo:
// passive, any family, numeric port), so that `--check-config` and the start
// read a host name the same way. Null, with `error` set, when it does not
// resolve.
struct AddrinfoFree {
  void operator()(addrinfo* list) const;
};
using AddrinfoList = std::unique_ptr<addrinfo, AddrinfoFree>;
AddrinfoList resolveListenAddress(const ListenAddress& address, std::string* error);

}  // namespace wfp
