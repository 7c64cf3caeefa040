// libFuzzer harness for the configuration loader (scripts/fuzz builds and runs it).
//
// Checks, for every input fed to loadConfigString() with an environment in
// which nothing is set:
//   * it returns (no crash, no exception, no sanitizer report) with either a
//     Config or a non-empty list of errors, never both;
//   * every error has the form "fuzz.yaml:<line>: <message>";
//   * no error contains a secret planted in the input: the value of an
//     `api_key:` / `key:` entry, the password of a `url:` (or `redis:`)
//     entry's redis:// or unix: URL, when that value looks like a key, is long
//     enough to be recognisable and occurs nowhere else in the input (so an
//     error echoing some other scalar is not mistaken for a leak);
//   * an accepted config only holds visible-ASCII organisation keys;
//   * an accepted redis.url is one the Redis client can use as given: its
//     endpoint is what parseRedisUrl() (the one parser) makes of the URL,
//     with a port, db and socket path in range;
//   * parseRedisUrl() on the raw input never echoes the URL's password.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/spdlog.h>

#include "proxy/config.h"

namespace {

[[noreturn]] void die(const char* what, std::string_view detail) {
  std::fprintf(stderr, "config_fuzz: %s: %.*s\n", what, static_cast<int>(detail.size()), detail.data());
  std::abort();
}

size_t occurrences(std::string_view haystack, std::string_view needle) {
  size_t n = 0;
  for (size_t pos = haystack.find(needle); pos != std::string_view::npos; pos = haystack.find(needle, pos + 1)) ++n;
  return n;
}

std::string_view trimmed(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '"' || s.front() == '\'')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '"' ||
                        s.back() == '\'')) {
    s.remove_suffix(1);
  }
  return s;
}

bool isSecretChar(char c) { return c > 0x20 && c < 0x7f && c != '#' && c != '{' && c != '[' && c != ','; }

// The password of a redis:// or unix: URL, or empty.
std::string_view urlPassword(std::string_view url) {
  if (url.rfind("redis://:", 0) == 0) {
    std::string_view rest = url.substr(9);
    size_t at = rest.rfind('@');
    return at == std::string_view::npos ? std::string_view() : rest.substr(0, at);
  }
  size_t pw = url.find("password=");
  if (url.rfind("unix:", 0) == 0 && pw != std::string_view::npos) {
    std::string_view rest = url.substr(pw + 9);
    return rest.substr(0, rest.find('&'));
  }
  return {};
}

// Values the loader must treat as secrets: those a sensible file holds in a
// secret position. A line whose content (after indentation and "- ") is
// `api_key: V` or `key: V`: V; `url: U` or `redis: U` with a password in U:
// the password. V must look like a key (visible ASCII, no YAML syntax), be
// long enough to be recognisable, and occur exactly once in the input.
std::vector<std::string> plantedSecrets(std::string_view text) {
  std::vector<std::string> out;
  auto consider = [&](std::string_view value) {
    if (value.size() < 8 || value.find("${") != std::string_view::npos) return;
    for (char c : value) {
      if (!isSecretChar(c)) return;
    }
    if (occurrences(text, value) != 1) return;
    out.emplace_back(value);
  };
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    std::string_view line = text.substr(start, nl == std::string_view::npos ? std::string_view::npos : nl - start);
    start = nl == std::string_view::npos ? text.size() : nl + 1;
    while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
    if (line.rfind("- ", 0) == 0) line.remove_prefix(2);
    size_t colon = line.find(": ");
    if (colon == std::string_view::npos) continue;
    std::string_view key = line.substr(0, colon);
    std::string_view value = trimmed(line.substr(colon + 2));
    if (key == "api_key" || key == "key") {
      consider(value);
    } else if (key == "url" || key == "redis") {
      consider(urlPassword(value));
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const wfp::EnvLookup no_env = [](const std::string&) -> std::optional<std::string> { return std::nullopt; };
  wfp::ConfigResult result;
  try {
    // base_dir: a directory with nothing in it, so relative api_key_file
    // paths fail the same way on every machine.
    result = wfp::loadConfigString(text, "fuzz.yaml", no_env, "/nonexistent-wfp-fuzz");
  } catch (const std::exception& e) {
    die("loadConfigString threw", e.what());
  } catch (...) {
    die("loadConfigString threw", "a non-std exception");
  }

  if (result.config && !result.errors.empty()) die("both a config and errors", result.errors.front());
  if (!result.config && result.errors.empty()) die("neither a config nor an error", text);

  for (const std::string& e : result.errors) {
    if (e.rfind("fuzz.yaml:", 0) != 0) die("error without the file name", e);
    size_t i = 10;
    while (i < e.size() && e[i] >= '0' && e[i] <= '9') ++i;
    if (i == 10 || i + 1 >= e.size() || e[i] != ':' || e[i + 1] != ' ') die("error without a line number", e);
  }

  const std::vector<std::string> secrets = plantedSecrets(text);
  for (const std::string& e : result.errors) {
    for (const std::string& secret : secrets) {
      if (e.find(secret) != std::string::npos) die("an error message contains a secret", e);
    }
  }

  // The raw input as a URL: any error names no part of the password.
  std::string url_error;
  if (!wfp::parseRedisUrl(text, &url_error)) {
    // A password as plantedSecrets() would consider one: recognisable.
    std::string_view password = urlPassword(text);
    bool recognisable = password.size() >= 8 && occurrences(text, password) == 1 &&
                        std::all_of(password.begin(), password.end(), isSecretChar);
    if (recognisable && url_error.find(password) != std::string::npos) {
      die("a redis.url error contains the password", url_error);
    }
  }

  if (result.config && result.config->redis) {
    const wfp::RedisConfig& redis = *result.config->redis;
    auto again = wfp::parseRedisUrl(redis.url);
    if (!again) die("an accepted redis.url does not parse", "");
    const wfp::RedisUrl& e = redis.endpoint;
    if (again->host != e.host || again->port != e.port || again->unix_path != e.unix_path ||
        again->password != e.password || again->db != e.db) {
      die("the endpoint is not what the parser makes of redis.url", "");
    }
    if (e.host.empty() == e.unix_path.empty()) die("an endpoint with both or neither of host and socket", "");
    if (e.port < 1 || e.port > 65535 || e.db < 0 || e.db > wfp::kMaxRedisDb || e.unix_path.size() > 107) {
      die("an endpoint out of range", "");
    }
  }

  if (result.config) {
    for (const auto& org : result.config->organisations) {
      if (org.api_key.empty()) die("accepted an organisation without a key", org.name);
      for (unsigned char c : org.api_key) {
        if (c <= 0x20 || c >= 0x7f) die("accepted a key outside visible ASCII", org.name);
      }
    }
  }
  return 0;
}
