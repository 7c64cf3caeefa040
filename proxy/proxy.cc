#include "proxy/proxy.h"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <utility>

#include <spdlog/spdlog.h>

#include "proxy/logging.h"

namespace wfp {

HttpServerLimits serverLimits(const Config& config) {
  HttpServerLimits limits;
  limits.max_body_bytes = config.limits.max_body_bytes;
  limits.header_timeout_s = config.limits.client_header_timeout_s;
  limits.max_connections = config.limits.max_client_connections;
  return limits;
}

UpstreamOptions upstreamOptions(const Config& config) {
  UpstreamOptions options;
  options.timeout_s = config.upstream.timeout_s;
  options.connect_timeout_s = config.upstream.connect_timeout_s;
  options.max_connections = config.upstream.max_connections;
  options.tls_verify = config.upstream.tls_verify;
  return options;
}

std::unique_ptr<RedisClient> makeRedisClient(EventLoop& loop, const Config& config, Metrics& metrics) {
  metrics.setRedisConfigured(config.redis.has_value());
  if (!config.redis) return nullptr;
  RedisOptions options;
  options.url = config.redis->endpoint;  // parsed by the loader: nothing left to reject here
  options.timeout_ms = config.redis->timeout_ms;
  options.on_state = [&metrics](bool up) { metrics.setRedisUp(up); };
  return std::make_unique<RedisClient>(loop, std::move(options));
}

namespace {

std::string parentDirectory(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// What HttpServer::listen() needs of an address, found without taking it
// (a running proxy may hold it: `--check-config` runs next to one before a
// reload or a restart). Not checked: whether the port is free, and whether a
// port below 1024 may be bound.
bool checkListen(const ListenAddress& address, std::string* error) {
  if (address.kind == ListenAddress::Kind::Unix) {
    struct stat st {};
    if (::lstat(address.path.c_str(), &st) == 0) {
      if (S_ISSOCK(st.st_mode)) return true;  // stale (the start replaces it) or live
      *error = address.path + " exists and is not a socket";
      return false;
    }
    if (errno != ENOENT) {
      *error = address.path + ": " + std::strerror(errno);
      return false;
    }
    // bind() creates the socket file: its directory must exist and take it.
    std::string dir = parentDirectory(address.path);
    int err = 0;
    if (::stat(dir.c_str(), &st) != 0) {
      err = errno;
    } else if (!S_ISDIR(st.st_mode)) {
      err = ENOTDIR;
    } else if (::access(dir.c_str(), W_OK | X_OK) != 0) {
      err = errno;
    }
    if (err != 0) {
      *error = address.path + ": directory " + dir + ": " + std::strerror(err);
      return false;
    }
    return true;
  }
  // The host must resolve as the start resolves it, to an address of this
  // machine: bound here with port 0, which never conflicts.
  AddrinfoList list = resolveListenAddress(address, error);
  if (!list) return false;
  int last_error = EADDRNOTAVAIL;
  for (addrinfo* ai = list.get(); ai; ai = ai->ai_next) {
    sockaddr_storage ss{};
    std::memcpy(&ss, ai->ai_addr, std::min<size_t>(ai->ai_addrlen, sizeof ss));
    if (ss.ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(&ss)->sin_port = 0;
    if (ss.ss_family == AF_INET6) reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port = 0;
    int s = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (s < 0) {
      last_error = errno;
      continue;
    }
    int rc = ::bind(s, reinterpret_cast<sockaddr*>(&ss), ai->ai_addrlen);
    last_error = errno;
    ::close(s);
    if (rc == 0) return true;
  }
  *error = address.text + ": " + std::strerror(last_error);
  return false;
}

// The admin listener: the client limits, with room for a few scrapers and
// probes rather than a service's connections.
HttpServerLimits adminLimits(const Config& config) {
  HttpServerLimits limits = serverLimits(config);
  limits.max_connections = 256;
  return limits;
}

double unixSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// 127.0.0.0/8, ::1, localhost: only this host can connect.
bool isLoopbackHost(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0 || host == "::ffff:127.0.0.1";
}

}  // namespace

namespace {
std::vector<std::pair<int, std::string>> tlsProblems(const Config& config, std::shared_ptr<const TlsContext>* loaded) {
  std::vector<std::pair<int, std::string>> problems;
  if (!config.tls) return problems;
  std::vector<TlsContext::Problem> found;
  std::shared_ptr<const TlsContext> tls = TlsContext::load(*config.tls, &found);
  for (const auto& p : found) problems.emplace_back(config.lineOf(p.key), p.key + ": " + p.message);
  if (loaded) *loaded = std::move(tls);
  return problems;
}
}  // namespace

std::shared_ptr<const TlsContext> loadTlsContext(const Config& config, std::vector<std::string>* errors) {
  std::shared_ptr<const TlsContext> tls;
  for (const auto& [line, message] : tlsProblems(config, &tls)) {
    if (errors) errors->push_back(config.source + ":" + std::to_string(line) + ": " + message);
  }
  return tls;
}

std::vector<std::string> checkStart(const Config& config) {
  std::vector<std::pair<int, std::string>> problems = tlsProblems(config, nullptr);
  auto check = [&](const char* key, const std::function<bool(std::string*)>& opens) {
    std::string error;
    if (!opens(&error)) problems.emplace_back(config.lineOf(key), std::string(key) + ": " + error);
  };
  check("log.access_log", [&](std::string* e) { return AccessLog::check(config.log.access_log, e); });
  check("listen", [&](std::string* e) { return checkListen(config.listen, e); });
  if (config.admin_listen) {
    check("admin_listen", [&](std::string* e) { return checkListen(*config.admin_listen, e); });
  }
  std::stable_sort(problems.begin(), problems.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::string> errors;
  for (const auto& [line, message] : problems) {
    errors.push_back(config.source + ":" + std::to_string(line) + ": " + message);
  }
  return errors;
}

Proxy::Proxy(EventLoop& loop, ConfigPtr config)
    : loop_(loop),
      config_(std::move(config)),
      started_(config_),
      redis_(makeRedisClient(loop, *config_, metrics_)),
      cache_(std::make_unique<CacheStore>(
          loop, config_->cache.backend == CacheConfig::Backend::Redis ? redis_.get() : nullptr,
          config_->redis ? config_->redis->key_prefix : std::string("wfp:"), config_->cache.memory_max_bytes)),
      shared_budget_(config_->rate_limit.shared && redis_
                         ? std::make_unique<SharedBudget>(loop, *redis_, config_->redis->key_prefix)
                         : nullptr),
      scheduler_(loop, loop, metrics_, shared_budget_.get()),
      upstream_(loop, upstreamOptions(*config_)),
      handler_(loop, upstream_, scheduler_, access_log_, metrics_, *cache_, redis_.get(),
               shared_budget_ ? redis_.get() : nullptr,  // quotas are shared as the budgets are
               config_->redis ? config_->redis->key_prefix : std::string("wfp:")) {
  handler_.setConfig(config_);  // and the scheduler
}

Proxy::~Proxy() {
  // Servers first: their destructors abort exchanges, which finish requests
  // in the handler; then the handler cancels what is left upstream.
  admin_server_.reset();
  server_.reset();
}

bool Proxy::start(std::string* error) {
  std::vector<std::string> tls_errors;
  std::shared_ptr<const TlsContext> tls = loadTlsContext(*config_, &tls_errors);
  if (!tls_errors.empty()) {
    std::string joined;
    for (const auto& e : tls_errors) joined += (joined.empty() ? "" : "; ") + e;
    if (error) *error = joined;
    return false;
  }
  if (!access_log_.open(config_->log.access_log, error)) return false;
  metrics_.recordReload(true, unixSeconds());
  warnIfAdminExposed();
  warnIfSubjectsUnused();
  server_ = std::make_unique<HttpServer>(loop_, serverLimits(*config_),
                                         [this](HttpExchange& ex) { handler_.handleClient(ex); });
  auto record_error = [this](const HttpServerError& e) { handler_.recordServerError(e); };
  server_->setErrorObserver(record_error);
  server_->setTlsFailureObserver([this](TlsFailure failure, std::string_view, std::string_view) {
    metrics_.countTlsHandshakeFailure(tlsFailureLabel(failure));
  });
  applyTls(std::move(tls), false);
  server_->setHeadHandler([this](HttpExchange& ex) { return handler_.handleHead(ex); });
  handler_.setConnectionCounter([this] { return static_cast<int64_t>(server_ ? server_->connectionCount() : 0); });
  BoundListener bound;
  if (!server_->listen(config_->listen, &bound, error)) return false;
  spdlog::info("listening on {} (client)", bound.address);
  if (config_->admin_listen) {
    admin_server_ = std::make_unique<HttpServer>(loop_, adminLimits(*config_),
                                                 [this](HttpExchange& ex) { handler_.handleAdmin(ex); });
    admin_server_->setErrorObserver(record_error);
    if (!admin_server_->listen(*config_->admin_listen, &bound, error)) return false;
    spdlog::info("listening on {} (admin)", bound.address);
  }
  return true;
}

void Proxy::reload(ConfigPtr config) {
  // The certificate files are read again at every reload (a renewed
  // certificate under the same name is the common case). First, so that a
  // reload whose files do not load changes nothing at all.
  std::vector<std::string> tls_errors;
  std::shared_ptr<const TlsContext> tls = loadTlsContext(*config, &tls_errors);
  if (!tls_errors.empty()) {
    rejectReload(tls_errors);
    return;
  }
  warnRestartNeeded(*config);
  if (config->log.access_log != config_->log.access_log || config->log.access_log != "stderr") {
    std::string error;
    if (!access_log_.open(config->log.access_log, &error)) spdlog::error("reload: access log: {}", error);
  }
  if (auto level = parseLogLevel(config->log.level)) setLogLevel(*level);
  setLogFormat(config->log.format);
  upstream_.setOptions(upstreamOptions(*config));
  cache_->setMemoryMaxBytes(config->cache.memory_max_bytes);
  if (server_) server_->setLimits(serverLimits(*config));
  if (admin_server_) admin_server_->setLimits(adminLimits(*config));
  handler_.setConfig(config);  // and the scheduler: queued runs it starts carry the new key
  config_ = std::move(config);
  applyTls(std::move(tls), true);
  metrics_.recordReload(true, unixSeconds());
  spdlog::info("configuration reloaded from {}", config_->source);
  warnIfAdminExposed();
  warnIfSubjectsUnused();
}

// `tls` may be added, changed or removed by a reload: the listening socket
// stays, only what new connections speak on it changes (docs/security.md).
// Open connections keep the TLS (or plain HTTP) they were accepted with.
void Proxy::applyTls(std::shared_ptr<const TlsContext> tls, bool reloading) {
  if (!server_) return;
  const bool had = server_->tls();
  if (tls) {
    const char* what = !reloading ? "client listener" : had ? "reloaded for new connections" : "added for new connections";
    spdlog::info("tls: {}: certificate {}{}", what, tls->description(),
                 tls->verifiesClients() ? "; client certificates required" : "");
    if (tls->outsideValidity()) {
      spdlog::warn("tls: the certificate in {} is outside its validity period ({})", config_->tls->cert_file,
                   tls->description());
    }
  } else if (had) {
    spdlog::warn("reload: tls removed: new connections on the client listener speak plain HTTP");
  }
  server_->setTls(std::move(tls));
}

void Proxy::warnIfSubjectsUnused() const {
  if (config_->tls && !config_->tls->client_ca_file.empty()) return;
  for (const auto& org : config_->organisations) {
    for (const auto& client : org.clients) {
      if (client.tls_subject.empty()) continue;
      spdlog::warn("{}.clients.{}.tls_subject is set but tls.client_ca_file is not: no client certificate is asked "
                   "for, so no client is named by one",
                   org.name, client.name);
      return;
    }
  }
}

// What is built once, at the start: the listeners, the Redis client, the
// cache backend, the shared budget. A change to it is applied by the next
// start, and said so at each reload that asks for it (compared with what
// runs, not with the previous file).
void Proxy::warnRestartNeeded(const Config& next) const {
  const Config& now = *started_;
  auto admin = [](const Config& c) { return c.admin_listen ? c.admin_listen->text : std::string(); };
  if (next.listen.text != now.listen.text || admin(next) != admin(now)) {
    spdlog::warn("reload: listen/admin_listen changed; the new addresses take effect after a restart");
  }
  auto redis = [](const Config& c) {
    return c.redis ? c.redis->url + "\n" + c.redis->key_prefix + "\n" + std::to_string(c.redis->timeout_ms)
                   : std::string();
  };
  if (redis(next) != redis(now)) spdlog::warn("reload: redis changed; it takes effect after a restart");
  auto cache_in_redis = [](const Config& c) { return c.cache.backend == CacheConfig::Backend::Redis; };
  if (cache_in_redis(next) != cache_in_redis(now)) {
    spdlog::warn("reload: cache.backend changed to or from redis; that takes effect after a restart");
  }
  if (next.rate_limit.shared != now.rate_limit.shared) {
    spdlog::warn("reload: rate_limit.shared changed; it takes effect after a restart");
  }
}

void Proxy::rejectReload(const std::vector<std::string>& errors) {
  metrics_.recordReload(false, 0);
  spdlog::error("reload rejected, keeping the running configuration ({} problem(s)):", errors.size());
  for (const auto& e : errors) spdlog::error("  {}", e);
}

void Proxy::warnIfAdminExposed() const {
  // With `admin_listen: ""` the probes and the scrape are served on listen,
  // and /admin/purge is an ordinary (forwarded) path: no action to guard.
  if (config_->admin.token_sha256 || !config_->admin_listen) return;
  const ListenAddress& where = *config_->admin_listen;
  if (where.kind != ListenAddress::Kind::Tcp || isLoopbackHost(where.host)) return;
  spdlog::warn("admin routes on {} are reachable beyond this host and admin.token_file is not set: "
               "anyone who reaches it may POST /admin/purge",
               where.text);
}

void Proxy::drain(std::function<void()> done) {
  if (drain_done_) return;  // already draining
  drain_done_ = std::move(done);
  handler_.beginDrain();
  if (server_) {
    server_->stopAccepting();
    server_->closeIdleConnections();
  }
  spdlog::info("draining: {} request(s) in progress, grace {} s", handler_.activeRequests(),
               config_->shutdown_grace_s);
  drain_deadline_ = std::make_unique<Timer>(loop_, [this] {
    spdlog::warn("drain grace over: answering {} request(s) with 503", handler_.activeRequests());
    if (size_t runs = handler_.runsInFlight()) spdlog::warn("drain grace over: {} run(s) not stored", runs);
    grace_over_ = true;
    handler_.cancelAll();
    checkDrained();
  });
  drain_deadline_->startSeconds(config_->shutdown_grace_s);
  drain_poll_ = std::make_unique<Timer>(loop_, [this] { checkDrained(); });
  checkDrained();
}

// Drained: no client request left, and — until the grace is over — no run
// still upstream (it is stored when it completes, even without a client) and
// no Redis command unanswered (a cache write of the last run, say).
void Proxy::checkDrained() {
  size_t exchanges = server_ ? server_->exchangeCount() : 0;
  bool background = !grace_over_ && (handler_.runsInFlight() > 0 ||
                                     (redis_ && redis_->up() && redis_->pendingCommands() > 0));
  if (handler_.activeRequests() == 0 && exchanges == 0 && !background) {
    if (drain_deadline_) drain_deadline_->cancel();
    drain_poll_->cancel();
    auto done = std::move(drain_done_);
    drain_done_ = [] {};
    if (done) done();
    return;
  }
  if (server_) server_->closeIdleConnections();
  drain_poll_->start(std::chrono::milliseconds(20));
}

}  // namespace wfp
