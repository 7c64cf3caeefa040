// Tests of the configuration loader (docs/configuration.md): every field, its default, the
// ${ENV} syntax, api_key_file, error lines and messages, and that no secret
// ever reaches an error message.
#include "proxy/config.h"
#include "proxy/hash.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "proxy/access_log.h"
#include "proxy/proxy.h"

namespace wfp {
namespace {

namespace fs = std::filesystem;

using Env = std::map<std::string, std::string>;

EnvLookup fakeEnv(Env vars) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

ConfigResult load(std::string_view yaml, Env env = {}, const std::string& base_dir = ".") {
  return loadConfigString(yaml, "test.yaml", fakeEnv(std::move(env)), base_dir);
}

std::string joined(const std::vector<std::string>& errors) {
  std::string out;
  for (const auto& e : errors) out += "  " + e + "\n";
  return out;
}

bool hasError(const ConfigResult& r, std::string_view needle) {
  for (const auto& e : r.errors) {
    if (e.find(needle) != std::string::npos) return true;
  }
  return false;
}

#define EXPECT_LOADS(r) ASSERT_TRUE((r).config) << joined((r).errors)
#define EXPECT_ERROR(r, needle)                                                              \
  EXPECT_TRUE(hasError((r), (needle))) << "no error containing \"" << (needle) << "\" in:\n" \
                                       << joined((r).errors)

std::string hex(const Sha256& d) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (uint8_t b : d) {
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

constexpr const char* kTestSha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

// The smallest valid configuration.
constexpr const char* kMinimalOrgs =
    "organisations:\n"
    "  - name: acme\n"
    "    api_key: sk_test_acme\n";

std::string withOrgs(const std::string& head) { return head + kMinimalOrgs; }

// A scratch directory removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string templ = (fs::temp_directory_path() / "wfp-config-test-XXXXXX").string();
    char* made = mkdtemp(templ.data());
    if (made == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = made;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path write(const std::string& name, const std::string& contents) const {
    fs::path p = path_ / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << contents;
    return p;
  }

 private:
  fs::path path_;
};

// ---------------------------------------------------------------------------
// The example of docs/configuration.md, verbatim.

constexpr const char* kSpecExample =
    R"(listen: 127.0.0.1:8080          # host:port, [::1]:port, or unix:/run/workflow-proxy/sock
admin_listen: 127.0.0.1:9464    # /healthz /readyz /metrics; "" to serve them on `listen`
shutdown_grace_s: 30            # how long SIGTERM waits for running and queued requests
log:
  level: info                   # trace debug info warn error
  access_log: stderr            # stderr | stdout | PATH | off ; one JSON object per line

upstream:
  base_url: https://aitutor-api.vercel.app
  timeout_s: 330                # whole upstream exchange; the upstream's own cap is 300 s
  connect_timeout_s: 10
  max_connections: 64           # concurrent upstream connections, all organisations
  tls_verify: true

limits:
  max_body_bytes: 1MiB          # larger request bodies get 413
  client_header_timeout_s: 10   # slow clients are cut off
  max_client_connections: 10000

redis:                          # omit for a single instance without Redis
  url: redis://127.0.0.1:6379/0 # redis://[:password@]host:port/db or unix:PATH
  key_prefix: "wfp:"
  timeout_ms: 250               # a slower Redis is treated as down for that request

cache:
  backend: memory               # memory | redis (needs `redis`) | off
  ttl_s: 86400                  # lifetime of a stored response
  memory_max_bytes: 256MiB      # LRU bound of the in-process cache (also the L1 in front of Redis)
  streams: true                 # store completed streams and replay them (docs/http.md)
  stale_if_error_s: 0           # >0: serve an entry up to this long past its TTL when the
                                #     upstream fails (5xx, timeout, unreachable) or the queue is full
  workflows:                    # per-workflow overrides of ttl_s and stale_if_error_s
    wf_live_news: { ttl_s: 0 }  # 0 = never cache this workflow (still coalesced)

rate_limit:
  shared: false                 # true (needs `redis`): budgets live in Redis, held by all instances
  queue_max: 10000              # queued requests per organisation; beyond → 429
  max_wait_s: 300               # a request queued longer than this gets 429
  retry_429: 3                  # times an upstream 429 is retried before it is forwarded

default_organisation: acme      # used for requests without Authorization; omit to require a key
unknown_keys: reject            # reject (401) | pass_through (forward the client's own key)

organisations:
  - name: acme
    api_key: ${ACME_API_KEY}    # the upstream secret; never logged, never returned
    rate_limit:
      requests: 10              # the upstream allowance (its default: 10 per key per second) ...
      window_s: 1               # ... at most `requests` starts in any sliding `window_s` seconds;
                                # requests: auto adopts the upstream's x-ratelimit-limit
      max_concurrent: 16        # upstream runs in flight at once for this organisation
    clients:                    # who may use this organisation's key
      - name: billing-service
        key_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      - name: tutor-web
        key: ${TUTOR_WEB_KEY}   # plain form, for keys injected from the environment
        weight: 2               # share of the queue (docs/rate-limits.md); default 1
)";

TEST(ConfigTest, SpecExampleParses) {
  auto r = load(kSpecExample, {{"ACME_API_KEY", "sk_live_acme_123"}, {"TUTOR_WEB_KEY", "tutor-web-key"}});
  EXPECT_LOADS(r);
  const Config& c = *r.config;
  EXPECT_EQ(c.source, "test.yaml");
  EXPECT_EQ(c.listen.kind, ListenAddress::Kind::Tcp);
  EXPECT_EQ(c.listen.host, "127.0.0.1");
  EXPECT_EQ(c.listen.port, 8080);
  EXPECT_EQ(c.listen.text, "127.0.0.1:8080");
  ASSERT_TRUE(c.admin_listen);
  EXPECT_EQ(c.admin_listen->host, "127.0.0.1");
  EXPECT_EQ(c.admin_listen->port, 9464);
  EXPECT_EQ(c.shutdown_grace_s, 30);
  EXPECT_EQ(c.log.level, "info");
  EXPECT_EQ(c.log.access_log, "stderr");
  EXPECT_EQ(c.upstream.base_url, "https://aitutor-api.vercel.app");
  EXPECT_EQ(c.upstream.timeout_s, 330);
  EXPECT_EQ(c.upstream.connect_timeout_s, 10);
  EXPECT_EQ(c.upstream.max_connections, 64);
  EXPECT_TRUE(c.upstream.tls_verify);
  EXPECT_EQ(c.limits.max_body_bytes, 1048576u);
  EXPECT_EQ(c.limits.client_header_timeout_s, 10);
  EXPECT_EQ(c.limits.max_client_connections, 10000);
  ASSERT_TRUE(c.redis);
  EXPECT_EQ(c.redis->url, "redis://127.0.0.1:6379/0");
  EXPECT_EQ(c.redis->key_prefix, "wfp:");
  EXPECT_EQ(c.redis->timeout_ms, 250);
  EXPECT_EQ(c.cache.backend, CacheConfig::Backend::Memory);
  EXPECT_EQ(c.cache.ttl_s, 86400);
  EXPECT_EQ(c.cache.memory_max_bytes, 256u * 1024 * 1024);
  EXPECT_TRUE(c.cache.streams);
  EXPECT_EQ(c.cache.stale_if_error_s, 0);
  ASSERT_EQ(c.cache.workflows.size(), 1u);
  EXPECT_EQ(c.cache.ttlFor("wf_live_news"), 0);
  EXPECT_EQ(c.cache.ttlFor("wf_other"), 86400);
  EXPECT_EQ(c.cache.staleIfErrorFor("wf_live_news"), 0);
  EXPECT_FALSE(c.rate_limit.shared);
  EXPECT_EQ(c.rate_limit.queue_max, 10000);
  EXPECT_EQ(c.rate_limit.max_wait_s, 300);
  EXPECT_EQ(c.rate_limit.retry_429, 3);
  ASSERT_TRUE(c.default_organisation);
  EXPECT_EQ(*c.default_organisation, "acme");
  EXPECT_EQ(c.unknown_keys, Config::UnknownKeys::Reject);
  ASSERT_EQ(c.organisations.size(), 1u);
  const Organisation& acme = c.organisations[0];
  EXPECT_EQ(acme.name, "acme");
  EXPECT_EQ(acme.api_key, "sk_live_acme_123");
  EXPECT_EQ(acme.rate_limit.requests, 10);
  EXPECT_FALSE(acme.rate_limit.requests_auto);
  EXPECT_EQ(acme.rate_limit.window_s, 1);
  EXPECT_EQ(acme.rate_limit.max_concurrent, 16);
  ASSERT_EQ(acme.clients.size(), 2u);
  EXPECT_EQ(acme.clients[0].name, "billing-service");
  EXPECT_EQ(hex(*acme.clients[0].key_sha256), kTestSha256);
  EXPECT_EQ(acme.clients[0].weight, 1);
  EXPECT_EQ(acme.clients[1].name, "tutor-web");
  // sha256("tutor-web-key")
  EXPECT_EQ(hex(*acme.clients[1].key_sha256),
            "4bf58859a27c016c6d966e22270fb48d2fdc70a0dfd3c7f69544448a358293ff");
  EXPECT_EQ(acme.clients[1].weight, 2);
  EXPECT_EQ(c.findOrganisation("acme"), &acme);
  EXPECT_EQ(c.findOrganisation("globex"), nullptr);
}

TEST(ConfigTest, DefaultsWhenFieldsAreOmitted) {
  auto r = load(kMinimalOrgs);
  EXPECT_LOADS(r);
  const Config& c = *r.config;
  EXPECT_EQ(c.listen.kind, ListenAddress::Kind::Tcp);
  EXPECT_EQ(c.listen.host, "127.0.0.1");
  EXPECT_EQ(c.listen.port, 8080);
  ASSERT_TRUE(c.admin_listen);
  EXPECT_EQ(c.admin_listen->host, "127.0.0.1");
  EXPECT_EQ(c.admin_listen->port, 9464);
  EXPECT_EQ(c.shutdown_grace_s, 30);
  EXPECT_EQ(c.log.level, "info");
  EXPECT_EQ(c.log.access_log, "stderr");
  EXPECT_EQ(c.upstream.base_url, "https://aitutor-api.vercel.app");
  EXPECT_EQ(c.upstream.timeout_s, 330);
  EXPECT_EQ(c.upstream.connect_timeout_s, 10);
  EXPECT_EQ(c.upstream.max_connections, 64);
  EXPECT_TRUE(c.upstream.tls_verify);
  EXPECT_EQ(c.limits.max_body_bytes, 1048576u);
  EXPECT_EQ(c.limits.client_header_timeout_s, 10);
  EXPECT_EQ(c.limits.max_client_connections, 10000);
  EXPECT_FALSE(c.redis);
  EXPECT_EQ(c.cache.backend, CacheConfig::Backend::Memory);
  EXPECT_EQ(c.cache.ttl_s, 86400);
  EXPECT_EQ(c.cache.memory_max_bytes, 256u * 1024 * 1024);
  EXPECT_TRUE(c.cache.streams);
  EXPECT_EQ(c.cache.stale_if_error_s, 0);
  EXPECT_TRUE(c.cache.workflows.empty());
  EXPECT_FALSE(c.rate_limit.shared);
  EXPECT_EQ(c.rate_limit.queue_max, 10000);
  EXPECT_EQ(c.rate_limit.max_wait_s, 300);
  EXPECT_EQ(c.rate_limit.retry_429, 3);
  EXPECT_FALSE(c.default_organisation);
  EXPECT_EQ(c.unknown_keys, Config::UnknownKeys::Reject);
  ASSERT_EQ(c.organisations.size(), 1u);
  EXPECT_EQ(c.organisations[0].rate_limit.requests, 10);
  EXPECT_FALSE(c.organisations[0].rate_limit.requests_auto);
  EXPECT_EQ(c.organisations[0].rate_limit.window_s, 1);
  EXPECT_EQ(c.organisations[0].rate_limit.max_concurrent, 16);
  EXPECT_TRUE(c.organisations[0].clients.empty());
}

TEST(ConfigTest, EmptySectionsMeanDefaults) {
  auto r = load(withOrgs("log:\nupstream: {}\ncache:\n  workflows:\nrate_limit:\n"));
  EXPECT_LOADS(r);
  EXPECT_EQ(r.config->upstream.timeout_s, 330);
}

TEST(ConfigTest, RedisSectionMinimalGetsDefaults) {
  auto r = load(withOrgs("redis:\n  url: redis://localhost\n"));
  EXPECT_LOADS(r);
  ASSERT_TRUE(r.config->redis);
  EXPECT_EQ(r.config->redis->key_prefix, "wfp:");
  EXPECT_EQ(r.config->redis->timeout_ms, 250);
}

// ---------------------------------------------------------------------------
// ${ENV}

TEST(ConfigTest, EnvVariableIsExpanded) {
  auto r = load("organisations:\n  - name: acme\n    api_key: ${KEY}\n", {{"KEY", "sk_from_env"}});
  EXPECT_LOADS(r);
  EXPECT_EQ(r.config->organisations[0].api_key, "sk_from_env");
}

TEST(ConfigTest, EnvDefaultIsUsedWhenUnsetOrEmpty) {
  const std::string yaml = withOrgs("log:\n  level: ${LEVEL:-debug}\n");
  auto unset = load(yaml);
  EXPECT_LOADS(unset);
  EXPECT_EQ(unset.config->log.level, "debug");
  auto empty = load(yaml, {{"LEVEL", ""}});
  EXPECT_LOADS(empty);
  EXPECT_EQ(empty.config->log.level, "debug");
  auto set = load(yaml, {{"LEVEL", "warn"}});
  EXPECT_LOADS(set);
  EXPECT_EQ(set.config->log.level, "warn");
}

TEST(ConfigTest, EnvEmbeddedInLongerString) {
  auto r = load(withOrgs("redis:\n  url: redis://${REDIS_HOST:-127.0.0.1}:${REDIS_PORT}/0\n"),
                {{"REDIS_PORT", "6380"}});
  EXPECT_LOADS(r);
  EXPECT_EQ(r.config->redis->url, "redis://127.0.0.1:6380/0");
}

TEST(ConfigTest, EnvExpansionHappensBeforeTypeConversion) {
  auto r = load(
      "shutdown_grace_s: ${GRACE:-2.5}\n"
      "upstream:\n  tls_verify: ${VERIFY}\n"
      "limits:\n  max_body_bytes: ${BODY:-2MiB}\n"
      "organisations:\n  - name: acme\n    api_key: k\n    rate_limit:\n      requests: ${RPS:-10}\n",
      {{"VERIFY", "false"}});
  EXPECT_LOADS(r);
  EXPECT_EQ(r.config->shutdown_grace_s, 2.5);
  EXPECT_FALSE(r.config->upstream.tls_verify);
  EXPECT_EQ(r.config->limits.max_body_bytes, 2u * 1024 * 1024);
  EXPECT_EQ(r.config->organisations[0].rate_limit.requests, 10);

  auto auto_rps =
      load("organisations:\n  - name: acme\n    api_key: k\n    rate_limit:\n      requests: ${RPS}\n",
           {{"RPS", "auto"}});
  EXPECT_LOADS(auto_rps);
  EXPECT_TRUE(auto_rps.config->organisations[0].rate_limit.requests_auto);
}

TEST(ConfigTest, DoubleDollarIsALiteral) {
  auto r = load(withOrgs("redis:\n  url: redis://localhost\n  key_prefix: \"$${NOT_A_VAR}:\"\n"));
  EXPECT_LOADS(r);
  EXPECT_EQ(r.config->redis->key_prefix, "${NOT_A_VAR}:");
  auto lone = load(withOrgs("log:\n  access_log: /var/log/$x$.log\n"));
  EXPECT_LOADS(lone);
  EXPECT_EQ(lone.config->log.access_log, "/var/log/$x$.log");
}

TEST(ConfigTest, NestedDefault) {
  auto r = load(withOrgs("log:\n  level: ${A:-${B:-error}}\n"));
  EXPECT_LOADS(r);
  EXPECT_EQ(r.config->log.level, "error");
}

TEST(ConfigTest, UnsetVariableIsAnErrorNamingItAndTheLine) {
  auto r = load("log:\n  level: info\norganisations:\n  - name: acme\n    api_key: ${ACME_API_KEY}\n");
  ASSERT_FALSE(r.config);
  ASSERT_EQ(r.errors.size(), 1u) << joined(r.errors);
  EXPECT_EQ(r.errors[0],
            "test.yaml:5: organisations.acme.api_key: environment variable ACME_API_KEY is not set");
}

TEST(ConfigTest, MalformedReferences) {
  EXPECT_ERROR(load(withOrgs("log:\n  level: ${LEVEL\n")), "test.yaml:2: log.level: unterminated ${");
  EXPECT_ERROR(load(withOrgs("log:\n  level: ${1X}\n")),
               "test.yaml:2: log.level: malformed ${...} reference");
  EXPECT_ERROR(load(withOrgs("log:\n  level: ${}\n")), "malformed ${...} reference");
}

// ---------------------------------------------------------------------------
// admin.token_file and log.format

TEST(ConfigTest, AdminTokenFileKeepsOnlyTheDigestOfItsTrimmedContent) {
  TempDir dir;
  fs::path token = dir.write("admin-token", "\n  t0ken-abc \n");
  auto r = load(withOrgs("admin:\n  token_file: " + token.string() + "\n"));
  EXPECT_LOADS(r);
  EXPECT_EQ(r.config->admin.token_file, token.string());
  ASSERT_TRUE(r.config->admin.token_sha256.has_value());
  EXPECT_EQ(*r.config->admin.token_sha256, sha256("t0ken-abc"));

  // Omitted, null, "" or an empty ${VAR:-}: no token.
  for (const std::string& none : {std::string(""), std::string("admin:\n"), std::string("admin:\n  token_file:\n"),
                                  std::string("admin:\n  token_file: \"\"\n"),
                                  std::string("admin:\n  token_file: ${NO_SUCH_VAR:-}\n")}) {
    auto n = load(withOrgs(none));
    EXPECT_LOADS(n);
    EXPECT_FALSE(n.config->admin.token_sha256.has_value()) << none;
  }
}

TEST(ConfigTest, AdminTokenFileProblemsAreConfigurationErrors) {
  TempDir dir;
  dir.write("empty", " \n\n");
  dir.write("spaced", "two words\n");
  EXPECT_ERROR(load(withOrgs("admin:\n  token_file: " + (dir.path() / "missing").string() + "\n")),
               "test.yaml:2: admin.token_file: cannot read '" + (dir.path() / "missing").string() + "'");
  EXPECT_ERROR(load(withOrgs("admin:\n  token_file: " + (dir.path() / "empty").string() + "\n")),
               "admin.token_file: '" + (dir.path() / "empty").string() + "' is empty");
  EXPECT_ERROR(load(withOrgs("admin:\n  token_file: " + (dir.path() / "spaced").string() + "\n")),
               "characters outside visible ASCII inside the token");
  EXPECT_ERROR(load(withOrgs("admin:\n  token: abc\n")), "test.yaml:2: unknown key 'token' in admin");
  // Relative: against the configuration's directory, as api_key_file.
  dir.write("secrets/admin", "rel\n");
  auto r = load(withOrgs("admin:\n  token_file: secrets/admin\n"), {}, dir.path().string());
  EXPECT_LOADS(r);
  EXPECT_EQ(*r.config->admin.token_sha256, sha256("rel"));
}

TEST(ConfigTest, LogFormatIsTextOrJson) {
  auto text = load(withOrgs(""));
  EXPECT_LOADS(text);
  EXPECT_EQ(text.config->log.format, LogConfig::Format::Text);
  auto json = load(withOrgs("log:\n  format: json\n"));
  EXPECT_LOADS(json);
  EXPECT_EQ(json.config->log.format, LogConfig::Format::Json);
  EXPECT_ERROR(load(withOrgs("log:\n  format: logfmt\n")), "test.yaml:2: log.format: expected text or json, got 'logfmt'");
}

// ---------------------------------------------------------------------------
// api_key_file

TEST(ConfigTest, ApiKeyFileIsReadAndStripped) {
  TempDir dir;
  fs::path key = dir.write("acme.key", "  sk_from_file_123 \t\n\n");
  auto r = load("organisations:\n  - name: acme\n    api_key_file: " + key.string() + "\n");
  EXPECT_LOADS(r);
  EXPECT_EQ(r.config->organisations[0].api_key, "sk_from_file_123");
}

TEST(ConfigTest, ApiKeyFilePathMayUseCredentialsDirectory) {
  TempDir dir;
  dir.write("creds/acme", "sk_cred\n");
  auto r = load("organisations:\n  - name: acme\n    api_key_file: ${CREDENTIALS_DIRECTORY}/acme\n",
                {{"CREDENTIALS_DIRECTORY", (dir.path() / "creds").string()}});
  EXPECT_LOADS(r);
  EXPECT_EQ(r.config->organisations[0].api_key, "sk_cred");
}

TEST(ConfigTest, ApiKeyFileRelativePathIsResolvedAgainstTheConfigDirectory) {
  TempDir dir;
  dir.write("secrets/acme.key", "sk_relative\n");
  auto r =
      load("organisations:\n  - name: acme\n    api_key_file: secrets/acme.key\n", {}, dir.path().string());
  EXPECT_LOADS(r);
  EXPECT_EQ(r.config->organisations[0].api_key, "sk_relative");

  // loadConfigFile uses the file's own directory, whatever the cwd.
  fs::path conf =
      dir.write("proxy.yaml", "organisations:\n  - name: acme\n    api_key_file: secrets/acme.key\n");
  auto f = loadConfigFile(conf.string(), fakeEnv({}));
  EXPECT_LOADS(f);
  EXPECT_EQ(f.config->organisations[0].api_key, "sk_relative");
  EXPECT_EQ(f.config->source, conf.string());
}

TEST(ConfigTest, ApiKeyFileMissingOrEmptyIsAnErrorNamingThePath) {
  TempDir dir;
  fs::path missing = dir.path() / "nope.key";
  auto r = load("organisations:\n  - name: acme\n    api_key_file: " + missing.string() + "\n");
  ASSERT_FALSE(r.config);
  EXPECT_ERROR(r, "test.yaml:3: organisations.acme.api_key_file: cannot read '" + missing.string() +
                      "': No such file or directory");

  fs::path empty = dir.write("empty.key", " \n\t\n");
  auto e = load("organisations:\n  - name: acme\n    api_key_file: " + empty.string() + "\n");
  ASSERT_FALSE(e.config);
  EXPECT_ERROR(e, "test.yaml:3: organisations.acme.api_key_file: '" + empty.string() + "' is empty");

  auto d = load("organisations:\n  - name: acme\n    api_key_file: " + dir.path().string() + "\n");
  EXPECT_ERROR(d, "Is a directory");
}

TEST(ConfigTest, ApiKeyFileContentNeverInErrors) {
  TempDir dir;
  fs::path key = dir.write("two-lines.key", "sk_line_one_SECRET\nsk_line_two_SECRET\n");
  auto r = load("organisations:\n  - name: acme\n    api_key_file: " + key.string() + "\n");
  ASSERT_FALSE(r.config);
  EXPECT_ERROR(r, "contains whitespace");
  for (const auto& e : r.errors) EXPECT_EQ(e.find("SECRET"), std::string::npos) << e;
}

TEST(ConfigTest, ExactlyOneOfApiKeyAndApiKeyFile) {
  auto both = load("organisations:\n  - name: acme\n    api_key: a\n    api_key_file: /x\n");
  EXPECT_ERROR(both, "test.yaml:4: organisations.acme: set either api_key or api_key_file, not both");
  auto neither = load("organisations:\n  - name: acme\n");
  EXPECT_ERROR(neither, "test.yaml:2: organisations.acme: api_key (or api_key_file) is required");
}

// ---------------------------------------------------------------------------
// Sizes and listen addresses

TEST(ConfigTest, ParseSize) {
  const std::vector<std::pair<std::string, size_t>> good = {
      {"0", 0},
      {"100", 100},
      {"100B", 100},
      {"512KiB", 512 * 1024},
      {"256MiB", 256u * 1024 * 1024},
      {"1GiB", 1024u * 1024 * 1024},
      {"2TiB", 2ULL << 40},
      {"10KB", 10000},
      {"10MB", 10000000},
      {"10GB", 10000000000ULL},
      {"1.5MiB", 1572864},
      {"0.5KiB", 512},
      {"1.5KB", 1500},
      {"1 MiB", 1048576},
      {"1mib", 1048576},
      {"18446744073709551615", 18446744073709551615ULL},
  };
  for (const auto& [text, want] : good) {
    auto got = parseSize(text);
    ASSERT_TRUE(got) << text;
    EXPECT_EQ(*got, want) << text;
  }
  const std::vector<std::string> bad = {"",
                                        "-1",
                                        "-1MiB",
                                        "abc",
                                        "1XB",
                                        "MiB",
                                        "1.5",
                                        "1.5B",
                                        "1.MiB",
                                        ".5MiB",
                                        "1e6",
                                        "0x10",
                                        "1 M iB",
                                        "+1",
                                        "18446744073709551616",
                                        "16EiB",
                                        "17179869184GiB",
                                        "1MiBs"};
  for (const auto& text : bad) EXPECT_FALSE(parseSize(text)) << text;
}

TEST(ConfigTest, SizeFieldsReportBadValues) {
  auto r = load(withOrgs("limits:\n  max_body_bytes: 12 parsecs\n"));
  EXPECT_ERROR(r, "test.yaml:2: limits.max_body_bytes: expected a size");
  EXPECT_ERROR(r, "got '12 parsecs'");
  EXPECT_ERROR(load(withOrgs("limits:\n  max_body_bytes: 0\n")), "limits.max_body_bytes: must be at least 1");
}

TEST(ConfigTest, ParseListenAddress) {
  auto v4 = parseListenAddress("0.0.0.0:8080");
  ASSERT_TRUE(v4);
  EXPECT_EQ(v4->kind, ListenAddress::Kind::Tcp);
  EXPECT_EQ(v4->host, "0.0.0.0");
  EXPECT_EQ(v4->port, 8080);
  EXPECT_EQ(v4->text, "0.0.0.0:8080");

  auto v6 = parseListenAddress("[::1]:9464");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 9464);

  auto name = parseListenAddress("localhost:80");
  ASSERT_TRUE(name);
  EXPECT_EQ(name->host, "localhost");

  auto ephemeral = parseListenAddress("127.0.0.1:0");
  ASSERT_TRUE(ephemeral);
  EXPECT_EQ(ephemeral->port, 0);

  auto max = parseListenAddress("127.0.0.1:65535");
  ASSERT_TRUE(max);
  EXPECT_EQ(max->port, 65535);

  auto unix_sock = parseListenAddress("unix:/run/workflow-proxy/sock");
  ASSERT_TRUE(unix_sock);
  EXPECT_EQ(unix_sock->kind, ListenAddress::Kind::Unix);
  EXPECT_EQ(unix_sock->path, "/run/workflow-proxy/sock");
  EXPECT_EQ(unix_sock->text, "unix:/run/workflow-proxy/sock");

  for (const char* bad :
       {"", "8080", ":8080", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:80x",
        "::1:8080", "[::1]", "[::1]8080", "[nothex]:80", "unix:", "host name:80", "127.0.0.1:123456"}) {
    EXPECT_FALSE(parseListenAddress(bad)) << bad;
  }
  EXPECT_FALSE(parseListenAddress("unix:/" + std::string(200, 'x')));
}

TEST(ConfigTest, ListenFormsInConfig) {
  auto r = load(withOrgs("listen: \"[::1]:0\"\nadmin_listen: unix:/tmp/wfp-admin.sock\n"));
  EXPECT_LOADS(r);
  EXPECT_EQ(r.config->listen.host, "::1");
  EXPECT_EQ(r.config->listen.port, 0);
  ASSERT_TRUE(r.config->admin_listen);
  EXPECT_EQ(r.config->admin_listen->kind, ListenAddress::Kind::Unix);

  auto off = load(withOrgs("admin_listen: \"\"\n"));
  EXPECT_LOADS(off);
  EXPECT_FALSE(off.config->admin_listen);

  auto null = load(withOrgs("admin_listen:\n"));
  EXPECT_LOADS(null);
  EXPECT_FALSE(null.config->admin_listen);

  auto env_off = load(withOrgs("admin_listen: ${ADMIN:-}\n"));
  EXPECT_LOADS(env_off);
  EXPECT_FALSE(env_off.config->admin_listen);

  EXPECT_ERROR(load(withOrgs("log: {}\nlisten: [::1]:8080\n")),
               "test.yaml:2: end of map not found (quote IPv6 addresses: \"[::1]:8080\")");
  EXPECT_ERROR(load(withOrgs("admin_listen: [::1]\n")),
               "test.yaml:1: admin_listen: expected an address, got a list (quote IPv6");
  EXPECT_ERROR(load(withOrgs("admin_listen: nope\n")), "test.yaml:1: admin_listen: expected host:port");
  auto bad = load(withOrgs("listen: localhost\n"));
  EXPECT_ERROR(bad, "test.yaml:1: listen: expected host:port, [IPv6]:port or unix:PATH");
  EXPECT_ERROR(load(withOrgs("listen: 127.0.0.1:8080\nadmin_listen: 127.0.0.1:8080\n")),
               "test.yaml:2: admin_listen: same address as listen");
  // Two ephemeral ports on one host are two different sockets.
  EXPECT_LOADS(load(withOrgs("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n")));
}

// ---------------------------------------------------------------------------
// Errors: lines, unknown keys, types, several at once

TEST(ConfigTest, UnknownKeyWithExactLine) {
  auto r = load(
      "# comment\n"
      "shutdown_grace_s: 1\n"
      "lsiten: 127.0.0.1:8080\n" +
      std::string(kMinimalOrgs));
  ASSERT_FALSE(r.config);
  ASSERT_EQ(r.errors.size(), 1u) << joined(r.errors);
  EXPECT_EQ(r.errors[0], "test.yaml:3: unknown key 'lsiten' at top level; did you mean 'listen'?");
}

TEST(ConfigTest, UnknownNestedKeyNamesItsSection) {
  auto r = load(withOrgs("upstream:\n  base_url: http://localhost:1\n  timeout: 5\n  frobnicate: 1\n"));
  EXPECT_ERROR(r, "test.yaml:3: unknown key 'timeout' in upstream; did you mean 'timeout_s'?");
  EXPECT_ERROR(r, "test.yaml:4: unknown key 'frobnicate' in upstream");
  for (const auto& e : r.errors) {
    if (e.find("frobnicate") != std::string::npos) {
      EXPECT_EQ(e.find("did you mean"), std::string::npos) << e;
    }
  }
  auto org =
      load("organisations:\n  - name: acme\n    api_key: k\n    clients:\n      - name: a\n        kye: x\n");
  EXPECT_ERROR(org, "test.yaml:6: unknown key 'kye' in organisations.acme.clients[0]; did you mean 'key'?");
}

TEST(ConfigTest, WrongTypes) {
  auto r =
      load(withOrgs("upstream:\n"
                    "  timeout_s: abc\n"
                    "  max_connections: 1.5\n"
                    "  tls_verify: maybe\n"
                    "log: [1, 2]\n"
                    "limits:\n"
                    "  max_client_connections:\n"
                    "    nested: 1\n"));
  ASSERT_FALSE(r.config);
  EXPECT_ERROR(r, "test.yaml:2: upstream.timeout_s: expected a number, got 'abc'");
  EXPECT_ERROR(r, "test.yaml:3: upstream.max_connections: expected an integer, got '1.5'");
  EXPECT_ERROR(r, "test.yaml:4: upstream.tls_verify: expected true or false, got 'maybe'");
  EXPECT_ERROR(r, "test.yaml:5: log: expected a mapping, got a list");
  EXPECT_ERROR(r, "test.yaml:8: limits.max_client_connections: expected an integer, got a mapping");
  EXPECT_EQ(r.errors.size(), 5u) << joined(r.errors);
}

TEST(ConfigTest, RangeChecks) {
  auto r = load(
      "shutdown_grace_s: -1\n"
      "upstream:\n  timeout_s: 0\n  connect_timeout_s: -2\n  max_connections: 0\n"
      "limits:\n  client_header_timeout_s: 0\n  max_client_connections: 0\n"
      "redis:\n  url: redis://localhost\n  timeout_ms: 0\n"
      "cache:\n  ttl_s: -5\n  stale_if_error_s: -1\n"
      "rate_limit:\n  queue_max: 0\n  max_wait_s: 0\n  retry_429: -1\n"
      "organisations:\n  - name: acme\n    api_key: k\n"
      "    rate_limit: { requests: 0, window_s: 0, max_concurrent: 0 }\n"
      "    clients:\n      - { name: c, key: x, weight: 0 }\n");
  ASSERT_FALSE(r.config);
  for (const char* want : {
           "test.yaml:1: shutdown_grace_s: must be at least 0",
           "test.yaml:3: upstream.timeout_s: must be greater than 0",
           "test.yaml:4: upstream.connect_timeout_s: must be greater than 0",
           "test.yaml:5: upstream.max_connections: must be at least 1",
           "test.yaml:7: limits.client_header_timeout_s: must be greater than 0",
           "test.yaml:8: limits.max_client_connections: must be at least 1",
           "test.yaml:11: redis.timeout_ms: must be at least 1",
           "test.yaml:13: cache.ttl_s: must be at least 0",
           "test.yaml:14: cache.stale_if_error_s: must be at least 0",
           "test.yaml:16: rate_limit.queue_max: must be at least 1",
           "test.yaml:17: rate_limit.max_wait_s: must be greater than 0",
           "test.yaml:18: rate_limit.retry_429: must be at least 0",
           "test.yaml:22: organisations.acme.rate_limit.requests: must be at least 1",
           "test.yaml:22: organisations.acme.rate_limit.window_s: must be greater than 0",
           "test.yaml:22: organisations.acme.rate_limit.max_concurrent: must be at least 1",
           "test.yaml:24: organisations.acme.clients.c.weight: must be at least 1",
       }) {
    EXPECT_ERROR(r, want);
  }
  EXPECT_EQ(r.errors.size(), 16u) << joined(r.errors);
  // Zero is fine where it means "nothing": grace, ttl, stale, retries.
  EXPECT_LOADS(
      load(withOrgs("shutdown_grace_s: 0\ncache:\n  ttl_s: 0\n  stale_if_error_s: 0\n"
                    "rate_limit:\n  retry_429: 0\n")));
  EXPECT_ERROR(load(withOrgs("upstream:\n  timeout_s: 1e12\n")), "upstream.timeout_s: must be at most");
  EXPECT_ERROR(load(withOrgs("upstream:\n  timeout_s: nan\n")), "upstream.timeout_s: expected a number");
  EXPECT_ERROR(load(withOrgs("upstream:\n  max_connections: 99999999999\n")),
               "upstream.max_connections: must be at most 2147483647");
}

TEST(ConfigTest, AllErrorsAreReportedSortedByLine) {
  auto r = load(
      "listen: nowhere\n"            // 1
      "log:\n  level: loud\n"        // 3
      "upstream:\n  timeout_s: x\n"  // 5
      "cache:\n  backend: disk\n"    // 7
      "unknown_keys: maybe\n"        // 8
      "organisations:\n"             // 9
      "  - name: acme\n"             // 10
      "    api_key: k\n"             // 11
      "  - name: \"bad name\"\n"     // 12
      "    api_key: k\n");           // 13
  ASSERT_FALSE(r.config);
  ASSERT_EQ(r.errors.size(), 6u) << joined(r.errors);
  EXPECT_EQ(r.errors[0].rfind("test.yaml:1: listen:", 0), 0u) << r.errors[0];
  EXPECT_EQ(r.errors[1], "test.yaml:3: log.level: expected trace, debug, info, warn or error, got 'loud'");
  EXPECT_EQ(r.errors[2], "test.yaml:5: upstream.timeout_s: expected a number, got 'x'");
  EXPECT_EQ(r.errors[3], "test.yaml:7: cache.backend: expected memory, redis or off, got 'disk'");
  EXPECT_EQ(r.errors[4], "test.yaml:8: unknown_keys: expected reject or pass_through, got 'maybe'");
  EXPECT_EQ(r.errors[5],
            "test.yaml:12: organisations[1].name: expected [A-Za-z0-9_.-]{1,64}, got 'bad name'");
}

TEST(ConfigTest, YamlSyntaxErrorHasALine) {
  auto r = load("listen: 127.0.0.1:8080\nlog:\n  level: [info\nupstream: {}\n");
  ASSERT_FALSE(r.config);
  ASSERT_EQ(r.errors.size(), 1u) << joined(r.errors);
  EXPECT_EQ(r.errors[0].rfind("test.yaml:", 0), 0u);
  EXPECT_NE(r.errors[0].find("end of sequence flow not found"), std::string::npos) << r.errors[0];
  auto indent = load("log:\n  level: info\n   access_log: x\n");
  ASSERT_EQ(indent.errors.size(), 1u) << joined(indent.errors);
  EXPECT_EQ(indent.errors[0].rfind("test.yaml:3: ", 0), 0u) << indent.errors[0];
}

TEST(ConfigTest, EmptyOrNonMappingTopLevel) {
  EXPECT_ERROR(load(""), "test.yaml:1: empty configuration");
  EXPECT_ERROR(load("# nothing but a comment\n"), "test.yaml:1: empty configuration");
  EXPECT_ERROR(load("- a\n- b\n"), "test.yaml:1: expected a mapping at the top level, got a list");
  EXPECT_ERROR(load("just a string\n"), "expected a mapping at the top level");
  EXPECT_ERROR(load(std::string(kMinimalOrgs) + "---\n" + kMinimalOrgs), "more than one YAML document");
  EXPECT_LOADS(load("---\n" + std::string(kMinimalOrgs) + "---\n"));
}

TEST(ConfigTest, EchoedValuesAreOneLineAndShort) {
  auto r =
      load(withOrgs("log:\n  level: \"in\\nfo\"\n  access_log: stderr\n"
                    "upstream:\n  timeout_s: " +
                    std::string(500, '9') + "x\n"));
  ASSERT_EQ(r.errors.size(), 2u) << joined(r.errors);
  EXPECT_EQ(r.errors[0],
            "test.yaml:2: log.level: expected trace, debug, info, warn or error, got 'in\\x0afo'");
  EXPECT_LT(r.errors[1].size(), 200u) << r.errors[1];
  EXPECT_NE(r.errors[1].find("...'"), std::string::npos) << r.errors[1];
}

TEST(ConfigTest, DuplicateKeysAreErrors) {
  auto r = load("listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n" + std::string(kMinimalOrgs));
  EXPECT_ERROR(r, "test.yaml:2: duplicate key 'listen' at top level (first at line 1)");
}

TEST(ConfigTest, UnreadableFile) {
  auto r = loadConfigFile("/nonexistent/wfp/config.yaml", fakeEnv({}));
  ASSERT_FALSE(r.config);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0], "/nonexistent/wfp/config.yaml: cannot read: No such file or directory");
}

TEST(ConfigTest, OrganisationsRequired) {
  EXPECT_ERROR(load("listen: 127.0.0.1:8080\nlog:\n  level: info\n"), "test.yaml:1: organisations: required");
  EXPECT_ERROR(load("organisations: []\n"),
               "test.yaml:1: organisations: at least one organisation is required");
  EXPECT_ERROR(load("organisations:\n  acme: {}\n"), "test.yaml:2: organisations: expected a list");
  EXPECT_ERROR(load("organisations:\n  - api_key: k\n"), "test.yaml:2: organisations[0]: name is required");
}

// ---------------------------------------------------------------------------
// Values

TEST(ConfigTest, BaseUrl) {
  auto slash = load(withOrgs("upstream:\n  base_url: http://127.0.0.1:8787/\n"));
  EXPECT_LOADS(slash);
  EXPECT_EQ(slash.config->upstream.base_url, "http://127.0.0.1:8787");
  auto prefix = load(withOrgs("upstream:\n  base_url: https://example.com/prefix/\n"));
  EXPECT_LOADS(prefix);
  EXPECT_EQ(prefix.config->upstream.base_url, "https://example.com/prefix");
  auto v6 = load(withOrgs("upstream:\n  base_url: http://[::1]:8787\n"));
  EXPECT_LOADS(v6);
  EXPECT_EQ(v6.config->upstream.base_url, "http://[::1]:8787");
  for (const char* bad :
       {"ftp://example.com", "example.com", "https://", "https:///path", "https://a.com?x=1",
        "https://a.com/#frag", "https://user:pw@a.com", "https://a.com:99999", "http://a b"}) {
    auto r = load(withOrgs(std::string("upstream:\n  base_url: \"") + bad + "\"\n"));
    EXPECT_ERROR(r, "test.yaml:2: upstream.base_url:");
  }
}

TEST(ConfigTest, RedisUrls) {
  for (const char* good : {"redis://127.0.0.1:6379/0", "redis://localhost", "redis://host:6380",
                           "redis://:p%40ss@host:6379/2", "redis://[::1]:6379/1", "redis://host/",
                           "redis://default:pw@host", "redis://host/1048576",
                           "unix:/run/redis.sock", "unix:///run/redis.sock", "unix:/run/redis.sock?db=3",
                           "unix:/run/redis.sock?db=3&password=pw", "unix:/run/redis.sock?password=pw"}) {
    auto r = load(withOrgs(std::string("redis:\n  url: \"") + good + "\"\n"));
    EXPECT_LOADS(r) << good;
    EXPECT_EQ(r.config->redis->url, good);
  }
  EXPECT_ERROR(load(withOrgs("redis:\n  url: rediss://host:6379\n")),
               "test.yaml:2: redis.url: TLS to Redis is not supported");
  for (const char* bad :
       {"http://host", "redis://", "redis://host:0", "redis://host:port", "redis://host/db",
        "redis://host?db=1", "redis://user:pw@host", "redis://:@host", "unix:", "unix:/s?db=x",
        "unix:/s?foo=1", "unix:/s?db=1&db=2", "unix:/s?password=", "redis://:p%4@host",
        "redis://host/2000000", "redis://host/1048577", "unix:/s?db=2000000", "redis://[zz::1]:6379",
        "unix:/s?db=1&"}) {
    auto r = load(withOrgs(std::string("redis:\n  url: \"") + bad + "\"\n"));
    EXPECT_ERROR(r, "test.yaml:2: redis.url: ");
  }
  EXPECT_ERROR(load(withOrgs("redis:\n  url: redis://h/2000000\n")),
               "test.yaml:2: redis.url: database must be a number from 0 to 1048576");
  EXPECT_ERROR(load(withOrgs("redis:\n  key_prefix: x\n")), "test.yaml:1: redis: url is required");
  std::string long_path = "unix:/" + std::string(120, 's');
  EXPECT_ERROR(load(withOrgs("redis:\n  url: " + long_path + "\n")), "redis.url: socket path longer than 107");
}

// Defect: the loader and the Redis client had a parser each; `redis://h/2000000`
// passed --check-config and then stopped the start (exit 1). Now the loader
// parses the URL once and the client is given the result.
TEST(ConfigTest, RedisUrlIsParsedOnceIntoTheEndpointTheClientUses) {
  auto tcp = load(withOrgs("redis:\n  url: \"redis://default:p%40ss@[::1]:6380/7\"\n"));
  EXPECT_LOADS(tcp);
  const RedisUrl& e = tcp.config->redis->endpoint;
  EXPECT_EQ(e.host, "::1");
  EXPECT_EQ(e.port, 6380);
  EXPECT_EQ(e.password, "p@ss");
  EXPECT_EQ(e.db, 7);
  EXPECT_EQ(e.unix_path, "");

  auto sock = load(withOrgs("redis:\n  url: \"unix:/run/re%20dis.sock?password=a%26b&db=3\"\n"));
  EXPECT_LOADS(sock);
  EXPECT_EQ(sock.config->redis->endpoint.unix_path, "/run/re dis.sock");
  EXPECT_EQ(sock.config->redis->endpoint.password, "a&b");
  EXPECT_EQ(sock.config->redis->endpoint.db, 3);
  EXPECT_EQ(sock.config->redis->endpoint.host, "");

  // Whatever the loader accepts, the one parser accepts with the same result.
  for (const char* url : {"redis://h", "redis://:pw@h:1/1048576", "unix:relative.sock?db=0"}) {
    auto r = load(withOrgs(std::string("redis:\n  url: \"") + url + "\"\n"));
    EXPECT_LOADS(r) << url;
    auto parsed = parseRedisUrl(url);
    ASSERT_TRUE(parsed) << url;
    EXPECT_EQ(parsed->host, r.config->redis->endpoint.host);
    EXPECT_EQ(parsed->db, r.config->redis->endpoint.db);
    EXPECT_EQ(parsed->unix_path, r.config->redis->endpoint.unix_path);
  }
}

TEST(ConfigTest, LogLevelsAndAccessLog) {
  for (const char* level : {"trace", "debug", "info", "warn", "error"}) {
    auto r = load(withOrgs(std::string("log:\n  level: ") + level + "\n"));
    EXPECT_LOADS(r);
    EXPECT_EQ(r.config->log.level, level);
  }
  for (const char* sink : {"stderr", "stdout", "off", "/var/log/workflow-proxy/access.log"}) {
    auto r = load(withOrgs(std::string("log:\n  access_log: ") + sink + "\n"));
    EXPECT_LOADS(r);
    EXPECT_EQ(r.config->log.access_log, sink);
  }
  EXPECT_ERROR(load(withOrgs("log:\n  level: warning\n")), "log.level: expected trace");
  EXPECT_ERROR(load(withOrgs("log:\n  access_log: \"\"\n")), "log.access_log:");
}

// Relative paths are the config file's, not the working directory's: the
// start under systemd (working directory /) and --check-config in a shell
// must name the same files.
TEST(ConfigTest, RelativePathsAreRelativeToTheConfigFile) {
  auto r = load(withOrgs("log:\n  access_log: logs/access.log\nlisten: unix:run/wfp.sock\n"
                         "admin_listen: unix:/abs/admin.sock\n"),
                {}, "/etc/wfp");
  EXPECT_LOADS(r);
  EXPECT_EQ(r.config->log.access_log, "/etc/wfp/logs/access.log");
  EXPECT_EQ(r.config->listen.path, "/etc/wfp/run/wfp.sock");
  EXPECT_EQ(r.config->listen.text, "unix:run/wfp.sock");  // as written, for logs
  EXPECT_EQ(r.config->admin_listen->path, "/abs/admin.sock");
  for (const char* keyword : {"stderr", "stdout", "off"}) {
    auto k = load(withOrgs(std::string("log:\n  access_log: ") + keyword + "\n"), {}, "/etc/wfp");
    EXPECT_LOADS(k);
    EXPECT_EQ(k.config->log.access_log, keyword);
  }
  // The resolved socket path must fit a sockaddr_un.
  std::string deep = "/" + std::string(100, 'd');
  EXPECT_ERROR(load(withOrgs("listen: unix:sock-with-a-name\n"), {}, deep),
               "test.yaml:1: listen: socket path '" + deep.substr(0, 63));
  // Two spellings of one socket are one address.
  EXPECT_ERROR(load(withOrgs("listen: unix:a.sock\nadmin_listen: unix:/etc/wfp/a.sock\n"), {}, "/etc/wfp"),
               "test.yaml:2: admin_listen: same address as listen");
}

TEST(ConfigTest, LinesOfValuesThatNameOutsideThingsAreKept) {
  auto r = load(withOrgs("log:\n  level: info\n  access_log: /tmp/x.log\nlisten: 127.0.0.1:1\n"
                         "admin_listen: 127.0.0.1:2\n"));
  EXPECT_LOADS(r);
  EXPECT_EQ(r.config->lineOf("log.access_log"), 3);
  EXPECT_EQ(r.config->lineOf("listen"), 4);
  EXPECT_EQ(r.config->lineOf("admin_listen"), 5);
  auto defaults = load(kMinimalOrgs);
  EXPECT_LOADS(defaults);
  EXPECT_EQ(defaults.config->lineOf("listen"), 1);
}

TEST(ConfigTest, CacheBackendsAndWorkflowOverrides) {
  auto r = load(withOrgs(
      "cache:\n  backend: off\n  ttl_s: 60\n  stale_if_error_s: 30\n  streams: no\n  memory_max_bytes: 0\n"
      "  workflows:\n    wf_a: { ttl_s: 5 }\n    wf-b:\n      stale_if_error_s: 7.5\n    wf_c: {}\n"));
  EXPECT_LOADS(r);
  const CacheConfig& c = r.config->cache;
  EXPECT_EQ(c.backend, CacheConfig::Backend::Off);
  EXPECT_FALSE(c.streams);
  EXPECT_EQ(c.memory_max_bytes, 0u);
  EXPECT_EQ(c.ttlFor("wf_a"), 5);
  EXPECT_EQ(c.staleIfErrorFor("wf_a"), 30);
  EXPECT_EQ(c.ttlFor("wf-b"), 60);
  EXPECT_EQ(c.staleIfErrorFor("wf-b"), 7.5);
  EXPECT_EQ(c.ttlFor("wf_c"), 60);
  EXPECT_EQ(c.ttlFor("unknown"), 60);

  auto redis = load(withOrgs("redis:\n  url: redis://localhost\ncache:\n  backend: redis\n"));
  EXPECT_LOADS(redis);
  EXPECT_EQ(redis.config->cache.backend, CacheConfig::Backend::Redis);

  auto bad =
      load(withOrgs("cache:\n  workflows:\n    \"bad/id\": { ttl_s: 1 }\n    wf_x: { ttl: 1 }\n"
                    "    wf_y: 5\n"));
  EXPECT_ERROR(bad, "test.yaml:3: cache.workflows: 'bad/id' is not a workflow id");
  EXPECT_ERROR(bad, "test.yaml:4: unknown key 'ttl' in cache.workflows.wf_x; did you mean 'ttl_s'?");
  EXPECT_ERROR(bad, "test.yaml:5: cache.workflows.wf_y: expected a mapping, got a single value");
  EXPECT_ERROR(load(withOrgs("cache:\n  memory_max_bytes: 0\n")),
               "test.yaml:2: cache.memory_max_bytes: 0 with backend memory");
}

TEST(ConfigTest, CacheWorkflowKeyRules) {
  auto r = load(withOrgs(
      "cache:\n"
      "  workflows:\n"
      "    wf_a:\n"
      "      key_ignore: [request_id, meta.trace_id, \"caf\u00e9\", 'we\"ird']\n"
      "      key_normalize: [trim, lowercase, trim]\n"
      "    wf_b: { ttl_s: 5 }\n"
      "    wf_c: { key_ignore: [], key_normalize: [] }\n"
      "    wf_d: { key_normalize: [collapse_whitespace] }\n"));
  EXPECT_LOADS(r);
  const CacheConfig& c = r.config->cache;
  const KeyRules* a = c.keyRulesFor("wf_a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->ignore,
            (std::vector<std::vector<std::string>>{{"request_id"}, {"meta", "trace_id"}, {"caf\u00e9"}, {"we\"ird"}}));
  EXPECT_EQ(a->normalize, KeyRules::Trim | KeyRules::Lowercase);
  EXPECT_EQ(c.ttlFor("wf_a"), c.ttl_s);
  EXPECT_EQ(c.keyRulesFor("wf_b"), nullptr);  // an override without rules
  EXPECT_EQ(c.keyRulesFor("wf_c"), nullptr);  // empty lists are no rules
  EXPECT_EQ(c.keyRulesFor("unknown"), nullptr);
  ASSERT_NE(c.keyRulesFor("wf_d"), nullptr);
  EXPECT_TRUE(c.keyRulesFor("wf_d")->ignore.empty());
  EXPECT_EQ(c.keyRulesFor("wf_d")->normalize, unsigned{KeyRules::CollapseWhitespace});
  EXPECT_EQ(load(kMinimalOrgs).config->cache.keyRulesFor("wf_a"), nullptr);
}

TEST(ConfigTest, KeyRuleErrorsNameTheLine) {
  std::string path33 = "a";
  for (int i = 0; i < 32; ++i) path33 += ".a";
  std::string path32 = "a";
  for (int i = 0; i < 31; ++i) path32 += ".a";
  auto r = load(withOrgs(
      "cache:\n"                                             // 1
      "  workflows:\n"                                       // 2
      "    wf_a:\n"                                          // 3
      "      key_ignore:\n"                                  // 4
      "        - a..b\n"                                     // 5
      "        - .a\n"                                       // 6
      "        - a.\n"                                       // 7
      "        - \"\"\n"                                     // 8
      "        - fine.path\n"                                // 9
      "        - [nested]\n"                                 // 10
      "        - \"a\\tb\"\n"                                // 11
      "        - " + path33 + "\n"                           // 12
      "        - " + path32 + "\n"                           // 13
      "        - \"\\xff\"\n"                                // 14: U+00FF, fine
      "      key_normalize: [trim, uppercase, ~]\n"          // 15
      "    wf_b: { key_ignore: request_id, key_normalize: lowercase }\n"  // 16
      "    wf_c:\n"                                          // 17
      "      key_normalize:\n"                               // 18
      "        - Trim\n"));                                  // 19
  EXPECT_FALSE(r.config);
  const std::string kPath =
      " is not a member path (member names separated by '.': none empty, at most 32, printable UTF-8)";
  const std::vector<std::string> expected = {
      "test.yaml:5: cache.workflows.wf_a.key_ignore: 'a..b'" + kPath,
      "test.yaml:6: cache.workflows.wf_a.key_ignore: '.a'" + kPath,
      "test.yaml:7: cache.workflows.wf_a.key_ignore: 'a.'" + kPath,
      "test.yaml:8: cache.workflows.wf_a.key_ignore: ''" + kPath,
      "test.yaml:10: cache.workflows.wf_a.key_ignore: expected a string, got a list",
      "test.yaml:11: cache.workflows.wf_a.key_ignore: 'a\\x09b'" + kPath,
      // (A long value is shortened in messages.)
      "test.yaml:12: cache.workflows.wf_a.key_ignore: "
      "'a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a....'" + kPath,
      "test.yaml:15: cache.workflows.wf_a.key_normalize: unknown normaliser 'uppercase' (expected trim, "
      "collapse_whitespace or lowercase)",
      "test.yaml:15: cache.workflows.wf_a.key_normalize: expected a string, got an empty value",
      "test.yaml:16: cache.workflows.wf_b.key_ignore: expected a list, got a single value",
      "test.yaml:16: cache.workflows.wf_b.key_normalize: expected a list, got a single value",
      "test.yaml:19: cache.workflows.wf_c.key_normalize: unknown normaliser 'Trim' (expected trim, "
      "collapse_whitespace or lowercase)",
  };
  EXPECT_EQ(r.errors, expected) << joined(r.errors);

  // Raw bytes that are not UTF-8 cannot name a JSON member.
  auto bytes = load(withOrgs("cache:\n  workflows:\n    wf_a:\n      key_ignore: [\"ok\", \"a\xff\"]\n"));
  EXPECT_FALSE(bytes.config);
  EXPECT_ERROR(bytes, "test.yaml:4: cache.workflows.wf_a.key_ignore: 'a\xff'" + kPath);
}

TEST(ConfigTest, RateLimitAndOrganisationOptions) {
  auto r = load(
      "rate_limit:\n  shared: true\n  queue_max: 5\n  max_wait_s: 0.5\n  retry_429: 0\n"
      "redis:\n  url: unix:/run/redis.sock\n"
      "unknown_keys: pass_through\n"
      "default_organisation: globex\n"
      "organisations:\n"
      "  - name: acme\n    api_key: a\n    rate_limit:\n      requests: auto\n      window_s: 0.25\n"
      "  - name: globex.eu_1\n    api_key: b\n    rate_limit: { requests: 50, max_concurrent: 2 }\n"
      "  - name: globex\n    api_key: c\n");
  EXPECT_LOADS(r);
  const Config& c = *r.config;
  EXPECT_TRUE(c.rate_limit.shared);
  EXPECT_EQ(c.rate_limit.queue_max, 5);
  EXPECT_EQ(c.rate_limit.max_wait_s, 0.5);
  EXPECT_EQ(c.rate_limit.retry_429, 0);
  EXPECT_EQ(c.unknown_keys, Config::UnknownKeys::PassThrough);
  EXPECT_EQ(c.default_organisation, "globex");
  ASSERT_EQ(c.organisations.size(), 3u);
  EXPECT_TRUE(c.organisations[0].rate_limit.requests_auto);
  EXPECT_EQ(c.organisations[0].rate_limit.requests, 10);  // starting budget until learned
  EXPECT_EQ(c.organisations[0].rate_limit.window_s, 0.25);
  EXPECT_EQ(c.organisations[1].name, "globex.eu_1");
  EXPECT_EQ(c.organisations[1].rate_limit.requests, 50);
  EXPECT_EQ(c.organisations[1].rate_limit.max_concurrent, 2);
  EXPECT_EQ(c.organisations[1].rate_limit.window_s, 1);
  EXPECT_EQ(c.findOrganisation("globex"), &c.organisations[2]);

  EXPECT_ERROR(
      load("organisations:\n  - name: acme\n    api_key: a\n    rate_limit:\n      requests: lots\n"),
      "test.yaml:5: organisations.acme.rate_limit.requests: expected an integer, got 'lots'");
  // An empty default_organisation is no default at all (handy with ${VAR:-}).
  auto empty_default = load(withOrgs("default_organisation: ${DEFAULT_ORG:-}\n"));
  EXPECT_LOADS(empty_default);
  EXPECT_FALSE(empty_default.config->default_organisation);
}

// ---------------------------------------------------------------------------
// Cross-field checks

TEST(ConfigTest, RedisBackendNeedsRedis) {
  auto r = load(withOrgs("cache:\n  backend: redis\n"));
  ASSERT_FALSE(r.config);
  EXPECT_ERROR(r, "test.yaml:2: cache.backend: redis needs a `redis` section");
}

TEST(ConfigTest, SharedRateLimitNeedsRedis) {
  auto r = load(withOrgs("rate_limit:\n  shared: true\n"));
  ASSERT_FALSE(r.config);
  EXPECT_ERROR(r, "test.yaml:2: rate_limit.shared: true needs a `redis` section");
}

TEST(ConfigTest, DefaultOrganisationMustExist) {
  auto r = load(withOrgs("default_organisation: globex\n"));
  ASSERT_FALSE(r.config);
  EXPECT_ERROR(r, "test.yaml:1: default_organisation: 'globex' is not one of the organisations");
}

TEST(ConfigTest, DuplicateOrganisation) {
  auto r = load("organisations:\n  - name: acme\n    api_key: a\n  - name: acme\n    api_key: b\n");
  ASSERT_FALSE(r.config);
  EXPECT_ERROR(r, "test.yaml:4: organisations[1].name: duplicate organisation 'acme' (first at line 2)");
}

TEST(ConfigTest, DuplicateClientKeyAcrossOrganisations) {
  auto r = load(std::string("organisations:\n") +
                "  - name: acme\n    api_key: a\n    clients:\n      - name: one\n        key: test\n" +
                "  - name: globex\n    api_key: b\n    clients:\n      - name: two\n        key_sha256: " +
                "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08\n");
  ASSERT_FALSE(r.config);
  ASSERT_EQ(r.errors.size(), 1u) << joined(r.errors);
  EXPECT_EQ(r.errors[0],
            "test.yaml:11: organisations.globex.clients.two: same client key as "
            "organisations.acme.clients.one (line 6)");
}

TEST(ConfigTest, ClientChecks) {
  auto r = load(
      "organisations:\n"
      "  - name: acme\n"
      "    api_key: a\n"
      "    clients:\n"
      "      - name: one\n"  // 5
      "        key: k1\n"
      "      - name: one\n"  // 7
      "        key: k2\n"
      "      - key: k3\n"     // 9
      "      - name: both\n"  // 10
      "        key: k4\n"
      "        key_sha256: " +
      std::string(kTestSha256) + "\n" +  // 12
      "      - name: neither\n"          // 13
      "      - name: short\n"            // 14
      "        key_sha256: abc123\n"     // 15
      "      - name: w\n"                // 16
      "        key: k5\n"
      "        weight: heavy\n");  // 18
  ASSERT_FALSE(r.config);
  EXPECT_ERROR(r, "test.yaml:7: organisations.acme.clients[1].name: duplicate client 'one'");
  EXPECT_ERROR(r, "test.yaml:9: organisations.acme.clients[2]: name is required");
  EXPECT_ERROR(r, "test.yaml:12: organisations.acme.clients.both: set either key or key_sha256, not both");
  EXPECT_ERROR(r, "test.yaml:13: organisations.acme.clients.neither: key_sha256 (or key, or tls_subject) is required");
  EXPECT_ERROR(
      r, "test.yaml:15: organisations.acme.clients.short.key_sha256: expected 64 hexadecimal characters");
  EXPECT_ERROR(r, "test.yaml:18: organisations.acme.clients.w.weight: expected an integer, got 'heavy'");
  EXPECT_EQ(r.errors.size(), 6u) << joined(r.errors);
}

// ---------------------------------------------------------------------------
// Keys and secrets

TEST(ConfigTest, PlainKeyAndDigestGiveTheSameSha256) {
  auto r = load(std::string("organisations:\n") +
                "  - name: acme\n    api_key: a\n    clients:\n      - name: plain\n        key: test\n" +
                "  - name: globex\n    api_key: b\n    clients:\n      - name: digest\n        key_sha256: " +
                kTestSha256 + "\n");
  // The same key twice is refused; load them separately and compare.
  ASSERT_FALSE(r.config);
  auto plain =
      load("organisations:\n  - name: acme\n    api_key: a\n    clients:\n      - {name: c, key: test}\n");
  auto upper = load(
      std::string("organisations:\n  - name: acme\n    api_key: a\n    clients:\n") +
      "      - {name: c, key_sha256: 9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08}\n");
  EXPECT_LOADS(plain);
  EXPECT_LOADS(upper);
  EXPECT_EQ(hex(*plain.config->organisations[0].clients[0].key_sha256), kTestSha256);
  EXPECT_EQ(plain.config->organisations[0].clients[0].key_sha256,
            upper.config->organisations[0].clients[0].key_sha256);
}

TEST(ConfigTest, SecretsNeverAppearInErrors) {
  const std::string api_key = "sk_SECRET_api_key_value";
  const std::string file_secret = "sk_SECRET_from_file";
  const std::string client_key = "SECRET_client_key";
  const std::string redis_password = "SECRET_redis_pw";
  TempDir dir;
  fs::path key_file = dir.write("globex.key", file_secret + "\n");

  // Every secret sits next to invalid neighbours, in invalid places, or is
  // itself invalid; none of them may be echoed.
  std::vector<std::pair<std::string, Env>> cases = {
      {"redis:\n  url: redis://:" + redis_password +
           "@host:notaport/0\n"
           "  timeout_ms: x\n"
           "organisations:\n"
           "  - name: acme\n    api_key: " +
           api_key +
           "\n    rate_limit: { requests: -1 }\n"
           "    clients:\n      - { name: c, key: " +
           client_key +
           ", weight: 0, extra: 1 }\n"
           "  - name: globex\n    api_key_file: " +
           key_file.string() + "\n    api_key: " + api_key + "\n",
       {}},
      {"redis:\n  url: rediss://:" + redis_password + "@host:6379\n" + kMinimalOrgs, {}},
      {"redis:\n  url: redis://user:" + redis_password + "@host\n" + kMinimalOrgs, {}},
      {"redis:\n  url: redis://:" + redis_password + "@host?db=1\n" + kMinimalOrgs, {}},
      {"redis:\n  url: unix:/s?password=" + redis_password + "&db=x\n" + kMinimalOrgs, {}},
      {"redis:\n  url: unix:/s?" + redis_password + "\n" + kMinimalOrgs, {}},
      {"redis:\n  url: ${REDIS_URL}\n" + std::string(kMinimalOrgs),
       {{"REDIS_URL", "redis://:" + redis_password + "@h:x"}}},
      {"organisations:\n  - name: acme\n    api_key: \"" + api_key + " with space\"\n", {}},
      {"organisations:\n  - name: acme\n    api_key: ${KEY}\n", {{"KEY", api_key + "\n"}}},
      {"organisations:\n  - name: acme\n    api_key: ${" + api_key + "-x}\n", {}},
      {"organisations:\n  - name: acme\n    api_key: ${KEY:-" + api_key + "\n", {}},
      {"organisations:\n  - name: acme\n    api_key: " + api_key +
           "\n    clients:\n"
           "      - { name: a, key: \"" +
           client_key +
           " x\" }\n"
           "      - { name: b, key: " +
           client_key +
           " }\n"
           "      - { name: c, key: " +
           client_key + " }\n",
       {}},
      {"organisations:\n  - name: acme\n    api_key: " + api_key +
           "\n    clients:\n"
           "      - { name: a, key: " +
           client_key + ", key_sha256: " + kTestSha256 + " }\n",
       {}},
      {"organisations:\n  - name: \"bad name!\"\n    api_key: " + api_key +
           "\n"
           "    api_kye: " +
           api_key + "\n    api_key_file: " + key_file.string() + "\n",
       {}},
      {"organisations:\n  - name: acme\n    api_key: " + api_key +
           "\n  - name: acme\n    api_key: " + api_key + "\n",
       {}},
      {"log:\n  level: [\n"
       "organisations:\n  - name: acme\n    api_key: " +
           api_key + "\n",
       {}},
  };
  for (const auto& [yaml, env] : cases) {
    auto r = load(yaml, env);
    ASSERT_FALSE(r.config) << yaml;
    ASSERT_FALSE(r.errors.empty()) << yaml;
    for (const auto& e : r.errors) {
      EXPECT_EQ(e.find("SECRET"), std::string::npos) << "secret leaked in: " << e;
    }
  }
}

TEST(ConfigTest, SecretsMustBeVisibleAscii) {
  EXPECT_ERROR(load("organisations:\n  - name: acme\n    api_key: ${KEY}\n", {{"KEY", "sk a"}}),
               "test.yaml:3: organisations.acme.api_key: contains whitespace");
  EXPECT_ERROR(load("organisations:\n  - name: acme\n    api_key: ${KEY}\n", {{"KEY", ""}}),
               "test.yaml:3: organisations.acme.api_key: is empty");
  EXPECT_ERROR(
      load("organisations:\n  - name: acme\n    api_key: k\n    clients:\n      - { name: a, key: \"\" }\n"),
      "test.yaml:5: organisations.acme.clients.a.key: is empty");
}

// ---------------------------------------------------------------------------
// The shipped configurations in conf/

fs::path confDir() {
  fs::path here = fs::path(__FILE__);
  if (here.is_relative()) here = fs::current_path() / here;
  return here.parent_path().parent_path().parent_path() / "conf";
}

// ---------------------------------------------------------------------------
// checkStart(): what --check-config opens besides the file (docs/http.md).

std::vector<std::string> checkYaml(const std::string& yaml, const std::string& base_dir = ".") {
  auto r = load(yaml, {}, base_dir);
  if (!r.config) throw std::runtime_error("does not load:\n" + joined(r.errors));
  return checkStart(*r.config);
}

size_t entries(const fs::path& dir) {
  return static_cast<size_t>(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

TEST(CheckStart, AccessLogProblemsAreReportedWithTheirLine) {
  TempDir dir;
  dir.write("file", "x");
  fs::create_directory(dir.path() / "adir");
  const std::string head = "listen: 127.0.0.1:0\nadmin_listen: \"\"\nlog:\n  access_log: ";
  struct Case {
    std::string path;
    std::string error;
  };
  for (const Case& c : {Case{"/nonexistent-wfp-dir/access.log", "No such file or directory"},
                        Case{(dir.path() / "file/access.log").string(), "Not a directory"},
                        Case{(dir.path() / "adir").string(), "Is a directory"}}) {
    auto errors = checkYaml(withOrgs(head + c.path + "\n"));
    ASSERT_EQ(errors.size(), 1u) << c.path;
    EXPECT_EQ(errors[0], "test.yaml:4: log.access_log: " + c.path + ": " + c.error);
  }
  EXPECT_EQ(entries(dir.path()), 2u);  // nothing created
}

TEST(CheckStart, AccessLogCheckLeavesNothingBehind) {
  TempDir dir;
  fs::path existing = dir.write("old.log", "line\n");
  struct stat before {};
  ASSERT_EQ(::stat(existing.c_str(), &before), 0);
  const std::string head = "listen: 127.0.0.1:0\nadmin_listen: \"\"\nlog:\n  access_log: ";
  EXPECT_TRUE(checkYaml(withOrgs(head + existing.string() + "\n")).empty());
  struct stat after {};
  ASSERT_EQ(::stat(existing.c_str(), &after), 0);
  EXPECT_EQ(after.st_size, before.st_size);
  EXPECT_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
  EXPECT_EQ(after.st_mtim.tv_sec, before.st_mtim.tv_sec);

  // A missing file in a directory that exists: fine, and not created.
  EXPECT_TRUE(checkYaml(withOrgs(head + "new.log\n"), dir.path().string()).empty());
  EXPECT_FALSE(fs::exists(dir.path() / "new.log"));
  EXPECT_EQ(entries(dir.path()), 1u);

  // A dangling symbolic link: judged by its target, which is not created.
  fs::create_symlink(dir.path() / "target.log", dir.path() / "link.log");
  fs::create_symlink("/nonexistent-wfp-dir/target.log", dir.path() / "broken.log");
  EXPECT_TRUE(checkYaml(withOrgs(head + "link.log\n"), dir.path().string()).empty());
  EXPECT_FALSE(fs::exists(dir.path() / "target.log"));
  auto broken = checkYaml(withOrgs(head + "broken.log\n"), dir.path().string());
  ASSERT_EQ(broken.size(), 1u);
  EXPECT_NE(broken[0].find("test.yaml:4: log.access_log: /nonexistent-wfp-dir/target.log: No such file"),
            std::string::npos)
      << broken[0];

  // A FIFO nobody reads yet: accepted at once (the start waits for a reader).
  ASSERT_EQ(::mkfifo((dir.path() / "fifo").c_str(), 0600), 0);
  EXPECT_TRUE(checkYaml(withOrgs(head + "fifo\n"), dir.path().string()).empty());
}

// check() and open() are one rule: for each destination they agree.
TEST(CheckStart, AccessLogCheckAgreesWithOpen) {
  TempDir dir;
  dir.write("file", "x");
  dir.write("exists.log", "");
  fs::create_directory(dir.path() / "adir");
  fs::create_symlink(dir.path() / "via-link.log", dir.path() / "link.log");
  for (const std::string& p :
       {std::string("stderr"), std::string("off"), (dir.path() / "exists.log").string(),
        (dir.path() / "new.log").string(), (dir.path() / "file/x.log").string(), (dir.path() / "adir").string(),
        (dir.path() / "missing/x.log").string(), (dir.path() / "link.log").string()}) {
    std::string check_error;
    std::string open_error;
    bool checked = AccessLog::check(p, &check_error);
    AccessLog log;
    bool opened = log.open(p, &open_error);
    EXPECT_EQ(checked, opened) << p << ": check: " << check_error << "; open: " << open_error;
    EXPECT_EQ(check_error, open_error) << p;
  }
}

TEST(CheckStart, ListenAddressesAreCheckedWithoutTakingThem) {
  TempDir dir;
  // A port in use is not the check's business (a running proxy holds it).
  int held = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(held, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(held, reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
  ASSERT_EQ(::listen(held, 1), 0);
  socklen_t len = sizeof sin;
  ASSERT_EQ(::getsockname(held, reinterpret_cast<sockaddr*>(&sin), &len), 0);
  std::string port = std::to_string(ntohs(sin.sin_port));
  EXPECT_TRUE(checkYaml(withOrgs("listen: 127.0.0.1:" + port + "\nadmin_listen: localhost:" + port + "\n")).empty());
  ::close(held);

  // An address of no interface here (TEST-NET-1): the start could not bind it.
  auto foreign = checkYaml(withOrgs("admin_listen: \"\"\nlisten: 192.0.2.1:8080\n"));
  ASSERT_EQ(foreign.size(), 1u);
  EXPECT_EQ(foreign[0], "test.yaml:2: listen: 192.0.2.1:8080: Cannot assign requested address");

  // unix: the directory must exist; a file that is not a socket is in the way.
  dir.write("plain", "");
  auto unix_errors = checkYaml(withOrgs("listen: unix:missing/wfp.sock\nadmin_listen: unix:plain\n"),
                               dir.path().string());
  ASSERT_EQ(unix_errors.size(), 2u);
  EXPECT_EQ(unix_errors[0], "test.yaml:1: listen: " + (dir.path() / "missing/wfp.sock").string() +
                                ": directory " + (dir.path() / "missing").string() + ": No such file or directory");
  EXPECT_EQ(unix_errors[1], "test.yaml:2: admin_listen: " + (dir.path() / "plain").string() +
                                " exists and is not a socket");
  auto unix_under_file = checkYaml(withOrgs("listen: unix:plain/wfp.sock\nadmin_listen: \"\"\n"),
                                   dir.path().string());
  ASSERT_EQ(unix_under_file.size(), 1u);
  EXPECT_NE(unix_under_file[0].find("Not a directory"), std::string::npos) << unix_under_file[0];
  EXPECT_TRUE(checkYaml(withOrgs("listen: unix:wfp.sock\nadmin_listen: \"\"\n"), dir.path().string()).empty());
  EXPECT_FALSE(fs::exists(dir.path() / "wfp.sock"));

  // A live socket (a running proxy's) is left alone and not an error.
  int live = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(live, 0);
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::string live_path = (dir.path() / "live.sock").string();
  ASSERT_LT(live_path.size(), sizeof sun.sun_path);
  std::memcpy(sun.sun_path, live_path.c_str(), live_path.size() + 1);
  ASSERT_EQ(::bind(live, reinterpret_cast<sockaddr*>(&sun), sizeof sun), 0);
  ASSERT_EQ(::listen(live, 1), 0);
  EXPECT_TRUE(checkYaml(withOrgs("listen: unix:live.sock\nadmin_listen: \"\"\n"), dir.path().string()).empty());
  EXPECT_TRUE(fs::exists(live_path));
  ::close(live);
}

TEST(ConfigTest, ShippedConfigsLoad) {
  TempDir creds;
  creds.write("acme", "sk_from_credentials\n");
  const Env env = {
      {"ACME_API_KEY", "sk_acme"},
      {"GLOBEX_API_KEY", "sk_globex"},
      {"TUTOR_WEB_KEY", "tutor-web-key"},
      {"AITUTOR_API_KEY", "sk_aitutor"},
      {"CREDENTIALS_DIRECTORY", creds.path().string()},
  };
  for (const char* name : {"workflow-proxy.yaml", "sidecar.yaml", "fleet.yaml", "demo.yaml"}) {
    auto r = loadConfigFile((confDir() / name).string(), fakeEnv(env));
    EXPECT_TRUE(r.config) << name << ":\n" << joined(r.errors);
  }
}

TEST(ConfigTest, ShippedDaemonConfig) {
  auto r =
      loadConfigFile((confDir() / "workflow-proxy.yaml").string(),
                     fakeEnv({{"ACME_API_KEY", "sk_acme"}, {"GLOBEX_API_KEY", "g"}, {"TUTOR_WEB_KEY", "t"}}));
  EXPECT_LOADS(r);
  ASSERT_TRUE(r.config->redis);
  EXPECT_EQ(r.config->redis->url, "redis://127.0.0.1:6379/0");
  EXPECT_EQ(r.config->cache.backend, CacheConfig::Backend::Redis);
  EXPECT_EQ(r.config->findOrganisation("acme")->api_key, "sk_acme");
}

TEST(ConfigTest, ShippedSidecarConfig) {
  auto r = loadConfigFile((confDir() / "sidecar.yaml").string(), fakeEnv({{"AITUTOR_API_KEY", "sk_x"}}));
  EXPECT_LOADS(r);
  EXPECT_EQ(r.config->cache.backend, CacheConfig::Backend::Memory);
  EXPECT_FALSE(r.config->redis);
  // A port few applications in a pod already use; the admin routes on the
  // pod's address for probes and Prometheus, with no token unless a file is given.
  EXPECT_EQ(r.config->listen.text, "127.0.0.1:9460");
  ASSERT_TRUE(r.config->admin_listen);
  EXPECT_EQ(r.config->admin_listen->text, "0.0.0.0:9464");
  EXPECT_FALSE(r.config->admin.token_sha256);
  ASSERT_TRUE(r.config->default_organisation);
  EXPECT_EQ(r.config->organisations.size(), 1u);
  EXPECT_EQ(r.config->organisations[0].api_key, "sk_x");
}

TEST(ConfigTest, ShippedFleetConfig) {
  const Env env = {{"ACME_API_KEY", "a"}, {"GLOBEX_API_KEY", "g"}};
  auto r = loadConfigFile((confDir() / "fleet.yaml").string(), fakeEnv(env));
  EXPECT_LOADS(r);
  EXPECT_EQ(r.config->redis->url, "redis://127.0.0.1:6379/0");
  EXPECT_TRUE(r.config->rate_limit.shared);
  EXPECT_EQ(r.config->cache.backend, CacheConfig::Backend::Redis);
  EXPECT_EQ(r.config->listen.text, "0.0.0.0:8080");
  Env with_url = env;
  with_url["REDIS_URL"] = "redis://:pw@redis.internal:6379/3";
  auto u = loadConfigFile((confDir() / "fleet.yaml").string(), fakeEnv(with_url));
  EXPECT_LOADS(u);
  EXPECT_EQ(u.config->redis->url, "redis://:pw@redis.internal:6379/3");
}

TEST(ConfigTest, ShippedDemoConfig) {
  auto r = loadConfigFile((confDir() / "demo.yaml").string(), fakeEnv({}));
  EXPECT_LOADS(r);
  const Config& c = *r.config;
  EXPECT_EQ(c.upstream.base_url, "http://127.0.0.1:8787");
  EXPECT_EQ(c.listen.text, "127.0.0.1:8080");
  EXPECT_EQ(c.admin_listen->text, "127.0.0.1:9464");
  EXPECT_EQ(c.cache.backend, CacheConfig::Backend::Memory);
  EXPECT_EQ(c.default_organisation, "acme");
  EXPECT_EQ(c.log.access_log, "stderr");
  EXPECT_EQ(c.findOrganisation("acme")->api_key, "sk_sim_acme");
  EXPECT_EQ(c.findOrganisation("globex")->api_key, "sk_sim_globex");
  ASSERT_EQ(c.findOrganisation("acme")->clients.size(), 1u);
  EXPECT_EQ(c.findOrganisation("acme")->clients[0].name, "demo-client");

  auto moved = loadConfigFile((confDir() / "demo.yaml").string(),
                              fakeEnv({{"WFP_DEMO_UPSTREAM", "http://127.0.0.1:40001"},
                                       {"WFP_DEMO_LISTEN", "127.0.0.1:0"},
                                       {"WFP_DEMO_ADMIN", "127.0.0.1:0"},
                                       {"WFP_DEMO_CLIENT_KEY", "test"}}));
  EXPECT_LOADS(moved);
  EXPECT_EQ(moved.config->upstream.base_url, "http://127.0.0.1:40001");
  EXPECT_EQ(moved.config->listen.port, 0);
  EXPECT_EQ(hex(*moved.config->findOrganisation("acme")->clients[0].key_sha256), kTestSha256);
}

}  // namespace
}  // namespace wfp

namespace wfp {
namespace {

TEST(ConfigRegression, ASecretInThePlaceOfASectionIsNotEchoed) {
  auto none = [](const std::string&) -> std::optional<std::string> { return std::nullopt; };
  ConfigResult r = loadConfigString("redis: redis://:TOPSECRET@127.0.0.1:6379/0\norganisations: []\n", "t.yaml", none);
  ASSERT_FALSE(r.errors.empty());
  for (const auto& e : r.errors) EXPECT_EQ(e.find("TOPSECRET"), std::string::npos) << e;
  r = loadConfigString("organisations:\n  - name: a\n    api_key: k\n    clients: plain-CLIENT-SECRET\n", "t.yaml", none);
  ASSERT_FALSE(r.errors.empty());
  for (const auto& e : r.errors) EXPECT_EQ(e.find("CLIENT-SECRET"), std::string::npos) << e;
}

// Found by the config fuzzer: an unclosed quote turns the next lines, an
// api_key among them, into one long key name, which the unknown-key error
// used to repeat.
TEST(ConfigRegression, AKeyThatSwallowedOtherLinesIsNotEchoed) {
  auto none = [](const std::string&) -> std::optional<std::string> { return std::nullopt; };
  ConfigResult r = loadConfigString(
      "limits:\n  ? 'oops: 1\n    api_key: sk-SWALLOWED-123'\n  : 2\norganisations: []\n", "t.yaml", none);
  ASSERT_FALSE(r.errors.empty());
  bool said = false;
  for (const auto& e : r.errors) {
    EXPECT_EQ(e.find("SWALLOWED"), std::string::npos) << e;
    said |= e.find("unclosed quote?") != std::string::npos;
  }
  EXPECT_TRUE(said);
  r = loadConfigString("limits:\n  max_bodyy_bytes: 1\norganisations: []\n", "t.yaml", none);
  ASSERT_FALSE(r.errors.empty());
  EXPECT_NE(r.errors[0].find("'max_bodyy_bytes'"), std::string::npos) << r.errors[0];  // a plain typo still is
}

// Found by config_fuzz: a client name with an unclosed quote swallowed the
// client's `key:` line, and the name's error echoed it.
TEST(ConfigRegression, AValueThatSwallowedASecretIsNotEchoed) {
  auto none = [](const std::string&) -> std::optional<std::string> { return std::nullopt; };
  ConfigResult r = loadConfigString(
      "organisations:\n  - name: acme\n    api_key: sk_x\n    clients:\n      - name: 'tutor.web\n"
      "        key: client-SWALLOWED-secret-1\n        weight: 2'\n",
      "t.yaml", none);
  ASSERT_FALSE(r.errors.empty());
  for (const auto& e : r.errors) EXPECT_EQ(e.find("SWALLOWED"), std::string::npos) << e;
  EXPECT_NE(r.errors[0].find("t.yaml:5: organisations.acme.clients[0].name: expected [A-Za-z0-9_.-]{1,64}, "
                             "got a value that spans other lines (an unclosed quote?)"),
            std::string::npos)
      << r.errors[0];
}

TEST(ConfigRegression, ADocumentStartingWithACommaIsAnErrorNotAHang) {
  // yaml-cpp 0.7 loops forever on these (yaml-cpp#1040).
  auto none = [](const std::string&) -> std::optional<std::string> { return std::nullopt; };
  for (const char* yaml : {",", ",\n", ", a", ",a: b\norganisations: []\n", "# c\n\n  ,x\n", "listen: x\n---\n,\n"}) {
    ConfigResult r = loadConfigString(yaml, "t.yaml", none);
    EXPECT_FALSE(r.errors.empty()) << yaml;
  }
}

// The loader drives yaml-cpp's parser a bounded number of times instead of
// LoadAll(), which never returns on these (yaml-cpp#1040). In-process: before
// the fix this test hangs; tests/faults/config_faults_test.cc runs the same
// inputs in a watched child process.
TEST(ConfigRegression, ACommaAfterAPropertyBomOrNulIsAnErrorWithItsLine) {
  auto first = [](const ConfigResult& r) { return r.errors.empty() ? std::string() : r.errors[0]; };
  EXPECT_EQ(first(load("&a ,")), "test.yaml:1: unexpected ',' at the start of a document");
  EXPECT_EQ(first(load("!t ,\n")), "test.yaml:1: unexpected ',' at the start of a document");
  EXPECT_EQ(first(load("&a\n,\n")), "test.yaml:2: unexpected ',' at the start of a document");
  EXPECT_EQ(first(load("\xef\xbb\xbf,\norganisations: []\n")),
            "test.yaml:1: unexpected ',' at the start of a document");
  EXPECT_EQ(first(load(std::string(kMinimalOrgs) + "---\n,\n")),  // three lines, "---", then the ','
            "test.yaml:5: unexpected ',' at the start of a document");
  for (const std::string& yaml : {std::string("\0,", 2), std::string("!!map ,\norganisations: []\n"),
                                 std::string("!<x> ,"), std::string("[a]\n,\n"), std::string("a: 1\n...\n,\n")}) {
    ConfigResult r = load(yaml);
    EXPECT_FALSE(r.config);
    EXPECT_TRUE(hasError(r, "at the start of a document")) << joined(r.errors);
  }
  // The first document's own problems are reported as well.
  auto r = load("listen: nowhere\n" + std::string(kMinimalOrgs) + "---\n,\n");
  EXPECT_EQ(r.errors.size(), 2u) << joined(r.errors);
  EXPECT_ERROR(r, "test.yaml:1: listen: expected host:port");
  EXPECT_ERROR(r, "test.yaml:6: unexpected ','");
}

TEST(ConfigRegression, OneDocumentWithOptionalEmptyOnesAfterIt) {
  const std::string orgs = kMinimalOrgs;
  EXPECT_LOADS(load("\xef\xbb\xbf" + orgs));
  EXPECT_LOADS(load(orgs + "---\n"));
  EXPECT_LOADS(load(orgs + "...\n"));
  EXPECT_LOADS(load("--- # the only document\n" + orgs + "---\n# trailing comment\n"));
  EXPECT_LOADS(load(orgs + "--- ~\n"));
  // Content in any later document is refused, on its line.
  auto r = load(orgs + "---\n---\nlisten: 127.0.0.1:1\n");
  ASSERT_EQ(r.errors.size(), 1u) << joined(r.errors);
  EXPECT_EQ(r.errors[0], "test.yaml:6: more than one YAML document; expected exactly one");
  EXPECT_ERROR(load(orgs + "---\n---\n---\n"), "more than one YAML document");
  EXPECT_ERROR(load("---\n---\n" + orgs), "more than one YAML document");
  // A syntax error in a later document is still reported.
  EXPECT_ERROR(load(orgs + "---\na: [\n"), "end of sequence flow not found");
}

}  // namespace
}  // namespace wfp

namespace wfp {
namespace {

TEST(ConfigQuotas, QuotaTlsSubjectAndTheirErrors) {
  ConfigResult ok = load(
      "organisations:\n"
      "  - name: acme\n"
      "    api_key: a\n"
      "    clients:\n"
      "      - name: billing\n"
      "        key: k1\n"
      "        quota: {runs: 500}\n"
      "      - name: batch\n"
      "        tls_subject: \"batch worker 1\"\n"
      "        quota: {runs: 20, window_s: 3600}\n");
  ASSERT_TRUE(ok.config) << joined(ok.errors);
  const auto& clients = ok.config->organisations[0].clients;
  ASSERT_TRUE(clients[0].quota);
  EXPECT_EQ(clients[0].quota->runs, 500);
  EXPECT_EQ(clients[0].quota->window_s, 86400) << "a day unless said";
  EXPECT_FALSE(clients[1].key_sha256) << "a certificate alone names the client";
  EXPECT_EQ(clients[1].tls_subject, "batch worker 1");
  EXPECT_EQ(clients[1].quota->window_s, 3600);

  ConfigResult r = load(
      "organisations:\n"
      "  - name: acme\n"
      "    api_key: a\n"
      "    clients:\n"
      "      - name: a\n"  // 5
      "        key: k1\n"
      "        quota: {runs: 0}\n"  // 7
      "      - name: b\n"
      "        key: k2\n"
      "        quota: {window_s: 60}\n"  // 10
      "      - name: c\n"
      "        key: k3\n"
      "        quota: {runs: 5, window_s: -1, burst: 2}\n"  // 13
      "      - name: d\n"
      "        tls_subject: same\n"  // 15
      "      - name: e\n"
      "        tls_subject: same\n"  // 17
      "      - name: f\n"
      "        tls_subject: \"\"\n"  // 19
      "      - name: g\n"
      "        quota: 5\n");  // 21
  ASSERT_FALSE(r.config);
  EXPECT_ERROR(r, "test.yaml:7: organisations.acme.clients.a.quota.runs: ");
  EXPECT_ERROR(r, "test.yaml:10: organisations.acme.clients.b.quota.runs is required");
  EXPECT_ERROR(r, "test.yaml:13: organisations.acme.clients.c.quota.window_s: ");
  EXPECT_ERROR(r, "test.yaml:13: unknown key 'burst' in organisations.acme.clients.c.quota");
  EXPECT_ERROR(r, "test.yaml:17: organisations.acme.clients.e.tls_subject: same subject as organisations.acme.clients.d (line 15)");
  EXPECT_ERROR(r, "test.yaml:19: organisations.acme.clients.f.tls_subject: expected a certificate subject CN");
  EXPECT_ERROR(r, "test.yaml:21: organisations.acme.clients.g.quota: expected a mapping");
  EXPECT_ERROR(r, "test.yaml:20: organisations.acme.clients.g: key_sha256 (or key, or tls_subject) is required");
  EXPECT_EQ(r.errors.size(), 8u) << joined(r.errors);
}

TEST(ConfigTls, FilesAreNamedWithTheirLines) {
  ConfigResult ok = load(
      "tls:\n"
      "  cert_file: certs/proxy.pem\n"
      "  key_file: /etc/wfp/proxy.key\n"
      "organisations:\n"
      "  - name: acme\n"
      "    api_key: a\n",
      {}, "/srv/wfp");
  ASSERT_TRUE(ok.config) << joined(ok.errors);
  ASSERT_TRUE(ok.config->tls);
  EXPECT_EQ(ok.config->tls->cert_file, "/srv/wfp/certs/proxy.pem");
  EXPECT_EQ(ok.config->tls->key_file, "/etc/wfp/proxy.key");
  EXPECT_EQ(ok.config->tls->client_ca_file, "");
  EXPECT_EQ(ok.config->lineOf("tls.key_file"), 3);

  ConfigResult r = load(
      "tls:\n"
      "  cert_file: a.pem\n"
      "  client_ca_file: [x]\n"  // 3
      "organisations:\n"
      "  - name: acme\n"
      "    api_key: a\n");
  ASSERT_FALSE(r.config);
  EXPECT_ERROR(r, "test.yaml:1: tls.key_file is required");
  EXPECT_ERROR(r, "test.yaml:3: tls.client_ca_file: ");
}

}  // namespace
}  // namespace wfp
