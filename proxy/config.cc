// Configuration loader: YAML text → immutable Config (docs/configuration.md).
//
// The loader walks the YAML tree once, section by section, and records every
// problem as (line, message) instead of stopping at the first one; the caller
// gets either a Config or all of the errors, sorted by line, formatted
// "file:line: message". Nothing here throws to the caller: yaml-cpp's
// exceptions are caught at the top. Reading a typed value out of a section
// (and ${ENV} expansion) is config_reader.{h,cc}; the grammar of each value
// is config_values.{h,cc}.
//
// Rules the spec leaves open, decided here (README "Configuration"; the
// rules of single values are listed in config_values.cc):
//  * A null value (`key:` with nothing after it) of a section means an empty
//    section (all defaults); for `admin_listen` and `default_organisation` it
//    means the same as "" (no admin listener / no default organisation).
//  * Only one YAML document per file.
//  * Relative paths (api_key_file, log.access_log, unix:PATH of listen and
//    admin_listen) are relative to the config file's directory, so that
//    `--check-config` run from a shell and the start under systemd (working
//    directory /) name the same files. The unix: path of redis.url is a URL,
//    left as written.
//  * Values are parsed here with the parsers the start uses (log levels:
//    logging.h; access_log keywords: access_log.h); what the start opens is
//    opened by checkStart() (proxy.h), which --check-config runs too.
//  * Secrets (api_key, api_key_file contents, plain client keys) must be
//    visible ASCII (0x21-0x7e, isVisibleAscii() in text.h): they travel in an
//    Authorization header, and a stray newline in a key file is a mistake,
//    not a key.
//  * cache.memory_max_bytes may be 0 (no in-process L1 in front of Redis),
//    except with `backend: memory`, where 0 would silently cache nothing.
//  * listen and admin_listen may not be the same TCP address (port 0 aside).
#include "proxy/config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <sstream>
#include <utility>

#include "proxy/access_log.h"
#include "proxy/canonical_json.h"
#include "proxy/config_reader.h"
#include "proxy/hash.h"
#include "proxy/logging.h"
#include "proxy/text.h"

namespace wfp {
namespace {

using namespace config_detail;

constexpr size_t kMaxSecretFileBytes = size_t{64} * 1024;
constexpr size_t kMaxConfigFileBytes = size_t{16} * 1024 * 1024;

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

bool hasControlCharacter(std::string_view s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------
// The loader: what each section and key means.

class Loader : public ConfigReader {
 public:
  using ConfigReader::ConfigReader;

  ConfigResult run(std::string_view yaml);

 private:
  ConfigResult finish(Config* config);

  void loadLog(const Section& top, LogConfig& log);
  void loadAdmin(const Section& top, AdminConfig& admin);
  void loadTls(const Section& top, Config& config);
  void loadKeyRules(const Section& entry, const std::string& path, KeyRules& rules);
  void loadQuota(const Section& client, const std::string& path, std::optional<ClientQuota>& quota);
  // Reads a secret from a file (api_key_file, admin.token_file): the content
  // without surrounding whitespace, visible ASCII only; nullopt after an error.
  // `written` is the path as written (after ${VAR} expansion), non-empty.
  std::optional<std::string> readSecretFile(int line, const std::string& field, const std::string& written,
                                            const char* what);
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

  struct DigestOwner {
    std::string path;
    int line;
  };
  std::map<Sha256, DigestOwner> digests_;
  std::map<std::string, DigestOwner> subjects_;  // tls_subject → first client
  int cache_backend_line_ = 0;
  int shared_line_ = 0;
};

ConfigResult Loader::finish(Config* config) {
  ConfigResult result;
  if (!hasErrors() && config != nullptr) {
    result.config = std::make_shared<const Config>(std::move(*config));
    return result;
  }
  result.errors = formattedErrors();
  return result;
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
                     {"listen", "admin_listen", "tls", "admin", "shutdown_grace_s", "log", "upstream", "limits", "redis",
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

  loadTls(*top, config);
  loadLog(*top, config.log);
  loadAdmin(*top, config.admin);
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
  auto s = subsection(top, "log", {"level", "access_log", "format"});
  if (!s) return;
  if (const Field* f = s->find("format")) {
    if (auto t = text(*f, "log.format", "text or json")) {
      if (*t == "text") {
        log.format = LogConfig::Format::Text;
      } else if (*t == "json") {
        log.format = LogConfig::Format::Json;
      } else {
        error(f->line, "log.format: expected text or json, got " + quote(*t));
      }
    }
  }
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

void Loader::loadAdmin(const Section& top, AdminConfig& admin) {
  auto s = subsection(top, "admin", {"token_file"});
  if (!s) return;
  const Field* f = s->find("token_file");
  if (f == nullptr || f->value.IsNull()) return;
  auto t = text(*f, "admin.token_file", "a file path or \"\"");
  // "" (or an empty ${VAR:-}) means no token, as for admin_listen.
  if (!t || t->empty()) return;
  if (auto token = readSecretFile(f->line, "admin.token_file", *t, "token")) {
    admin.token_file = resolvePath(*t);
    admin.token_sha256 = sha256(*token);
  }
}

// The files are only named here; checkStart() (proxy.h) loads them, as the
// start does, and reports what does not load or match with these lines.
void Loader::loadTls(const Section& top, Config& config) {
  const Field* f = top.find("tls");
  if (f == nullptr || f->value.IsNull()) return;
  auto s = subsection(top, "tls", {"cert_file", "key_file", "client_ca_file"});
  if (!s) return;
  TlsConfig tls;
  bool ok = true;
  auto file = [&](const char* key, std::string& out, bool required) {
    const std::string field = std::string("tls.") + key;
    const Field* ff = s->find(key);
    if (ff == nullptr || ff->value.IsNull()) {
      if (required) {
        error(s->line, field + " is required");
        ok = false;
      }
      return;
    }
    auto t = text(*ff, field, "a file path");
    if (!t) {
      ok = false;
    } else if (t->empty()) {
      if (required) {
        error(ff->line, field + ": empty path");
        ok = false;
      }
    } else {
      out = resolvePath(*t);
      lines_[field] = ff->line;
    }
  };
  file("cert_file", tls.cert_file, true);
  file("key_file", tls.key_file, true);
  file("client_ca_file", tls.client_ca_file, false);
  if (config.listen.kind == ListenAddress::Kind::Unix && ok) {
    // Allowed: TLS over a unix socket is unusual but well defined.
  }
  if (ok) config.tls = std::move(tls);
}

std::optional<std::string> Loader::readSecretFile(int line, const std::string& field, const std::string& written,
                                                  const char* what) {
  std::string resolved = resolvePath(written);
  std::string contents;
  if (auto problem = readFile(resolved, kMaxSecretFileBytes, contents)) {
    error(line, field + ": cannot read " + quote(resolved) + ": " + *problem);
    return std::nullopt;
  }
  std::string_view secret = trimSpace(contents);
  if (secret.empty()) {
    error(line, field + ": " + quote(resolved) + " is empty");
    return std::nullopt;
  }
  if (!isVisibleAscii(secret)) {
    error(line, field + ": " + quote(resolved) + " contains whitespace or characters outside visible ASCII inside the " +
                      what);
    return std::nullopt;
  }
  return std::string(secret);
}

void Loader::loadUpstream(const Section& top, UpstreamConfig& up) {
  auto s = subsection(top, "upstream",
                      {"base_url", "timeout_s", "connect_timeout_s", "max_connections", "tls_verify"});
  if (!s) return;
  if (const Field* f = s->find("base_url")) {
    if (auto t = text(*f, "upstream.base_url", "a URL")) {
      std::string problem;
      if (auto url = parseBaseUrl(*t, &problem)) {
        up.base_url = std::move(*url);
      } else {
        error(f->line, "upstream.base_url: " + problem);
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
    error(wf->line,
          "cache.workflows: expected a mapping of workflow id to {ttl_s, stale_if_error_s, key_ignore, key_normalize}, "
          "got " +
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
    auto entry = section(value, "cache.workflows." + id, value_line,
                         {"ttl_s", "stale_if_error_s", "key_ignore", "key_normalize"});
    if (!entry) continue;
    WorkflowCacheOverride o;
    double v = 0;
    if (getSeconds(*entry, "ttl_s", v, true)) o.ttl_s = v;
    if (getSeconds(*entry, "stale_if_error_s", v, true)) o.stale_if_error_s = v;
    loadKeyRules(*entry, "cache.workflows." + id, o.key);
    cache.workflows.emplace(id, std::move(o));
  }
}

// key_ignore: [member, a.b.c] — member paths, names separated by '.';
// key_normalize: [trim, collapse_whitespace, lowercase].
void Loader::loadKeyRules(const Section& entry, const std::string& path, KeyRules& rules) {
  auto list = [&](const char* key, auto each) {
    const Field* f = entry.find(key);
    if (f == nullptr || f->value.IsNull()) return;
    const std::string field = path + "." + key;
    if (!f->value.IsSequence()) {
      error(f->line, field + ": expected a list, got " + shapeOf(f->value));
      return;
    }
    for (auto it = f->value.begin(); it != f->value.end(); ++it) {
      int line = lineOf(*it, f->line);
      if (!it->IsScalar()) {
        error(line, field + ": expected a string, got " + shapeOf(*it));
        continue;
      }
      each(it->Scalar(), line, field);
    }
  };
  list("key_ignore", [&](const std::string& text, int line, const std::string& field) {
    std::vector<std::string> names;
    size_t start = 0;
    bool ok = !text.empty();
    while (ok) {
      size_t dot = text.find('.', start);
      std::string name = text.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      if (name.empty()) ok = false;
      for (unsigned char c : name) ok &= c >= 0x20 && c != 0x7f;
      std::string canonical;  // a JSON member name is Unicode text: UTF-8 here
      ok &= appendCanonicalString(canonical, name);
      names.push_back(std::move(name));
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    if (!ok || names.size() > 32) {
      error(line, field + ": " + quote(text) +
                      " is not a member path (member names separated by '.': none empty, at most 32, "
                      "printable UTF-8)");
      return;
    }
    rules.ignore.push_back(std::move(names));
  });
  list("key_normalize", [&](const std::string& text, int line, const std::string& field) {
    if (text == "trim") {
      rules.normalize |= KeyRules::Trim;
    } else if (text == "collapse_whitespace") {
      rules.normalize |= KeyRules::CollapseWhitespace;
    } else if (text == "lowercase") {
      rules.normalize |= KeyRules::Lowercase;
    } else {
      error(line, field + ": unknown normaliser " + quote(text) + " (expected trim, collapse_whitespace or lowercase)");
    }
  });
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
      if (!isOrganisationName(*t)) {
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
  if (auto secret = readSecretFile(file->line, field, *t, "key")) org.api_key = std::move(*secret);
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
    auto c = section(*it, cpath, line, {"name", "key", "key_sha256", "tls_subject", "weight", "quota"});
    if (!c) continue;
    ClientConfig client;
    bool ok = true;
    if (const Field* nf = c->find("name")) {
      if (auto t = text(*nf, cpath + ".name", "a name")) {
        if (!isOrganisationName(*t)) {
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

    if (const Field* sf = c->find("tls_subject")) {
      if (auto t = text(*sf, cpath + ".tls_subject", "a certificate subject CN")) {
        if (t->empty() || t->size() > 256 || hasControlCharacter(*t)) {
          error(sf->line, cpath + ".tls_subject: expected a certificate subject CN (1 to 256 printable characters)");
          ok = false;
        } else if (auto prev = subjects_.find(*t); prev != subjects_.end()) {
          error(sf->line, cpath + ".tls_subject: same subject as " + prev->second.path + " (line " +
                              std::to_string(prev->second.line) + ")");
          ok = false;
        } else {
          subjects_.emplace(*t, DigestOwner{cpath, sf->line});
          client.tls_subject = std::move(*t);
        }
      } else {
        ok = false;
      }
    }
    loadQuota(*c, cpath, client.quota);

    const Field* key = c->find("key");
    const Field* digest = c->find("key_sha256");
    int key_line = c->line;
    if (key != nullptr && digest != nullptr) {
      error(digest->key_line, cpath + ": set either key or key_sha256, not both");
      ok = false;
    } else if (key == nullptr && digest == nullptr) {
      if (c->find("tls_subject") == nullptr) {  // one given but refused is reported already
        error(c->line, cpath + ": key_sha256 (or key, or tls_subject) is required");
        ok = false;
      }
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

    if (ok && client.key_sha256) {
      auto [prev, inserted] = digests_.emplace(*client.key_sha256, DigestOwner{cpath, key_line});
      if (!inserted) {
        error(key_line, cpath + ": same client key as " + prev->second.path + " (line " +
                            std::to_string(prev->second.line) + ")");
      }
    }
    org.clients.push_back(std::move(client));
  }
}

// quota: {runs: N, window_s: S}
void Loader::loadQuota(const Section& client, const std::string& path, std::optional<ClientQuota>& quota) {
  const Field* f = client.find("quota");
  if (f == nullptr || f->value.IsNull()) return;
  auto q = subsection(client, "quota", {"runs", "window_s"});
  if (!q) return;
  ClientQuota out;
  bool ok = true;
  if (const Field* rf = q->find("runs")) {
    int runs = 0;
    ok &= getInt(*rf, path + ".quota.runs", runs, 1);
    out.runs = runs;
  } else {
    error(q->line, path + ".quota.runs is required");
    ok = false;
  }
  ok &= getSeconds(*q, "window_s", out.window_s, false) || q->find("window_s") == nullptr;
  if (ok) quota = out;
}

}  // namespace

// ---------------------------------------------------------------------------
// Public API.

const KeyRules* CacheConfig::keyRulesFor(std::string_view workflow_id) const {
  if (workflows.empty()) return nullptr;  // the common case: no lookup at all
  auto it = workflows.find(workflow_id);
  if (it == workflows.end() || it->second.key.empty()) return nullptr;
  return &it->second.key;
}

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

}  // namespace wfp
