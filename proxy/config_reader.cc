#include "proxy/config_reader.h"

#include <sys/un.h>

#include <algorithm>
#include <charconv>
#include <climits>
#include <utility>

#include "proxy/config_values.h"
#include "proxy/text.h"

namespace wfp::config_detail {

namespace {

constexpr size_t kMaxEchoedValue = 64;

bool isEnvName(std::string_view s) {
  if (s.empty() || isDigit(s.front())) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return isAlnum(c) || c == '_'; });
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

// Where a mapping or a list was expected: says what was found without
// echoing it (a secret written in the wrong place must not reach the log).
std::string describeShape(const YAML::Node& n) {
  return n.Type() == YAML::NodeType::Scalar ? std::string("a single value") : std::string();
}

std::string formatDouble(double d) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), d);
  return std::string(buf, r.ptr);
}

}  // namespace

std::string join(const std::string& path, std::string_view key) {
  if (path.empty()) return std::string(key);
  return path + "." + std::string(key);
}

int lineOf(const YAML::Node& n, int fallback) {
  const YAML::Mark m = n.Mark();
  if (m.is_null() || m.line < 0) return fallback;
  return m.line + 1;
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

std::vector<std::string> ConfigReader::formattedErrors() {
  std::stable_sort(errors_.begin(), errors_.end(),
                   [](const Error& a, const Error& b) { return a.line < b.line; });
  std::vector<std::string> out;
  out.reserve(errors_.size());
  for (const Error& e : errors_) out.push_back(name_ + ":" + std::to_string(e.line) + ": " + e.message);
  return out;
}

std::optional<Section> ConfigReader::section(const YAML::Node& node, const std::string& path, int line,
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

std::optional<Section> ConfigReader::subsection(const Section& parent, std::string_view key,
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

std::optional<std::string> ConfigReader::expand(std::string_view in, int line, const std::string& path, int depth) {
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

std::optional<std::string> ConfigReader::text(const Field& f, const std::string& path, const char* expected) {
  if (!f.value.IsScalar()) {
    error(f.line, path + ": expected " + expected + ", got " + describe(f.value));
    return std::nullopt;
  }
  return expand(f.value.Scalar(), f.line, path);
}

bool ConfigReader::getString(const Section& s, std::string_view key, std::string& out) {
  const Field* f = s.find(key);
  if (f == nullptr) return false;
  auto t = text(*f, join(s.path, key), "a string");
  if (!t) return false;
  out = std::move(*t);
  return true;
}

bool ConfigReader::getBool(const Section& s, std::string_view key, bool& out) {
  const Field* f = s.find(key);
  if (f == nullptr) return false;
  std::string path = join(s.path, key);
  auto t = text(*f, path, "true or false");
  if (!t) return false;
  if (auto v = parseBool(*t)) {
    out = *v;
    return true;
  }
  error(f->line, path + ": expected true or false, got " + quote(*t));
  return false;
}

bool ConfigReader::intFromText(const std::string& t, int line, const std::string& path, int& out, long long min) {
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

bool ConfigReader::getInt(const Field& f, const std::string& path, int& out, long long min) {
  auto t = text(f, path, "an integer");
  return t && intFromText(*t, f.line, path, out, min);
}

bool ConfigReader::getInt(const Section& s, std::string_view key, int& out, long long min) {
  const Field* f = s.find(key);
  if (f == nullptr) return false;
  return getInt(*f, join(s.path, key), out, min);
}

bool ConfigReader::getSeconds(const Field& f, const std::string& path, double& out, bool zero_ok) {
  auto t = text(f, path, "a number of seconds");
  if (!t) return false;
  auto parsed = parseSeconds(*t);
  if (!parsed) {
    error(f.line, path + ": expected a number, got " + quote(*t));
    return false;
  }
  double v = *parsed;
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

bool ConfigReader::getSeconds(const Section& s, std::string_view key, double& out, bool zero_ok) {
  const Field* f = s.find(key);
  if (f == nullptr) return false;
  return getSeconds(*f, join(s.path, key), out, zero_ok);
}

bool ConfigReader::getSize(const Section& s, std::string_view key, size_t& out, size_t min) {
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

std::optional<ListenAddress> ConfigReader::listenAddress(const Field& f, const std::string& path,
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

}  // namespace wfp::config_detail
