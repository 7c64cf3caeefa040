// Configuration loader: YAML text → immutable Config (SPEC §2).
//
// The loader walks the YAML tree once, section by section, and records every
// problem as (line, message) instead of stopping at the first one; the caller
// gets either a Config or all of the errors, sorted by line, formatted
// "file:line: message". Nothing here throws to the caller: yaml-cpp's
// exceptions are caught at the top.
//
// Rules the spec leaves open, decided here (README "Configuration"):
//  * ${VAR} / ${VAR:-default} are expanded in every scalar value, before type
//    conversion, never in mapping keys. ${VAR:-default} uses the default when
//    VAR is unset *or empty* (shell semantics); ${VAR} with VAR set to "" is
//    the empty string. Defaults may themselves contain ${...}. "$${" is a
//    literal "${"; any other '$' is literal. Values from the environment are
//    not expanded again.
//  * Booleans: true/false, yes/no, on/off (any case).
//  * Durations are seconds, fractional allowed, at most 1e9 (~31 years).
//  * Sizes: an integer number of bytes, or a number (fraction allowed) with
//    B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024),
//    unit case-insensitive, optional space before it; a fractional result is
//    rounded down to whole bytes.
//  * A null value (`key:` with nothing after it) of a section means an empty
//    section (all defaults); for `admin_listen` and `default_organisation` it
//    means the same as "" (no admin listener / no default organisation).
//  * Duplicate mapping keys are errors (yaml-cpp would silently keep one).
//  * Only one YAML document per file.
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
//  * Relative paths (api_key_file, log.access_log, unix:PATH of listen and
//    admin_listen) are relative to the config file's directory, so that
//    `--check-config` run from a shell and the start under systemd (working
//    directory /) name the same files. The unix: path of redis.url is a URL,
//    left as written.
//  * Values are parsed here with the parsers the start uses (log levels:
//    logging.h; access_log keywords: access_log.h); what the start opens is
//    opened by checkStart() (proxy.h), which --check-config runs too.
//  * Secrets (api_key, api_key_file contents, plain client keys) must be
//    visible ASCII (0x21-0x7e): they travel in an Authorization header, and a
//    stray newline in a key file is a mistake, not a key.
//  * Client names follow the organisation-name rule [A-Za-z0-9_.-]{1,64}
//    (they appear in access logs).
//  * cache.memory_max_bytes may be 0 (no in-process L1 in front of Redis),
//    except with `backend: memory`, where 0 would silently cache nothing.
//  * listen and admin_listen may not be the same TCP address (port 0 aside).
#include "proxy/config.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <sstream>
#include <utility>

#include "proxy/access_log.h"
#include "proxy/logging.h"
#include "proxy/text.h"

namespace wfp {
namespace {

constexpr double kMaxSeconds = 1e9;
constexpr size_t kMaxSecretFileBytes = size_t{64} * 1024;
constexpr size_t kMaxConfigFileBytes = size_t{16} * 1024 * 1024;
constexpr size_t kMaxEchoedValue = 64;

// ---------------------------------------------------------------------------
// Small pure helpers.

bool allDigits(std::string_view s) { return !s.empty() && std::all_of(s.begin(), s.end(), isDigit); }

// [A-Za-z0-9_.-]{1,64}: organisation and client names.
bool isName(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return isAlnum(c) || c == '_' || c == '.' || c == '-'; });
}

bool isEnvName(std::string_view s) {
  if (s.empty() || isDigit(s.front())) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return isAlnum(c) || c == '_'; });
}

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

size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t subst = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, subst});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

Sha256 sha256(std::string_view data) {
  Sha256 out{};
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr) != 1 ||
      len != out.size()) {
    // libcrypto failing to hash is not a configuration problem we can report.
    std::abort();
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

// A value as it may appear in a message: quoted, shortened, one line. A
// value holding ": " is other lines swallowed by an unclosed quote (a name
// written 'tutor.web with the client's `key: ...` after it): they may hold a
// secret, so it is described, not echoed.
std::string quote(std::string_view s) {
  if (s.find(": ") != std::string_view::npos) return "a value that spans other lines (an unclosed quote?)";
  static const char* kHex = "0123456789abcdef";
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < kMaxEchoedValue; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kMaxEchoedValue) out += "...";
  return out + "'";
}

// Where a mapping or a list was expected: says what was found without
// echoing it (a secret written in the wrong place must not reach the log).
std::string describeShape(const YAML::Node& n) {
  return n.Type() == YAML::NodeType::Scalar ? std::string("a single value") : std::string();
}

std::string describe(const YAML::Node& n);

std::string shapeOf(const YAML::Node& n) {
  std::string shape = describeShape(n);
  return shape.empty() ? describe(n) : shape;
}

std::string describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Null:
      return "an empty value";
    case YAML::NodeType::Scalar:
      return quote(n.Scalar());
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

std::string formatDouble(double d) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), d);
  return std::string(buf, r.ptr);
}

// Reads a whole (small) file. On failure returns strerror text.
std::optional<std::string> readFile(const std::string& path, size_t max_bytes, std::string& out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::string(std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    ::close(fd);
    return std::string(std::strerror(EISDIR));
  }
  out.clear();
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int saved = errno;
      ::close(fd);
      out.clear();
      return std::string(std::strerror(saved));
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > max_bytes) {
      ::close(fd);
      out.clear();
      return "file too large (more than " + std::to_string(max_bytes) + " bytes)";
    }
  }
  ::close(fd);
  return std::nullopt;
}

// Validates and normalises upstream.base_url. Returns the problem, or nullopt
// with `out` set. Errors never echo the URL.
std::optional<std::string> normaliseBaseUrl(std::string_view url, std::string& out) {
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

// `listen: [::1]:8080` unquoted is a YAML syntax error (a flow sequence
// followed by ":8080"); say what to do about it.
std::string ipv6Hint(std::string_view yaml, int line) {
  for (int i = 1; i < line && !yaml.empty(); ++i) {
    size_t nl = yaml.find('\n');
    yaml = nl == std::string_view::npos ? std::string_view() : yaml.substr(nl + 1);
  }
  std::string_view text = yaml.substr(0, yaml.find('\n'));
  size_t open = text.find(": [");
  if (open != std::string_view::npos && text.find("]:", open) != std::string_view::npos) {
    return " (quote IPv6 addresses: \"[::1]:8080\")";
  }
  return "";
}

// ---------------------------------------------------------------------------
// The loader.

struct Error {
  int line;
  std::string message;
};

struct Field {
  std::string name;
  YAML::Node key;
  YAML::Node value;
  int key_line = 1;
  int line = 1;  // the value's line; the key's when the value is null
};

// A mapping whose keys have been checked against the allowed set.
struct Section {
  std::string path;  // "" for the top level
  int line = 1;
  std::vector<Field> fields;

  const Field* find(std::string_view name) const {
    for (const Field& f : fields) {
      if (f.name == name) return &f;
    }
    return nullptr;
  }
};

std::string join(const std::string& path, std::string_view key) {
  if (path.empty()) return std::string(key);
  return path + "." + std::string(key);
}

int lineOf(const YAML::Node& n, int fallback) {
  const YAML::Mark m = n.Mark();
  if (m.is_null() || m.line < 0) return fallback;
  return m.line + 1;
}

class Loader {
 public:
  Loader(std::string name, const EnvLookup& env, std::string base_dir)
      : name_(std::move(name)), env_(env), base_dir_(std::move(base_dir)) {}

  ConfigResult run(std::string_view yaml);

 private:
  void error(int line, std::string message) { errors_.push_back({line, std::move(message)}); }

  ConfigResult finish(Config* config);

  std::optional<Section> section(const YAML::Node& node, const std::string& path, int line,
                                 std::initializer_list<std::string_view> allowed);
  // The sub-section `key` of `parent`; an absent key gives an empty Section.
  std::optional<Section> subsection(const Section& parent, std::string_view key,
                                    std::initializer_list<std::string_view> allowed);

  std::optional<std::string> expand(std::string_view text, int line, const std::string& path, int depth = 0);
  // The scalar text of a field after ${} expansion; reports and returns
  // nullopt for non-scalars and failed expansion.
  std::optional<std::string> text(const Field& f, const std::string& path, const char* expected);

  // Typed getters: assign `out` and return true when the field is present
  // and valid; leave `out` alone otherwise (absent: no error).
  bool getString(const Section& s, std::string_view key, std::string& out);
  bool getBool(const Section& s, std::string_view key, bool& out);
  bool getInt(const Section& s, std::string_view key, int& out, long long min);
  bool getSeconds(const Section& s, std::string_view key, double& out, bool zero_ok);
  bool getSize(const Section& s, std::string_view key, size_t& out, size_t min);
  bool getSeconds(const Field& f, const std::string& path, double& out, bool zero_ok);
  bool getInt(const Field& f, const std::string& path, int& out, long long min);
  bool intFromText(const std::string& t, int line, const std::string& path, int& out, long long min);

  void loadLog(const Section& top, LogConfig& log);
  void loadUpstream(const Section& top, UpstreamConfig& up);
  void loadLimits(const Section& top, LimitsConfig& limits);
  void loadRedis(const Section& top, std::optional<RedisConfig>& redis);
  void loadCache(const Section& top, CacheConfig& cache);
  void loadRateLimit(const Section& top, RateLimitConfig& rl);
  void loadOrganisations(const Section& top, Config& config);
  void loadOrganisation(const YAML::Node& node, size_t index, int fallback_line, Organisation& org,
                        std::map<std::string, int>& names);
  void loadApiKey(const Section& s, const std::string& path, Organisation& org);
  void loadClients(const Section& s, const std::string& path, Organisation& org);

  // `expanded`: the field's text when the caller has already expanded it.
  std::optional<ListenAddress> listenAddress(const Field& f, const std::string& path,
                                             std::optional<std::string> expanded = std::nullopt);

  std::string name_;
  const EnvLookup& env_;
  std::string base_dir_;
  std::vector<Error> errors_;

  struct DigestOwner {
    std::string path;
    int line;
  };
  std::map<Sha256, DigestOwner> digests_;
  int cache_backend_line_ = 0;
  int shared_line_ = 0;
  std::map<std::string, int, std::less<>> lines_;  // Config::lines

  // A path from the configuration as the start opens it: relative paths are
  // relative to the config file's directory, never to the working directory
  // (which differs between `--check-config` in a shell and systemd's start).
  std::string resolvePath(std::string_view path) const {
    if (!path.empty() && path.front() == '/') return std::string(path);
    return base_dir_ + "/" + std::string(path);
  }
};

ConfigResult Loader::finish(Config* config) {
  ConfigResult result;
  if (errors_.empty() && config != nullptr) {
    result.config = std::make_shared<const Config>(std::move(*config));
    return result;
  }
  std::stable_sort(errors_.begin(), errors_.end(),
                   [](const Error& a, const Error& b) { return a.line < b.line; });
  for (const Error& e : errors_) {
    result.errors.push_back(name_ + ":" + std::to_string(e.line) + ": " + e.message);
  }
  return result;
}

std::optional<Section> Loader::section(const YAML::Node& node, const std::string& path, int line,
                                       std::initializer_list<std::string_view> allowed) {
  Section s;
  s.path = path;
  s.line = line;
  if (node.IsNull()) return s;
  if (!node.IsMap()) {
    error(line,
          (path.empty() ? std::string("top level") : path) + ": expected a mapping, got " + shapeOf(node));
    return std::nullopt;
  }
  for (auto it = node.begin(); it != node.end(); ++it) {
    // Copies: the iterator's pair is a temporary (yaml-cpp iterator_value).
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    int key_line = lineOf(key, line);
    if (!key.IsScalar()) {
      error(key_line, (path.empty() ? std::string("top level") : path) + ": keys must be plain strings");
      continue;
    }
    const std::string& name = key.Scalar();
    bool known = std::find(allowed.begin(), allowed.end(), name) != allowed.end();
    if (!known) {
      // A "key" that holds ": " or a line break is other lines swallowed by an
      // unclosed quote; they may include a key's value: not echoed.
      bool swallowed = name.find(": ") != std::string::npos || name.find('\n') != std::string::npos ||
                       name.find('\r') != std::string::npos;
      std::string msg = swallowed ? "unknown key (a quoted name that spans other lines: an unclosed quote?)"
                                  : "unknown key " + quote(name);
      msg += path.empty() ? std::string(" at top level") : " in " + path;
      size_t best = 3;
      std::string_view suggestion;
      for (std::string_view candidate : allowed) {
        size_t d = editDistance(name, candidate);
        if (d < best && d < name.size()) {
          best = d;
          suggestion = candidate;
        }
      }
      if (!suggestion.empty()) msg += "; did you mean '" + std::string(suggestion) + "'?";
      error(key_line, std::move(msg));
      continue;
    }
    if (const Field* prev = s.find(name)) {
      error(key_line, "duplicate key " + quote(name) +
                          (path.empty() ? std::string(" at top level") : " in " + path) + " (first at line " +
                          std::to_string(prev->key_line) + ")");
      continue;
    }
    Field f;
    f.name = name;
    f.key = key;
    f.value = value;
    f.key_line = key_line;
    f.line = value.IsNull() ? key_line : lineOf(value, key_line);
    s.fields.push_back(std::move(f));
  }
  return s;
}

std::optional<Section> Loader::subsection(const Section& parent, std::string_view key,
                                          std::initializer_list<std::string_view> allowed) {
  const Field* f = parent.find(key);
  if (f == nullptr) {
    Section s;
    s.path = join(parent.path, key);
    s.line = parent.line;
    return s;
  }
  // Missing keys of a section are reported on the section's own key line.
  auto s = section(f->value, join(parent.path, key), f->line, allowed);
  if (s) s->line = f->key_line;
  return s;
}

std::optional<std::string> Loader::expand(std::string_view in, int line, const std::string& path, int depth) {
  if (depth > 8) {
    error(line, path + ": ${...} defaults nested too deeply");
    return std::nullopt;
  }
  std::string out;
  out.reserve(in.size());
  size_t i = 0;
  while (i < in.size()) {
    if (in[i] != '$') {
      out += in[i++];
      continue;
    }
    if (in.substr(i, 3) == "$${") {
      out += "${";
      i += 3;
      continue;
    }
    if (i + 1 >= in.size() || in[i + 1] != '{') {
      out += in[i++];
      continue;
    }
    // Find the matching '}', allowing ${...} inside a default.
    size_t j = i + 2;
    int open = 1;
    while (j < in.size()) {
      if (in[j] == '$' && j + 1 < in.size() && in[j + 1] == '{') {
        ++open;
        j += 2;
        continue;
      }
      if (in[j] == '}' && --open == 0) break;
      ++j;
    }
    if (j >= in.size()) {
      error(line, path + ": unterminated ${ (write $${ for a literal ${)");
      return std::nullopt;
    }
    std::string_view inner = in.substr(i + 2, j - i - 2);
    size_t sep = inner.find(":-");
    std::string_view var = inner.substr(0, sep);
    if (!isEnvName(var)) {
      // The text is not echoed: in a secret field it may be the secret.
      error(line, path + ": malformed ${...} reference (expected ${NAME} or ${NAME:-default})");
      return std::nullopt;
    }
    std::optional<std::string> value = env_ ? env_(std::string(var)) : std::nullopt;
    if (sep == std::string_view::npos) {
      if (!value) {
        error(line, path + ": environment variable " + std::string(var) + " is not set");
        return std::nullopt;
      }
      out += *value;
    } else if (value && !value->empty()) {
      out += *value;
    } else {
      auto def = expand(inner.substr(sep + 2), line, path, depth + 1);
      if (!def) return std::nullopt;
      out += *def;
    }
    i = j + 1;
  }
  return out;
}

std::optional<std::string> Loader::text(const Field& f, const std::string& path, const char* expected) {
  if (!f.value.IsScalar()) {
    error(f.line, path + ": expected " + expected + ", got " + describe(f.value));
    return std::nullopt;
  }
  return expand(f.value.Scalar(), f.line, path);
}

bool Loader::getString(const Section& s, std::string_view key, std::string& out) {
  const Field* f = s.find(key);
  if (f == nullptr) return false;
  auto t = text(*f, join(s.path, key), "a string");
  if (!t) return false;
  out = std::move(*t);
  return true;
}

bool Loader::getBool(const Section& s, std::string_view key, bool& out) {
  const Field* f = s.find(key);
  if (f == nullptr) return false;
  std::string path = join(s.path, key);
  auto t = text(*f, path, "true or false");
  if (!t) return false;
  for (std::string_view yes : {"true", "yes", "on"}) {
    if (equalsIgnoreCase(*t, yes)) {
      out = true;
      return true;
    }
  }
  for (std::string_view no : {"false", "no", "off"}) {
    if (equalsIgnoreCase(*t, no)) {
      out = false;
      return true;
    }
  }
  error(f->line, path + ": expected true or false, got " + quote(*t));
  return false;
}

bool Loader::intFromText(const std::string& t, int line, const std::string& path, int& out, long long min) {
  long long v = 0;
  auto r = std::from_chars(t.data(), t.data() + t.size(), v);
  if (t.empty() || r.ptr != t.data() + t.size() ||
      (r.ec != std::errc() && r.ec != std::errc::result_out_of_range)) {
    error(line, path + ": expected an integer, got " + quote(t));
    return false;
  }
  if (r.ec == std::errc::result_out_of_range || v > INT_MAX) {
    error(line, path + ": must be at most " + std::to_string(INT_MAX) + ", got " + quote(t));
    return false;
  }
  if (v < min) {
    error(line, path + ": must be at least " + std::to_string(min) + ", got " + std::to_string(v));
    return false;
  }
  out = static_cast<int>(v);
  return true;
}

bool Loader::getInt(const Field& f, const std::string& path, int& out, long long min) {
  auto t = text(f, path, "an integer");
  return t && intFromText(*t, f.line, path, out, min);
}

bool Loader::getInt(const Section& s, std::string_view key, int& out, long long min) {
  const Field* f = s.find(key);
  if (f == nullptr) return false;
  return getInt(*f, join(s.path, key), out, min);
}

bool Loader::getSeconds(const Field& f, const std::string& path, double& out, bool zero_ok) {
  auto t = text(f, path, "a number of seconds");
  if (!t) return false;
  double v = 0;
  auto r = std::from_chars(t->data(), t->data() + t->size(), v);
  if (t->empty() || r.ec != std::errc() || r.ptr != t->data() + t->size() || !std::isfinite(v)) {
    error(f.line, path + ": expected a number, got " + quote(*t));
    return false;
  }
  if (v == 0) v = 0;  // -0 → 0
  if (zero_ok ? v < 0 : v <= 0) {
    error(f.line, path + (zero_ok ? ": must be at least 0, got " : ": must be greater than 0, got ") + *t);
    return false;
  }
  if (v > kMaxSeconds) {
    error(f.line, path + ": must be at most " + formatDouble(kMaxSeconds) + " seconds, got " + quote(*t));
    return false;
  }
  out = v;
  return true;
}

bool Loader::getSeconds(const Section& s, std::string_view key, double& out, bool zero_ok) {
  const Field* f = s.find(key);
  if (f == nullptr) return false;
  return getSeconds(*f, join(s.path, key), out, zero_ok);
}

bool Loader::getSize(const Section& s, std::string_view key, size_t& out, size_t min) {
  const Field* f = s.find(key);
  if (f == nullptr) return false;
  std::string path = join(s.path, key);
  auto t = text(*f, path, "a size");
  if (!t) return false;
  auto v = parseSize(*t);
  if (!v) {
    error(f->line, path + ": expected a size (bytes, or a number with B, KB, MB, GB, KiB, MiB or GiB), got " +
                       quote(*t));
    return false;
  }
  if (*v < min) {
    error(f->line, path + ": must be at least " + std::to_string(min) + " bytes, got " + quote(*t));
    return false;
  }
  out = *v;
  return true;
}

std::optional<ListenAddress> Loader::listenAddress(const Field& f, const std::string& path,
                                                   std::optional<std::string> expanded) {
  if (f.value.IsSequence()) {
    // `listen: [::1]:8080` unquoted is a YAML flow sequence.
    error(f.line, path + ": expected an address, got a list (quote IPv6 addresses: \"[::1]:8080\")");
    return std::nullopt;
  }
  if (!expanded) expanded = text(f, path, "an address");
  if (!expanded) return std::nullopt;
  auto addr = parseListenAddress(*expanded);
  if (addr && addr->kind == ListenAddress::Kind::Unix) {
    addr->path = resolvePath(addr->path);
    if (addr->path.size() >= sizeof(sockaddr_un{}.sun_path)) {
      error(f.line, path + ": socket path " + quote(addr->path) + " is longer than " +
                        std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes");
      return std::nullopt;
    }
  }
  if (!addr) {
    error(f.line, path + ": expected host:port, [IPv6]:port or unix:PATH (at most 107 bytes), got " +
                      quote(*expanded));
    return std::nullopt;
  }
  lines_[path] = f.line;
  return addr;
}

// The document structure of a YAML stream, from yaml-cpp's event parser,
// without building nodes: where each document starts, and whether it holds
// anything.
//
// Why not YAML::LoadAll(): yaml-cpp 0.7 (Debian 12) never returns from it
// when a document starts with a token no node can start with, a flow entry
// ',' (also after a tag, an anchor, a BOM or a NUL; yaml-cpp#1040, fixed
// upstream by PR #1319). SingleDocParser::HandleNode() reports an empty node
// without consuming that token, so each Parser::HandleNextDocument() call
// returns, but the next call finds the same token: LoadAll()'s "while there
// is a next document" loop pushes empty documents until memory runs out.
// Here the parser is called a bounded number of times, and a document that
// starts where the previous one started (no token consumed) is an error.
class DocumentProbe final : public YAML::EventHandler {
 public:
  struct Document {
    YAML::Mark start;  // the document's first token ("---" or its root node)
    YAML::Mark root;   // its root node
    bool empty = true;
  };
  std::vector<Document> documents;

  void OnDocumentStart(const YAML::Mark& mark) override {
    documents.push_back(Document{mark, mark, true});
    depth_ = 0;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { node(mark, true); }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { node(mark, false); }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t, const std::string&) override {
    node(mark, false);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {
    node(mark, false);
    ++depth_;
  }
  void OnSequenceEnd() override { --depth_; }
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
    node(mark, false);
    ++depth_;
  }
  void OnMapEnd() override { --depth_; }

 private:
  void node(const YAML::Mark& mark, bool null) {
    if (depth_ != 0 || documents.empty()) return;
    documents.back().root = mark;
    documents.back().empty = null;
  }
  int depth_ = 0;
};

int markLine(const YAML::Mark& m) { return m.is_null() || m.line < 0 ? 1 : m.line + 1; }

// The byte at a mark's line and column (columns count characters: exact for
// the ASCII that starts a line in practice), or '\0'.
char charAt(std::string_view yaml, const YAML::Mark& m) {
  if (m.is_null() || m.line < 0 || m.column < 0) return '\0';
  for (int i = 0; i < m.line; ++i) {
    size_t nl = yaml.find('\n');
    if (nl == std::string_view::npos) return '\0';
    yaml.remove_prefix(nl + 1);
  }
  if (m.line == 0 && yaml.substr(0, 3) == "\xEF\xBB\xBF") yaml.remove_prefix(3);
  auto column = static_cast<size_t>(m.column);
  return column < yaml.size() ? yaml[column] : '\0';
}

// Checks that the stream holds at most one document with content (empty
// ones after it, e.g. from a trailing "---", are harmless). Throws yaml-cpp's
// exceptions for syntax errors anywhere in the stream, as LoadAll() did.
// Calls the parser at most kProbedDocuments times, so it returns on any input.
std::optional<Error> checkSingleDocument(std::string_view yaml) {
  constexpr size_t kProbedDocuments = 4;
  std::stringstream in{std::string(yaml)};
  YAML::Parser parser(in);
  DocumentProbe probe;
  while (probe.documents.size() < kProbedDocuments) {
    if (!parser.HandleNextDocument(probe)) return std::nullopt;  // the end of the stream
    const size_t n = probe.documents.size();
    if (n < 2) continue;
    const DocumentProbe::Document& doc = probe.documents[n - 1];
    if (doc.start.pos == probe.documents[n - 2].start.pos) {
      // The parser is stuck on a token it cannot start a node with.
      const char* what = charAt(yaml, doc.start) == ',' ? "','" : "token";
      return Error{markLine(doc.start), std::string("unexpected ") + what + " at the start of a document"};
    }
    if (!doc.empty) return Error{markLine(doc.root), "more than one YAML document; expected exactly one"};
  }
  return Error{markLine(probe.documents.back().start), "more than one YAML document; expected exactly one"};
}

ConfigResult Loader::run(std::string_view yaml) {
  YAML::Node root;
  std::optional<Error> structure;
  try {
    structure = checkSingleDocument(yaml);
    if (structure) error(structure->line, structure->message);  // and go on with the first document's errors
    // The first document only: one HandleNextDocument() call.
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    int line = e.mark.is_null() ? 1 : e.mark.line + 1;
    error(line, e.msg + ipv6Hint(yaml, line));
    return finish(nullptr);
  } catch (const std::exception& e) {
    error(1, std::string("cannot parse YAML: ") + e.what());
    return finish(nullptr);
  }
  if (!root || root.IsNull()) {
    if (!structure) error(1, "empty configuration (at least `organisations` is required)");
    return finish(nullptr);
  }
  int root_line = lineOf(root, 1);
  if (!root.IsMap()) {
    error(root_line, "expected a mapping at the top level, got " + shapeOf(root));
    return finish(nullptr);
  }

  Config config;
  config.source = name_;
  config.listen = *parseListenAddress("127.0.0.1:8080");
  config.admin_listen = parseListenAddress("127.0.0.1:9464");

  auto top = section(root, "", root_line,
                     {"listen", "admin_listen", "shutdown_grace_s", "log", "upstream", "limits", "redis",
                      "cache", "rate_limit", "default_organisation", "unknown_keys", "organisations"});
  if (!top) return finish(nullptr);

  if (const Field* f = top->find("listen")) {
    if (auto a = listenAddress(*f, "listen")) config.listen = std::move(*a);
  }
  if (const Field* f = top->find("admin_listen")) {
    // "" (or nothing, or an empty ${VAR:-}) means: admin routes on `listen`.
    if (f->value.IsNull()) {
      config.admin_listen.reset();
    } else if (f->value.IsSequence()) {
      listenAddress(*f, "admin_listen");  // reports the unquoted-IPv6 hint
    } else if (auto t = text(*f, "admin_listen", "an address or \"\"")) {
      if (t->empty()) {
        config.admin_listen.reset();
      } else {
        config.admin_listen = listenAddress(*f, "admin_listen", std::move(t));
        const auto& a = config.admin_listen;
        const auto& l = config.listen;
        if (a && a->kind == l.kind && a->host == l.host && a->port == l.port && a->path == l.path &&
            (l.kind == ListenAddress::Kind::Unix || l.port != 0)) {
          error(f->line,
                "admin_listen: same address as listen (write \"\" to serve the admin routes on listen)");
        }
      }
    }
  }
  getSeconds(*top, "shutdown_grace_s", config.shutdown_grace_s, true);

  loadLog(*top, config.log);
  loadUpstream(*top, config.upstream);
  loadLimits(*top, config.limits);
  loadRedis(*top, config.redis);
  loadCache(*top, config.cache);
  loadRateLimit(*top, config.rate_limit);

  if (const Field* f = top->find("unknown_keys")) {
    if (auto t = text(*f, "unknown_keys", "reject or pass_through")) {
      if (*t == "reject") {
        config.unknown_keys = Config::UnknownKeys::Reject;
      } else if (*t == "pass_through") {
        config.unknown_keys = Config::UnknownKeys::PassThrough;
      } else {
        error(f->line, "unknown_keys: expected reject or pass_through, got " + quote(*t));
      }
    }
  }

  loadOrganisations(*top, config);
  config.lines = lines_;

  // Cross-field checks.
  if (config.cache.backend == CacheConfig::Backend::Redis && !config.redis) {
    error(cache_backend_line_, "cache.backend: redis needs a `redis` section");
  }
  if (config.rate_limit.shared && !config.redis) {
    error(shared_line_, "rate_limit.shared: true needs a `redis` section");
  }
  if (const Field* f = top->find("default_organisation")) {
    if (!f->value.IsNull()) {
      if (auto t = text(*f, "default_organisation", "an organisation name")) {
        if (!t->empty()) {
          if (config.findOrganisation(*t) == nullptr) {
            error(f->line, "default_organisation: " + quote(*t) + " is not one of the organisations");
          }
          config.default_organisation = std::move(*t);
        }
      }
    }
  }
  return finish(&config);
}

void Loader::loadLog(const Section& top, LogConfig& log) {
  auto s = subsection(top, "log", {"level", "access_log"});
  if (!s) return;
  if (const Field* f = s->find("level")) {
    if (auto t = text(*f, "log.level", "a log level")) {
      if (parseLogLevel(*t)) {  // the parser main.cc and a reload use
        log.level = *t;
      } else {
        error(f->line, "log.level: expected trace, debug, info, warn or error, got " + quote(*t));
      }
    }
  }
  if (const Field* f = s->find("access_log")) {
    if (auto t = text(*f, "log.access_log", "stderr, stdout, off or a file path")) {
      if (t->empty()) {
        error(f->line, "log.access_log: expected stderr, stdout, off or a file path, got ''");
      } else {
        log.access_log = AccessLog::isStream(*t) ? std::move(*t) : resolvePath(*t);
        lines_["log.access_log"] = f->line;
      }
    }
  }
}

void Loader::loadUpstream(const Section& top, UpstreamConfig& up) {
  auto s = subsection(top, "upstream",
                      {"base_url", "timeout_s", "connect_timeout_s", "max_connections", "tls_verify"});
  if (!s) return;
  if (const Field* f = s->find("base_url")) {
    if (auto t = text(*f, "upstream.base_url", "a URL")) {
      std::string url;
      if (auto problem = normaliseBaseUrl(*t, url)) {
        error(f->line, "upstream.base_url: " + *problem);
      } else {
        up.base_url = std::move(url);
      }
    }
  }
  getSeconds(*s, "timeout_s", up.timeout_s, false);
  getSeconds(*s, "connect_timeout_s", up.connect_timeout_s, false);
  getInt(*s, "max_connections", up.max_connections, 1);
  getBool(*s, "tls_verify", up.tls_verify);
}

void Loader::loadLimits(const Section& top, LimitsConfig& limits) {
  auto s = subsection(top, "limits", {"max_body_bytes", "client_header_timeout_s", "max_client_connections"});
  if (!s) return;
  getSize(*s, "max_body_bytes", limits.max_body_bytes, 1);
  getSeconds(*s, "client_header_timeout_s", limits.client_header_timeout_s, false);
  getInt(*s, "max_client_connections", limits.max_client_connections, 1);
}

void Loader::loadRedis(const Section& top, std::optional<RedisConfig>& redis) {
  if (top.find("redis") == nullptr) return;
  auto s = subsection(top, "redis", {"url", "key_prefix", "timeout_ms"});
  if (!s) {
    redis.emplace();  // present but malformed: still "present" for cross-checks
    return;
  }
  RedisConfig rc;
  if (const Field* f = s->find("url")) {
    // text() echoes nothing of a scalar, and the problems name no part of it.
    if (auto t = text(*f, "redis.url", "a URL")) {
      std::string problem;
      if (auto endpoint = parseRedisUrl(*t, &problem)) {
        rc.url = std::move(*t);
        rc.endpoint = std::move(*endpoint);
      } else {
        error(f->line, "redis.url: " + problem);
      }
    }
  } else {
    error(s->line, "redis: url is required");
  }
  getString(*s, "key_prefix", rc.key_prefix);
  getInt(*s, "timeout_ms", rc.timeout_ms, 1);
  redis = std::move(rc);
}

void Loader::loadCache(const Section& top, CacheConfig& cache) {
  auto s = subsection(top, "cache",
                      {"backend", "ttl_s", "memory_max_bytes", "streams", "stale_if_error_s", "workflows"});
  if (!s) return;
  if (const Field* f = s->find("backend")) {
    cache_backend_line_ = f->line;
    if (auto t = text(*f, "cache.backend", "memory, redis or off")) {
      if (*t == "memory") {
        cache.backend = CacheConfig::Backend::Memory;
      } else if (*t == "redis") {
        cache.backend = CacheConfig::Backend::Redis;
      } else if (*t == "off") {
        cache.backend = CacheConfig::Backend::Off;
      } else {
        error(f->line, "cache.backend: expected memory, redis or off, got " + quote(*t));
      }
    }
  }
  getSeconds(*s, "ttl_s", cache.ttl_s, true);
  if (getSize(*s, "memory_max_bytes", cache.memory_max_bytes, 0) && cache.memory_max_bytes == 0 &&
      cache.backend == CacheConfig::Backend::Memory) {
    error(s->find("memory_max_bytes")->line,
          "cache.memory_max_bytes: 0 with backend memory would cache nothing (use backend: off)");
  }
  getBool(*s, "streams", cache.streams);
  getSeconds(*s, "stale_if_error_s", cache.stale_if_error_s, true);

  const Field* wf = s->find("workflows");
  if (wf == nullptr || wf->value.IsNull()) return;
  if (!wf->value.IsMap()) {
    error(wf->line, "cache.workflows: expected a mapping of workflow id to {ttl_s, stale_if_error_s}, got " +
                        describe(wf->value));
    return;
  }
  for (auto it = wf->value.begin(); it != wf->value.end(); ++it) {
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    int key_line = lineOf(key, wf->line);
    if (!key.IsScalar() || !isValidWorkflowId(key.Scalar())) {
      error(key_line,
            "cache.workflows: " + (key.IsScalar() ? quote(key.Scalar()) : std::string("a non-string key")) +
                " is not a workflow id ([A-Za-z0-9_-]{1,128})");
      continue;
    }
    const std::string& id = key.Scalar();
    if (cache.workflows.count(id) != 0) {
      error(key_line, "cache.workflows: duplicate workflow " + quote(id));
      continue;
    }
    int value_line = value.IsNull() ? key_line : lineOf(value, key_line);
    auto entry = section(value, "cache.workflows." + id, value_line, {"ttl_s", "stale_if_error_s"});
    if (!entry) continue;
    WorkflowCacheOverride o;
    double v = 0;
    if (getSeconds(*entry, "ttl_s", v, true)) o.ttl_s = v;
    if (getSeconds(*entry, "stale_if_error_s", v, true)) o.stale_if_error_s = v;
    cache.workflows.emplace(id, o);
  }
}

void Loader::loadRateLimit(const Section& top, RateLimitConfig& rl) {
  auto s = subsection(top, "rate_limit", {"shared", "queue_max", "max_wait_s", "retry_429"});
  if (!s) return;
  if (const Field* f = s->find("shared")) shared_line_ = f->line;
  getBool(*s, "shared", rl.shared);
  getInt(*s, "queue_max", rl.queue_max, 1);
  getSeconds(*s, "max_wait_s", rl.max_wait_s, false);
  getInt(*s, "retry_429", rl.retry_429, 0);
}

void Loader::loadOrganisations(const Section& top, Config& config) {
  const Field* f = top.find("organisations");
  if (f == nullptr) {
    error(top.line, "organisations: required (a list of at least one organisation)");
    return;
  }
  if (!f->value.IsSequence()) {
    error(f->line, "organisations: expected a list of organisations, got " + shapeOf(f->value));
    return;
  }
  if (f->value.size() == 0) {
    error(f->line, "organisations: at least one organisation is required");
    return;
  }
  std::map<std::string, int> names;
  size_t index = 0;
  for (auto it = f->value.begin(); it != f->value.end(); ++it, ++index) {
    Organisation org;
    loadOrganisation(*it, index, f->line, org, names);
    config.organisations.push_back(std::move(org));
  }
}

void Loader::loadOrganisation(const YAML::Node& node, size_t index, int fallback_line, Organisation& org,
                              std::map<std::string, int>& names) {
  std::string path = "organisations[" + std::to_string(index) + "]";
  int line = lineOf(node, fallback_line);
  if (node.IsNull()) {
    error(line, path + ": expected a mapping with name and api_key, got an empty value");
    return;
  }
  auto s = section(node, path, line, {"name", "api_key", "api_key_file", "rate_limit", "clients"});
  if (!s) return;

  if (const Field* f = s->find("name")) {
    if (auto t = text(*f, path + ".name", "a name")) {
      if (!isName(*t)) {
        error(f->line, path + ".name: expected [A-Za-z0-9_.-]{1,64}, got " + quote(*t));
      } else if (auto prev = names.find(*t); prev != names.end()) {
        error(f->line, path + ".name: duplicate organisation " + quote(*t) + " (first at line " +
                           std::to_string(prev->second) + ")");
      } else {
        names.emplace(*t, f->line);
        org.name = *t;
        path = "organisations." + *t;
        s->path = path;
      }
    }
  } else {
    error(s->line, path + ": name is required");
  }

  loadApiKey(*s, path, org);

  auto rl = subsection(*s, "rate_limit", {"requests", "window_s", "max_concurrent"});
  if (rl) {
    if (const Field* f = rl->find("requests")) {
      const std::string field = rl->path + ".requests";
      if (auto t = text(*f, field, "an integer or auto")) {
        if (*t == "auto") {
          org.rate_limit.requests_auto = true;
        } else {
          intFromText(*t, f->line, field, org.rate_limit.requests, 1);
        }
      }
    }
    getSeconds(*rl, "window_s", org.rate_limit.window_s, false);
    getInt(*rl, "max_concurrent", org.rate_limit.max_concurrent, 1);
  }

  loadClients(*s, path, org);
}

void Loader::loadApiKey(const Section& s, const std::string& path, Organisation& org) {
  const Field* key = s.find("api_key");
  const Field* file = s.find("api_key_file");
  if (key != nullptr && file != nullptr) {
    error(file->key_line, path + ": set either api_key or api_key_file, not both");
    return;
  }
  if (key == nullptr && file == nullptr) {
    error(s.line, path + ": api_key (or api_key_file) is required");
    return;
  }
  if (key != nullptr) {
    const std::string field = path + ".api_key";
    auto t = text(*key, field, "a string");
    if (!t) return;
    if (t->empty()) {
      error(key->line, field + ": is empty");
    } else if (!isVisibleAscii(*t)) {
      error(key->line, field + ": contains whitespace or characters outside visible ASCII");
    } else {
      org.api_key = std::move(*t);
    }
    return;
  }
  const std::string field = path + ".api_key_file";
  auto t = text(*file, field, "a file path");
  if (!t) return;
  if (t->empty()) {
    error(file->line, field + ": empty path");
    return;
  }
  std::string resolved = resolvePath(*t);
  std::string contents;
  if (auto problem = readFile(resolved, kMaxSecretFileBytes, contents)) {
    error(file->line, field + ": cannot read " + quote(resolved) + ": " + *problem);
    return;
  }
  std::string_view secret = trimSpace(contents);
  if (secret.empty()) {
    error(file->line, field + ": " + quote(resolved) + " is empty");
  } else if (!isVisibleAscii(secret)) {
    error(file->line, field + ": " + quote(resolved) +
                          " contains whitespace or characters outside visible ASCII inside the key");
  } else {
    org.api_key.assign(secret);
  }
}

void Loader::loadClients(const Section& s, const std::string& path, Organisation& org) {
  const Field* f = s.find("clients");
  if (f == nullptr || f->value.IsNull()) return;
  if (!f->value.IsSequence()) {
    error(f->line, path + ".clients: expected a list of clients, got " + shapeOf(f->value));
    return;
  }
  std::map<std::string, int> names;
  size_t index = 0;
  for (auto it = f->value.begin(); it != f->value.end(); ++it, ++index) {
    std::string cpath = path + ".clients[" + std::to_string(index) + "]";
    int line = lineOf(*it, f->line);
    if (it->IsNull()) {
      error(line, cpath + ": expected a mapping with name and key_sha256 (or key), got an empty value");
      continue;
    }
    auto c = section(*it, cpath, line, {"name", "key", "key_sha256", "weight"});
    if (!c) continue;
    ClientConfig client;
    bool ok = true;
    if (const Field* nf = c->find("name")) {
      if (auto t = text(*nf, cpath + ".name", "a name")) {
        if (!isName(*t)) {
          error(nf->line, cpath + ".name: expected [A-Za-z0-9_.-]{1,64}, got " + quote(*t));
          ok = false;
        } else if (auto prev = names.find(*t); prev != names.end()) {
          error(nf->line, cpath + ".name: duplicate client " + quote(*t) + " in " + path +
                              " (first at line " + std::to_string(prev->second) + ")");
          ok = false;
        } else {
          names.emplace(*t, nf->line);
          client.name = *t;
          cpath = path + ".clients." + *t;
          c->path = cpath;
        }
      } else {
        ok = false;
      }
    } else {
      error(c->line, cpath + ": name is required");
      ok = false;
    }

    const Field* key = c->find("key");
    const Field* digest = c->find("key_sha256");
    int key_line = c->line;
    if (key != nullptr && digest != nullptr) {
      error(digest->key_line, cpath + ": set either key or key_sha256, not both");
      ok = false;
    } else if (key == nullptr && digest == nullptr) {
      error(c->line, cpath + ": key_sha256 (or key) is required");
      ok = false;
    } else if (key != nullptr) {
      key_line = key->line;
      const std::string field = cpath + ".key";
      if (auto t = text(*key, field, "a string")) {
        if (t->empty()) {
          error(key->line, field + ": is empty");
          ok = false;
        } else if (!isVisibleAscii(*t)) {
          error(key->line, field + ": contains whitespace or characters outside visible ASCII");
          ok = false;
        } else {
          client.key_sha256 = sha256(*t);
        }
      } else {
        ok = false;
      }
    } else {
      key_line = digest->line;
      const std::string field = cpath + ".key_sha256";
      if (auto t = text(*digest, field, "64 hexadecimal characters")) {
        if (auto d = parseHexDigest(*t)) {
          client.key_sha256 = *d;
        } else {
          error(digest->line, field + ": expected 64 hexadecimal characters (a SHA-256 digest)");
          ok = false;
        }
      } else {
        ok = false;
      }
    }
    getInt(*c, "weight", client.weight, 1);

    if (ok) {
      auto [prev, inserted] = digests_.emplace(client.key_sha256, DigestOwner{cpath, key_line});
      if (!inserted) {
        error(key_line, cpath + ": same client key as " + prev->second.path + " (line " +
                            std::to_string(prev->second.line) + ")");
      }
    }
    org.clients.push_back(std::move(client));
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Public API.

double CacheConfig::ttlFor(const std::string& workflow_id) const {
  auto it = workflows.find(workflow_id);
  if (it != workflows.end() && it->second.ttl_s) return *it->second.ttl_s;
  return ttl_s;
}

double CacheConfig::staleIfErrorFor(const std::string& workflow_id) const {
  auto it = workflows.find(workflow_id);
  if (it != workflows.end() && it->second.stale_if_error_s) return *it->second.stale_if_error_s;
  return stale_if_error_s;
}

int Config::lineOf(std::string_view key) const {
  auto it = lines.find(key);
  return it == lines.end() ? 1 : it->second;
}

const Organisation* Config::findOrganisation(std::string_view name) const {
  for (const Organisation& org : organisations) {
    if (org.name == name) return &org;
  }
  return nullptr;
}

EnvLookup processEnv() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

ConfigResult loadConfigString(std::string_view yaml, const std::string& name, const EnvLookup& env,
                              const std::string& base_dir) {
  try {
    Loader loader(name, env, base_dir);
    return loader.run(yaml);
  } catch (const std::exception& e) {
    ConfigResult r;
    r.errors.push_back(name + ":1: internal error while loading the configuration: " + e.what());
    return r;
  } catch (...) {
    ConfigResult r;
    r.errors.push_back(name + ":1: internal error while loading the configuration");
    return r;
  }
}

ConfigResult loadConfigFile(const std::string& path, const EnvLookup& env) {
  std::string text;
  if (auto problem = readFile(path, kMaxConfigFileBytes, text)) {
    ConfigResult r;
    r.errors.push_back(path + ": cannot read: " + *problem);
    return r;
  }
  std::string base_dir = ".";
  size_t slash = path.rfind('/');
  if (slash == 0) {
    base_dir = "/";
  } else if (slash != std::string::npos) {
    base_dir = path.substr(0, slash);
  }
  return loadConfigString(text, path, env, base_dir);
}

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

}  // namespace wfp

// ---------------------------------------------------------------------------
// redis.url (the README's "Configuration" lists the accepted forms).

namespace wfp {
namespace {

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
