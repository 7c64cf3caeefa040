// The command line (docs/configuration.md): --check-config, exit codes, keygen, and the
// configurations shipped in conf/.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/stat.h>

#include <filesystem>
#include <regex>

#include "proxy/hash.h"
#include "tests/integration/harness.h"

namespace wfp::test {
namespace {

struct CliRun {
  int code;
  std::string out;
  std::string err;
};

CliRun runProxy(std::vector<std::string> args, std::vector<std::string> env = {}) {
  TempDir dir;
  std::vector<std::string> argv{WFP_PROXY_BIN};
  for (auto& a : args) argv.push_back(a);
  Process p(argv, env, dir.file("err"), true);
  auto code = p.wait(std::chrono::seconds(20));
  CliRun r{code.value_or(-1), p.drainStdout(), readFile(dir.file("err"))};
  return r;
}

TEST(Cli, CheckConfigOk) {
  TempDir dir;
  dir.write("ok.yaml", "organisations:\n  - name: acme\n    api_key: sk_x\n");
  CliRun r = runProxy({"--check-config", "--config", dir.file("ok.yaml")});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, "config OK\n");
}

TEST(Cli, CheckConfigReportsEveryProblemWithFileAndLine) {
  TempDir dir;
  dir.write("bad.yaml",
            "lsiten: 127.0.0.1:8080\n"
            "upstream:\n"
            "  timeout_s: abc\n"
            "organisations:\n"
            "  - name: acme\n"
            "    api_key: sk_very_secret_value\n"
            "    bogus: 1\n");
  CliRun r = runProxy({"--check-config", "--config", dir.file("bad.yaml")});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.out, "");
  std::string f = dir.file("bad.yaml");
  EXPECT_NE(r.err.find(f + ":1: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(f + ":3: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(f + ":7: "), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("sk_very_secret_value"), std::string::npos);
}

// cache.workflows.<id>.key_ignore / key_normalize (docs/configuration.md):
// every bad path and normaliser is reported with its line; nothing starts.
TEST(Cli, CheckConfigReportsBadKeyRules) {
  TempDir dir;
  dir.write("keys.yaml",
            "organisations:\n"                        // 1
            "  - name: acme\n"                        // 2
            "    api_key: sk_x\n"                     // 3
            "cache:\n"                                // 4
            "  workflows:\n"                          // 5
            "    wf_a:\n"                             // 6
            "      key_ignore: [request_id, a..b]\n"  // 7
            "      key_normalize:\n"                  // 8
            "        - trim\n"                        // 9
            "        - uppercase\n"                   // 10
            "    wf_b:\n"                             // 11
            "      key_ignore:\n"                     // 12
            "        - .a\n"                          // 13
            "        - a.\n"                          // 14
            "        - ''\n");                        // 15
  CliRun r = runProxy({"--check-config", "--config", dir.file("keys.yaml")});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.out, "");
  const std::string f = dir.file("keys.yaml");
  const std::string path =
      " is not a member path (member names separated by '.': none empty, at most 32, printable UTF-8)";
  for (const std::string& line : {
           f + ":7: cache.workflows.wf_a.key_ignore: 'a..b'" + path,
           f + ":10: cache.workflows.wf_a.key_normalize: unknown normaliser 'uppercase' (expected trim, "
               "collapse_whitespace or lowercase)",
           f + ":13: cache.workflows.wf_b.key_ignore: '.a'" + path,
           f + ":14: cache.workflows.wf_b.key_ignore: 'a.'" + path,
           f + ":15: cache.workflows.wf_b.key_ignore: ''" + path,
       }) {
    EXPECT_NE(r.err.find(line + "\n"), std::string::npos) << "missing: " << line << "\nin:\n" << r.err;
  }
  // The good entries alone pass.
  dir.write("good.yaml",
            "organisations:\n  - name: acme\n    api_key: sk_x\n"
            "cache:\n  workflows:\n    wf_a:\n      key_ignore: [request_id, meta.trace_id]\n"
            "      key_normalize: [trim, collapse_whitespace, lowercase]\n");
  CliRun good = runProxy({"--check-config", "--config", dir.file("good.yaml")});
  EXPECT_EQ(good.code, 0) << good.err;
  EXPECT_EQ(good.out, "config OK\n");
}

TEST(Cli, BadArgumentsAndMissingFileExit2) {
  EXPECT_EQ(runProxy({"--no-such-flag"}).code, 2);
  EXPECT_EQ(runProxy({"--log-level", "loud", "--check-config"}).code, 2);
  CliRun r = runProxy({"--check-config", "--config", "/nonexistent/wfp.yaml"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("/nonexistent/wfp.yaml"), std::string::npos);
}

TEST(Cli, ConfigFromEnvironmentVariable) {
  TempDir dir;
  dir.write("env.yaml", "organisations:\n  - name: acme\n    api_key: ${ACME_KEY}\n");
  CliRun r = runProxy({"--check-config"}, {"WORKFLOW_PROXY_CONFIG=" + dir.file("env.yaml"), "ACME_KEY=sk_1"});
  EXPECT_EQ(r.code, 0) << r.err;
  r = runProxy({"--check-config"}, {"WORKFLOW_PROXY_CONFIG=" + dir.file("env.yaml")});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("ACME_KEY"), std::string::npos);
}

TEST(Cli, CannotBindExits1) {
  Simulator sim;  // holds a port
  TempDir dir;
  dir.write("c.yaml", "listen: 127.0.0.1:" + std::to_string(sim.port()) +
                          "\nadmin_listen: \"\"\norganisations:\n  - name: acme\n    api_key: sk_x\n");
  CliRun r = runProxy({"--config", dir.file("c.yaml")});
  EXPECT_EQ(r.code, 1);
}

// docs/http.md: "--check-config means it starts." Each of these passed
// --check-config and then stopped the start (exit 1): now the check says
// why, as file:line, with exit 2. The start refuses them too: exit 2 for a
// value the loader rejects, exit 1 for what it cannot open (systemd restarts
// it: RestartPreventExitStatus=2).
TEST(Cli, CheckConfigRejectsWhatTheStartWouldReject) {
  TempDir dir;
  dir.write("plain", "x");
  ::mkdir(dir.file("keys").c_str(), 0700);
  struct Case {
    std::string name;
    std::string yaml;  // the problem on line 2
    std::string message;
  };
  const std::string orgs = "organisations:\n  - name: acme\n    api_key: sk_x\n";
  const std::string head = "admin_listen: \"\"\n";
  const std::vector<Case> cases = {
      {"redis-db", head + "redis: {url: \"redis://127.0.0.1:6379/2000000\"}\n" + orgs,
       "redis.url: database must be a number from 0 to 1048576"},
      {"log-dir-missing", head + "log: {access_log: " + dir.file("no-such-dir/access.log") + "}\n" + orgs,
       "log.access_log: " + dir.file("no-such-dir/access.log") + ": No such file or directory"},
      {"log-under-file", head + "log: {access_log: " + dir.file("plain/access.log") + "}\n" + orgs,
       "log.access_log: " + dir.file("plain/access.log") + ": Not a directory"},
      {"log-is-dir", head + "log: {access_log: " + dir.file("keys") + "}\n" + orgs,
       "log.access_log: " + dir.file("keys") + ": Is a directory"},
      {"listen-foreign", head + "listen: 192.0.2.1:8080\n" + orgs,
       "listen: 192.0.2.1:8080: Cannot assign requested address"},
      {"listen-unix-dir", head + "listen: unix:" + dir.file("no-such-dir/wfp.sock") + "\n" + orgs,
       "listen: " + dir.file("no-such-dir/wfp.sock") + ": directory " + dir.file("no-such-dir")},
      {"admin-unix-file", "listen: 127.0.0.1:0\nadmin_listen: unix:" + dir.file("plain") + "\n" + orgs,
       "admin_listen: " + dir.file("plain") + " exists and is not a socket"},
      {"key-file-missing",
       head + "organisations:\n  - name: acme\n    api_key_file: " + dir.file("keys/acme") + "\n",
       "organisations.acme.api_key_file: cannot read"},
      {"key-file-is-dir", head + "organisations:\n  - name: acme\n    api_key_file: " + dir.file("keys") + "\n",
       "organisations.acme.api_key_file: cannot read"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::string path = dir.file(c.name + ".yaml");
    dir.write(c.name + ".yaml", c.yaml);
    // The line of the problem: 2, except for the key files (line 4).
    std::string where = path + (c.name.rfind("key-file", 0) == 0 ? ":4: " : ":2: ");
    CliRun check = runProxy({"--check-config", "--config", path});
    EXPECT_EQ(check.code, 2) << check.out << check.err;
    EXPECT_EQ(check.out, "");
    EXPECT_NE(check.err.find(where + c.message), std::string::npos) << check.err;
    CliRun start = runProxy({"--config", path});
    bool loader = c.name == "redis-db" || c.name.rfind("key-file", 0) == 0;
    EXPECT_EQ(start.code, loader ? 2 : 1) << start.err;
  }
  EXPECT_FALSE(std::filesystem::exists(dir.file("no-such-dir")));
}

// A configuration --check-config accepts starts: relative paths are the
// config file's (not the working directory's), a missing access log file is
// not created by the check but by the start, a Redis db at the bound is used.
TEST(Cli, AConfigThatPassesCheckConfigStarts) {
  TempDir dir;
  ::mkdir(dir.file("logs").c_str(), 0755);
  ::mkdir(dir.file("run").c_str(), 0755);
  dir.write("acme.key", "sk_from_file\n");
  dir.write("ok.yaml",
            "listen: 127.0.0.1:0\n"
            "admin_listen: unix:run/admin.sock\n"
            "log: {access_log: logs/access.log}\n"
            "redis: {url: \"redis://127.0.0.1:1/1048576\", timeout_ms: 50}\n"
            "organisations:\n  - name: acme\n    api_key_file: acme.key\n");
  CliRun check = runProxy({"--check-config", "--config", dir.file("ok.yaml")});
  ASSERT_EQ(check.code, 0) << check.err;
  EXPECT_EQ(check.out, "config OK\n");
  EXPECT_FALSE(std::filesystem::exists(dir.file("logs/access.log")));  // the check leaves nothing behind
  EXPECT_FALSE(std::filesystem::exists(dir.file("run/admin.sock")));

  Process proxy({WFP_PROXY_BIN, "--config", dir.file("ok.yaml")}, {}, dir.file("proxy.log"), false);
  bool listening = eventually([&] {
    std::string log = readFile(dir.file("proxy.log"));
    return log.find("(client)") != std::string::npos && log.find("(admin)") != std::string::npos;
  }, std::chrono::seconds(15));
  EXPECT_TRUE(listening) << readFile(dir.file("proxy.log"));
  EXPECT_TRUE(std::filesystem::exists(dir.file("logs/access.log")));
  EXPECT_TRUE(std::filesystem::exists(dir.file("run/admin.sock")));
  proxy.signal(SIGTERM);
  EXPECT_EQ(proxy.wait(std::chrono::seconds(15)), std::optional<int>(0)) << readFile(dir.file("proxy.log"));
}

TEST(Cli, VersionAndHelp) {
  CliRun r = runProxy({"--version"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out.rfind("workflow-proxy ", 0), 0u);
  // The commit it was built from: 12 hex digits (and "-dirty" for a tree
  // with changes), or "unknown" outside a git checkout.
  EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(^workflow-proxy \d+\.\d+\.\d+ \(commit ([0-9a-f]{12}(-dirty)?|unknown)\)\n$)")))
      << r.out;
  r = runProxy({"--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("keygen"), std::string::npos);
}

TEST(Cli, KeygenPrintsAKeyAndItsDigest) {
  CliRun r = runProxy({"keygen", "--name", "billing-service"});
  ASSERT_EQ(r.code, 0);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex("#   (wfp_[0-9a-f]{48})\n")));
  std::string key = m[1];
  EXPECT_NE(r.out.find("  - name: billing-service\n"), std::string::npos);
  EXPECT_NE(r.out.find("    key_sha256: " + sha256Hex(key) + "\n"), std::string::npos);
  CliRun again = runProxy({"keygen"});
  EXPECT_EQ(again.out.find(key), std::string::npos);
}

TEST(Cli, ShippedConfigurationsPassCheckConfig) {
  std::vector<std::string> env{"ACME_API_KEY=sk_a",        "GLOBEX_API_KEY=sk_g",    "AITUTOR_API_KEY=sk_t",
                               "TUTOR_WEB_KEY=k1",         "BILLING_KEY=k2",         "REDIS_URL=redis://127.0.0.1:6379/0",
                               "CREDENTIALS_DIRECTORY=/tmp", "WFP_DEMO_CLIENT_KEY=demo"};
  for (const char* name : {"workflow-proxy.yaml", "sidecar.yaml", "fleet.yaml", "demo.yaml"}) {
    CliRun r = runProxy({"--check-config", "--config", std::string(WFP_SOURCE_DIR) + "/conf/" + name}, env);
    EXPECT_EQ(r.code, 0) << name << ": " << r.err;
  }
}

}  // namespace
}  // namespace wfp::test
