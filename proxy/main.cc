// argv, --check-config, keygen, signals and the service manager's
// notifications. No proxy logic here.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <sys/resource.h>

#include <spdlog/spdlog.h>

#include "build_info.h"  // generated: WFP_COMMIT
#include "proxy/config.h"
#include "proxy/event_loop.h"
#include "proxy/keygen.h"
#include "proxy/logging.h"
#include "proxy/proxy.h"
#include "proxy/service_notify.h"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;

const char* kUsage =
    "usage: workflow-proxy [--config PATH] [--check-config] [--log-level LEVEL] [--version] [--help]\n"
    "       workflow-proxy keygen [--name NAME]\n"
    "\n"
    "  --config PATH      YAML configuration (default: $WORKFLOW_PROXY_CONFIG,\n"
    "                     else /etc/workflow-proxy/workflow-proxy.yaml)\n"
    "  --check-config     validate the configuration and open what the start opens (log file,\n"
    "                     listen addresses, key files); print 'config OK' or every problem, exit\n"
    "  --log-level LEVEL  trace | debug | info | warn | error (overrides log.level)\n"
    "  --version          print the version and the commit it was built from, and exit\n"
    "  keygen             print a new client key and its `clients:` entry\n"
    "\n"
    "Signals: SIGHUP reloads the configuration; SIGTERM/SIGINT drain and exit.\n"
    "Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad configuration or arguments.\n";

int usageError(const std::string& message) {
  std::fprintf(stderr, "workflow-proxy: %s\n%s", message.c_str(), kUsage);
  return kExitUsage;
}

int runKeygen(int argc, char** argv) {
  std::string name = "my-service";
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--name" && i + 1 < argc) {
      name = argv[++i];
    } else if (arg.rfind("--name=", 0) == 0) {
      name = arg.substr(7);
    } else if (arg == "--help" || arg == "-h") {
      std::fputs("usage: workflow-proxy keygen [--name NAME]\n", stdout);
      return kExitOk;
    } else {
      return usageError("keygen: unknown argument '" + arg + "'");
    }
  }
  if (name.empty()) return usageError("keygen: --name must not be empty");
  std::fputs(wfp::keygenOutput(wfp::newClientKey(), name).c_str(), stdout);
  return kExitOk;
}

uint64_t monotonicMicros() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "keygen") return runKeygen(argc, argv);

  std::string config_path;
  bool check_only = false;
  std::string log_level;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) return nullptr;
      (void)flag;
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return kExitOk;
    } else if (arg == "--version") {
      std::printf("workflow-proxy %s (commit %s)\n", WFP_VERSION, WFP_COMMIT);
      return kExitOk;
    } else if (arg == "--check-config") {
      check_only = true;
    } else if (arg == "--config") {
      const char* v = value("--config");
      if (!v) return usageError("--config needs a path");
      config_path = v;
    } else if (arg.rfind("--config=", 0) == 0) {
      config_path = arg.substr(9);
    } else if (arg == "--log-level") {
      const char* v = value("--log-level");
      if (!v) return usageError("--log-level needs a level");
      log_level = v;
    } else if (arg.rfind("--log-level=", 0) == 0) {
      log_level = arg.substr(12);
    } else {
      return usageError("unknown argument '" + arg + "'");
    }
  }
  if (!log_level.empty() && !wfp::parseLogLevel(log_level)) {
    return usageError("--log-level must be one of trace, debug, info, warn, error");
  }
  if (config_path.empty()) {
    const char* env = std::getenv("WORKFLOW_PROXY_CONFIG");
    config_path = env && *env ? env : "/etc/workflow-proxy/workflow-proxy.yaml";
  }

  wfp::ConfigResult loaded = wfp::loadConfigFile(config_path);
  if (!loaded.errors.empty()) {
    for (const auto& e : loaded.errors) std::fprintf(stderr, "%s\n", e.c_str());
    return kExitUsage;
  }
  if (check_only) {
    // What the start opens, opened (and closed) by the check too: "config OK"
    // means the proxy starts, barring a port in use. The start itself does
    // not run this: what it cannot open is exit 1 (the unit restarts it: an
    // address or a directory may appear), not 2 (RestartPreventExitStatus).
    std::vector<std::string> unusable = wfp::checkStart(*loaded.config);
    if (!unusable.empty()) {
      for (const auto& e : unusable) std::fprintf(stderr, "%s\n", e.c_str());
      return kExitUsage;
    }
    std::puts("config OK");
    return kExitOk;
  }

  wfp::initLogging(loaded.config->log.format);
  auto level = wfp::parseLogLevel(log_level.empty() ? loaded.config->log.level : log_level);
  wfp::setLogLevel(level.value_or(spdlog::level::info));
  std::signal(SIGPIPE, SIG_IGN);
  // One descriptor per client connection and per upstream connection: take
  // what the hard limit allows (LimitNOFILE= in the unit sets it).
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }

  int exit_code = kExitOk;
  try {
    wfp::EventLoop loop;
    auto proxy = std::make_unique<wfp::Proxy>(loop, loaded.config);

    // The handlers are installed before start() logs "listening on": a
    // SIGTERM sent as soon as that line appears is then a drain, not the
    // default action (exit 143). libevent holds it until the loop runs.
    bool stopping = false;
    auto drain = [&] {
      if (stopping) return;
      stopping = true;
      wfp::notifyServiceManager("STOPPING=1");
      proxy->drain([&] { loop.stop(); });
    };
    wfp::SignalWatch on_term(loop, SIGTERM, drain);
    wfp::SignalWatch on_int(loop, SIGINT, drain);
    wfp::SignalWatch on_hup(loop, SIGHUP, [&] {
      std::string notify = "RELOADING=1\nMONOTONIC_USEC=" + std::to_string(monotonicMicros());
      wfp::notifyServiceManager(notify);
      wfp::ConfigResult next = wfp::loadConfigFile(config_path);
      if (!next.errors.empty()) {
        proxy->rejectReload(next.errors);
      } else {
        if (!log_level.empty()) {
          auto copy = std::make_shared<wfp::Config>(*next.config);
          copy->log.level = log_level;
          next.config = copy;
        }
        proxy->reload(next.config);
      }
      wfp::notifyServiceManager("READY=1");
    });

    std::string error;
    if (!proxy->start(&error)) {
      spdlog::error("cannot start: {}", error);
      return kExitRuntime;
    }

    // Watchdog pings at half the interval systemd asks for.
    uint64_t watchdog_usec = wfp::watchdogIntervalMicros();
    std::unique_ptr<wfp::Timer> watchdog;
    if (watchdog_usec > 0) {
      watchdog = std::make_unique<wfp::Timer>(loop, [&] {
        wfp::notifyServiceManager("WATCHDOG=1");
        watchdog->start(std::chrono::microseconds(watchdog_usec / 2));
      });
      watchdog->start(std::chrono::microseconds(watchdog_usec / 2));
    }

    wfp::notifyServiceManager("READY=1");
    loop.run();
    watchdog.reset();
    proxy.reset();
    spdlog::info("stopped");
  } catch (const std::exception& e) {
    spdlog::critical("fatal: {}", e.what());
    exit_code = kExitRuntime;
  }
  return exit_code;
}
