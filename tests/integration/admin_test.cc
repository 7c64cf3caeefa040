// The admin listener safe to expose (docs/security.md): admin.token_file
// guards the actions (purge), probes and the scrape stay open; the token is
// re-read on SIGHUP; a bad token file is a bad configuration; an exposed
// admin listener without a token is warned about.
#include <gtest/gtest.h>

#include <signal.h>

#include <string>

#include "tests/integration/harness.h"

namespace wfp::test {
namespace {

const std::string kPurge = R"({"organisation":"acme","workflow_id":"wf_admin"})";
constexpr const char* kUnauthorizedBody = R"({"error":"Unauthorized","success":false,"code":"unauthorized"})";

std::string tokenConfig(const std::string& token_path) {
  return baseConfig("admin:\n  token_file: " + token_path + "\n");
}

TEST(Admin, TheTokenGuardsPurgeAndNothingElse) {
  Simulator sim;
  TempDir secrets;
  secrets.write("admin-token", "  tok-3f9c1a7e5b\n");  // surrounding whitespace is not the token's
  ProxyProcess proxy(tokenConfig(secrets.file("admin-token")), sim.url());
  const int admin = proxy.adminPort();

  // The run goes through, then a purge is refused without the right token.
  ASSERT_EQ(httpRequest(proxy.port(), "POST", "/api/v1/run/wf_admin", {{"Authorization", "Bearer acme-client-key"}},
                        "{}").status,
            200);
  for (const Headers& wrong : {Headers{}, Headers{{"Authorization", "Bearer tok-3f9c1a7e5"}},
                               Headers{{"Authorization", "Bearer tok-3f9c1a7e5b0"}},
                               Headers{{"Authorization", "Basic tok-3f9c1a7e5b"}},
                               Headers{{"Authorization", "tok-3f9c1a7e5b"}},
                               Headers{{"Authorization", "Bearer acme-client-key"}}}) {
    HttpResponse r = httpRequest(admin, "POST", "/admin/purge", wrong, kPurge);
    EXPECT_EQ(r.status, 401) << r.raw;
    EXPECT_EQ(r.body, kUnauthorizedBody);
    EXPECT_EQ(r.header("WWW-Authenticate").value_or(""), R"(Bearer realm="workflow-proxy admin")");
  }
  // Nothing was purged: the same input is still a hit.
  HttpResponse hit = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_admin",
                                 {{"Authorization", "Bearer acme-client-key"}}, "{}");
  EXPECT_EQ(hit.header("X-Cache").value_or(""), "HIT") << hit.raw;

  // The scheme is case-insensitive (RFC 9110 §11.1).
  HttpResponse ok = httpRequest(admin, "POST", "/admin/purge", {{"Authorization", "bearer tok-3f9c1a7e5b"}}, kPurge);
  EXPECT_EQ(ok.status, 200) << ok.raw;
  EXPECT_EQ(ok.body, R"({"success":true})");
  HttpResponse after = httpRequest(proxy.port(), "POST", "/api/v1/run/wf_admin",
                                   {{"Authorization", "Bearer acme-client-key"}}, "{}");
  EXPECT_EQ(after.header("X-Cache").value_or(""), "MISS") << after.raw;
  EXPECT_EQ(sim.stats()["runs"], 2);

  // Probes and the scrape need no token.
  EXPECT_EQ(httpRequest(admin, "GET", "/healthz").status, 200);
  EXPECT_EQ(httpRequest(admin, "GET", "/readyz").status, 200);
  EXPECT_EQ(httpRequest(admin, "GET", "/metrics").status, 200);
  // The token never reaches the log.
  EXPECT_EQ(proxy.log().find("tok-3f9c1a7e5b"), std::string::npos) << proxy.log();
  EXPECT_EQ(readFile(proxy.dir().file("access.log")).find("tok-3f9c1a7e5b"), std::string::npos);
}

TEST(Admin, ATokenFileIsReReadOnReloadAndABadOneIsRejected) {
  Simulator sim;
  TempDir secrets;
  secrets.write("admin-token", "first-token\n");
  ProxyProcess proxy(tokenConfig(secrets.file("admin-token")), sim.url());
  const int admin = proxy.adminPort();
  auto purge = [&](const std::string& token) {
    return httpRequest(admin, "POST", "/admin/purge", {{"Authorization", "Bearer " + token}}, kPurge).status;
  };
  EXPECT_EQ(purge("first-token"), 200);

  // Rotated: the new token works after SIGHUP, the old one no longer.
  secrets.write("admin-token", "second-token\n");
  proxy.process().signal(SIGHUP);
  ASSERT_TRUE(eventually([&] { return purge("second-token") == 200; })) << proxy.log();
  EXPECT_EQ(purge("first-token"), 401);

  // Emptied: the reload is rejected and the running token stays.
  secrets.write("admin-token", "\n");
  proxy.process().signal(SIGHUP);
  ASSERT_TRUE(eventually([&] { return proxy.log().find("reload rejected") != std::string::npos; }));
  EXPECT_TRUE(eventually([&] { return proxy.log().find("admin.token_file: ") != std::string::npos; }))
      << proxy.log();
  EXPECT_NE(proxy.log().find("is empty"), std::string::npos) << proxy.log();
  EXPECT_EQ(purge("second-token"), 200);
}

TEST(Admin, AMissingTokenFileIsABadConfiguration) {
  TempDir dir;
  dir.write("proxy.yaml", "admin:\n  token_file: " + dir.file("nope") +
                              "\norganisations:\n  - name: acme\n    api_key: sk_x\n");
  Process check({WFP_PROXY_BIN, "--check-config", "--config", dir.file("proxy.yaml")}, {}, dir.file("out.log"),
                false);
  auto code = check.wait(std::chrono::seconds(10));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 2);
  EXPECT_NE(readFile(dir.file("out.log")).find("admin.token_file: cannot read '" + dir.file("nope") + "'"),
            std::string::npos)
      << readFile(dir.file("out.log"));
}

TEST(Admin, AnExposedAdminListenerWithoutATokenIsWarnedAbout) {
  Simulator sim;
  {
    ProxyProcess open(baseConfig("admin_listen: 0.0.0.0:0\n"), sim.url());
    EXPECT_TRUE(eventually([&] { return open.log().find("admin.token_file is not set") != std::string::npos; }))
        << open.log();
  }
  TempDir secrets;
  secrets.write("admin-token", "t0k\n");
  ProxyProcess guarded(baseConfig("admin_listen: 0.0.0.0:0\nadmin:\n  token_file: " + secrets.file("admin-token") +
                                  "\n"),
                       sim.url());
  ProxyProcess local(baseConfig(), sim.url());  // 127.0.0.1: nothing to warn about
  EXPECT_EQ(httpRequest(guarded.adminPort(), "GET", "/healthz").status, 200);
  EXPECT_EQ(httpRequest(local.adminPort(), "GET", "/healthz").status, 200);
  EXPECT_EQ(guarded.log().find("admin.token_file is not set"), std::string::npos) << guarded.log();
  EXPECT_EQ(local.log().find("admin.token_file is not set"), std::string::npos) << local.log();
}

}  // namespace
}  // namespace wfp::test
