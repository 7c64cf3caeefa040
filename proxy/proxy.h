// The proxy: owns its components in dependency order and carries the
// lifecycle (start, reload, drain). main.cc only parses argv and signals.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "proxy/access_log.h"
#include "proxy/cache_store.h"
#include "proxy/redis_client.h"
#include "proxy/config.h"
#include "proxy/event_loop.h"
#include "proxy/http_server.h"
#include "proxy/metrics.h"
#include "proxy/run_handler.h"
#include "proxy/scheduler.h"
#include "proxy/shared_budget.h"
#include "proxy/tls_context.h"
#include "proxy/upstream_client.h"

namespace wfp {

class Proxy {
 public:
  Proxy(EventLoop& loop, ConfigPtr config);
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  // Opens the access log and binds the listeners. False with `error` set on
  // failure (exit code 1).
  bool start(std::string* error);
  // Applies a new configuration atomically; listener changes need a restart.
  // The TLS files are read again first: when they do not load, the reload is
  // rejected as a whole (rejectReload) and nothing changes.
  void reload(ConfigPtr config);
  // A SIGHUP whose file was rejected: logs `errors`, keeps the running
  // configuration, and says so in workflow_proxy_config_last_reload_successful.
  void rejectReload(const std::vector<std::string>& errors);
  // Stops accepting, lets running and queued requests finish for up to
  // shutdown_grace_s, answers the rest with 503, then calls `done`.
  void drain(std::function<void()> done);

  const Config& config() const { return *config_; }

 private:
  void checkDrained();
  // A warning when the admin actions are reachable beyond this host with no
  // admin.token_file to guard them.
  void warnIfAdminExposed() const;
  // A warning for each change a reload cannot apply (it needs a restart).
  void warnRestartNeeded(const Config& next) const;
  // A warning when clients are named by certificate but none is asked for.
  void warnIfSubjectsUnused() const;
  // Puts `tls` on the client listener for new connections, and logs what changed.
  void applyTls(std::shared_ptr<const TlsContext> tls, bool reloading);

  EventLoop& loop_;
  ConfigPtr config_;
  ConfigPtr started_;  // the configuration the listeners, Redis and the backend were built from
  Metrics metrics_;
  AccessLog access_log_;
  bool grace_over_ = false;  // drain: the grace ran out, stop waiting for background work
  std::unique_ptr<RedisClient> redis_;  // when `redis` is configured
  std::unique_ptr<CacheStore> cache_;
  std::unique_ptr<SharedBudget> shared_budget_;  // rate_limit.shared
  Scheduler scheduler_;
  UpstreamClient upstream_;
  RunHandler handler_;
  std::unique_ptr<HttpServer> server_;
  std::unique_ptr<HttpServer> admin_server_;
  std::unique_ptr<Timer> drain_poll_;
  std::unique_ptr<Timer> drain_deadline_;
  std::function<void()> drain_done_;
};

// What `--check-config` adds to loading: opens (and closes again, leaving nothing behind) what start() opens — the
// access log file, the listeners' unix socket directories, the listen hosts
// (resolved as the start resolves them, bound with port 0) — and returns each
// problem as "file:line: message" (exit code 2). Files the loader reads
// (api_key_file) were already read by loadConfigFile(). A file added to the
// start (TLS, token files) belongs here too: the TLS files are loaded and
// checked as the start loads them (loadTlsContext).
std::vector<std::string> checkStart(const Config& config);

// The client listener's TLS context for `config.tls`: null without `tls:`,
// or when its files do not load, the certificate and key do not match, or
// the client CA file has no CA; `errors` then gets each problem as
// "file:line: tls.<key>: message" (never a key's content).
std::shared_ptr<const TlsContext> loadTlsContext(const Config& config, std::vector<std::string>* errors);

HttpServerLimits serverLimits(const Config& config);
std::unique_ptr<RedisClient> makeRedisClient(EventLoop& loop, const Config& config, Metrics& metrics);
UpstreamOptions upstreamOptions(const Config& config);

}  // namespace wfp
