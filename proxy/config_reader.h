// Reading typed values out of a configuration's YAML tree, collecting every
// problem as (line, message) instead of stopping at the first one. Private
// to the loader (config.cc), which derives from ConfigReader and adds what
// each section means; the value grammars themselves are config_values.h.
//
//  * ${VAR} / ${VAR:-default} are expanded in every scalar value, before type
//    conversion, never in mapping keys. ${VAR:-default} uses the default when
//    VAR is unset *or empty* (shell semantics); ${VAR} with VAR set to "" is
//    the empty string. Defaults may themselves contain ${...}. "$${" is a
//    literal "${"; any other '$' is literal. Values from the environment are
//    not expanded again.
//  * Duplicate mapping keys are errors (yaml-cpp would silently keep one);
//    an unknown key is an error, with the nearest allowed key suggested.
//  * Messages never echo a value that may be a secret: quote() describes a
//    value that swallowed other lines, describe() names a node's shape.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstddef>
#include <functional>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/config.h"

namespace wfp::config_detail {

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

// "path.key", or "key" at the top level.
std::string join(const std::string& path, std::string_view key);
// A node's 1-based line, or `fallback` when yaml-cpp gives none.
int lineOf(const YAML::Node& n, int fallback);

// A value as it may appear in a message: quoted, shortened, one line, or
// described when it may hold other lines (and so a secret).
std::string quote(std::string_view s);
// A node as a message names it: "a mapping", "a list", "an empty value", or
// a scalar quoted.
std::string describe(const YAML::Node& n);
// Where a mapping or a list was expected: what was found, a scalar not echoed.
std::string shapeOf(const YAML::Node& n);

class ConfigReader {
 public:
  // `name` is the file part of error messages; relative paths are resolved
  // against `base_dir`. `env` must outlive the reader.
  ConfigReader(std::string name, const EnvLookup& env, std::string base_dir)
      : name_(std::move(name)), env_(env), base_dir_(std::move(base_dir)) {}

 protected:
  void error(int line, std::string message) { errors_.push_back({line, std::move(message)}); }
  bool hasErrors() const { return !errors_.empty(); }
  // Every error, sorted by line, as "file:line: message".
  std::vector<std::string> formattedErrors();

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

  // A listen address; a unix: path resolved like every path (below), its
  // line recorded in lines_. `expanded`: the field's text when the caller
  // has already expanded it.
  std::optional<ListenAddress> listenAddress(const Field& f, const std::string& path,
                                             std::optional<std::string> expanded = std::nullopt);

  // A path from the configuration as the start opens it: relative paths are
  // relative to the config file's directory, never to the working directory
  // (which differs between `--check-config` in a shell and systemd's start).
  std::string resolvePath(std::string_view path) const {
    if (!path.empty() && path.front() == '/') return std::string(path);
    return base_dir_ + "/" + std::string(path);
  }

  std::string name_;
  std::map<std::string, int, std::less<>> lines_;  // Config::lines

 private:
  const EnvLookup& env_;
  std::string base_dir_;
  std::vector<Error> errors_;
};

}  // namespace wfp::config_detail
