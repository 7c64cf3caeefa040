// Configuration: YAML (docs/configuration.md) → an immutable Config.
//
// loadConfig*() never throws and never stops at the first problem: it returns
// either a Config or every error found, each formatted "file:line: message".
// Secrets (organisation api keys, plain client keys) are never part of an
// error message. A Config is shared as std::shared_ptr<const Config>; a
// reload builds a new one and swaps the pointer (requests keep the snapshot
// they started with).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/config_values.h"  // ListenAddress, RedisUrl, Sha256 and the value parsers
#include "proxy/key_rules.h"      // KeyRules

namespace wfp {

struct LogConfig {
  std::string level = "info";         // trace debug info warn error
  std::string access_log = "stderr";  // stderr | stdout | PATH | off
  enum class Format { Text, Json };   // the application log's lines (logging.h)
  Format format = Format::Text;
};

// `admin:` — what guards the admin listener's actions.
struct AdminConfig {
  std::string token_file;  // resolved path; "": no token (actions open)
  // SHA-256 of the file's content (trimmed): only the digest is kept, and a
  // presented token is compared by its digest, in constant time.
  std::optional<Sha256> token_sha256;
};

struct UpstreamConfig {
  std::string base_url = "https://aitutor-api.vercel.app";  // no trailing '/'
  double timeout_s = 330;
  double connect_timeout_s = 10;
  int max_connections = 64;
  bool tls_verify = true;
};

struct LimitsConfig {
  size_t max_body_bytes = 1024 * 1024;
  double client_header_timeout_s = 10;
  int max_client_connections = 10000;
};

struct RedisConfig {
  std::string url;    // as written: redis://[:password@]host:port/db or unix:PATH
  RedisUrl endpoint;  // `url` parsed (parseRedisUrl): what the Redis client connects to
  std::string key_prefix = "wfp:";
  int timeout_ms = 250;
};

struct WorkflowCacheOverride {
  std::optional<double> ttl_s;
  std::optional<double> stale_if_error_s;
  KeyRules key;  // key_ignore, key_normalize
};

struct CacheConfig {
  enum class Backend { Memory, Redis, Off };
  Backend backend = Backend::Memory;
  double ttl_s = 86400;
  size_t memory_max_bytes = 256u * 1024 * 1024;
  bool streams = true;
  double stale_if_error_s = 0;
  std::map<std::string, WorkflowCacheOverride, std::less<>> workflows;

  double ttlFor(const std::string& workflow_id) const;
  double staleIfErrorFor(const std::string& workflow_id) const;
  // The workflow's key rules, or null when it has none.
  const KeyRules* keyRulesFor(std::string_view workflow_id) const;
};

struct RateLimitConfig {
  bool shared = false;
  int queue_max = 10000;
  double max_wait_s = 300;
  int retry_429 = 3;
};

// `clients[].quota`: at most `runs` upstream runs led by the client in any
// sliding window of `window_s` seconds (docs/rate-limits.md).
struct ClientQuota {
  int64_t runs = 0;
  double window_s = 86400;
};

struct ClientConfig {
  std::string name;
  // Plain `key:` entries are hashed at load time; nullopt: the client is
  // named only by its certificate (tls_subject).
  std::optional<Sha256> key_sha256;
  int weight = 1;
  std::string tls_subject;  // the client certificate's subject CN; "": none
  std::optional<ClientQuota> quota;
};

struct OrgRateLimit {
  int requests = 10;           // ignored while requests_auto until learned
  bool requests_auto = false;  // `requests: auto`
  double window_s = 1;
  int max_concurrent = 16;
};

struct Organisation {
  std::string name;
  std::string api_key;  // the upstream secret: never log it
  OrgRateLimit rate_limit;
  std::vector<ClientConfig> clients;
};

// `tls:` — the client listener speaks TLS 1.2+ (docs/security.md).
struct TlsConfig {
  std::string cert_file;       // resolved paths
  std::string key_file;
  std::string client_ca_file;  // "": no client certificate asked for
};

struct Config {
  std::string source;  // file the config came from
  ListenAddress listen{ListenAddress::Kind::Tcp, "127.0.0.1", 8080, "", "127.0.0.1:8080"};
  // nullopt: `admin_listen: ""` (admin routes on `listen`)
  std::optional<ListenAddress> admin_listen =
      ListenAddress{ListenAddress::Kind::Tcp, "127.0.0.1", 9464, "", "127.0.0.1:9464"};
  std::optional<TlsConfig> tls;  // nullopt: `listen` speaks plain HTTP
  double shutdown_grace_s = 30;
  AdminConfig admin;
  LogConfig log;
  UpstreamConfig upstream;
  LimitsConfig limits;
  std::optional<RedisConfig> redis;  // nullopt: section omitted
  CacheConfig cache;
  RateLimitConfig rate_limit;
  std::optional<std::string> default_organisation;
  enum class UnknownKeys { Reject, PassThrough };
  UnknownKeys unknown_keys = UnknownKeys::Reject;
  std::vector<Organisation> organisations;
  // The line each value that names something outside the file was written
  // on ("listen", "admin_listen", "log.access_log"), for problems found
  // after loading (checkStart() in proxy.h); absent: the default was used.
  std::map<std::string, int, std::less<>> lines;

  const Organisation* findOrganisation(std::string_view name) const;
  // lines[key], or 1.
  int lineOf(std::string_view key) const;
};

using ConfigPtr = std::shared_ptr<const Config>;

struct ConfigResult {
  ConfigPtr config;                 // null when errors is non-empty
  std::vector<std::string> errors;  // "file:line: message"
};

// Environment lookup, injectable for tests. Returns nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
EnvLookup processEnv();

ConfigResult loadConfigFile(const std::string& path, const EnvLookup& env = processEnv());
// `name` is used as the file part of error messages; relative paths in the
// configuration (api_key_file, log.access_log, unix: listen addresses) are
// resolved against `base_dir` (loadConfigFile: the config file's directory).
ConfigResult loadConfigString(std::string_view yaml, const std::string& name,
                              const EnvLookup& env = processEnv(),
                              const std::string& base_dir = ".");

}  // namespace wfp
