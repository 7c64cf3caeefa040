// What /metrics says about the binary and about Redis, and how it prints
// bucket bounds.
#include "proxy/metrics.h"

#include <gtest/gtest.h>

#include <regex>
#include <string>

namespace wfp {
namespace {

TEST(Metrics, BuildInfoNamesTheVersionAndTheCommit) {
  Metrics m;
  std::string text = m.render();
  EXPECT_TRUE(std::regex_search(
      text, std::regex(R"re(\nworkflow_proxy_build_info\{version="\d+\.\d+\.\d+",commit="([0-9a-f]{12}(-dirty)?|unknown)"\} 1\n)re")))
      << text.substr(0, 400);
  EXPECT_NE(text.find("# TYPE workflow_proxy_build_info gauge\n"), std::string::npos);
}

TEST(Metrics, BucketBoundsArePrintedAsWrittenNotWithSeventeenDigits) {
  Metrics m;
  m.observeUpstreamSeconds(0.004);
  std::string text = m.render();
  EXPECT_NE(text.find(R"(workflow_proxy_upstream_duration_seconds_bucket{le="0.005"} 1)"), std::string::npos)
      << text;
  EXPECT_NE(text.find(R"(workflow_proxy_upstream_duration_seconds_bucket{le="5e-05"} 0)"), std::string::npos);
  EXPECT_EQ(text.find("0000000000"), std::string::npos) << "a bound printed with 17 digits";
}

TEST(Metrics, RedisUpHasASampleOnlyWhenRedisIsConfigured) {
  Metrics m;
  std::string text = m.render();
  EXPECT_NE(text.find("# TYPE workflow_proxy_redis_up gauge\n"), std::string::npos) << "the family is always there";
  EXPECT_EQ(text.find("\nworkflow_proxy_redis_up "), std::string::npos) << "no Redis: no sample, nothing to be down";
  m.setRedisConfigured(true);
  EXPECT_NE(m.render().find("\nworkflow_proxy_redis_up 0\n"), std::string::npos);
  m.setRedisUp(true);
  EXPECT_NE(m.render().find("\nworkflow_proxy_redis_up 1\n"), std::string::npos);
}

}  // namespace
}  // namespace wfp
