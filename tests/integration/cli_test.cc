// The command line (SPEC §1): --check-config, exit codes, keygen, and the
// configurations shipped in conf/.
#include <gtest/gtest.h>

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

TEST(Cli, VersionAndHelp) {
  CliRun r = runProxy({"--version"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out.rfind("workflow-proxy ", 0), 0u);
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
