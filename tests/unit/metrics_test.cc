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


TEST(Metrics, TheLastReloadAndItsTime) {
  Metrics m;
  m.recordReload(true, 1796213457.5);
  std::string text = m.render();
  EXPECT_NE(text.find("\nworkflow_proxy_config_last_reload_successful 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nworkflow_proxy_config_last_reload_success_timestamp_seconds 1796213457.5\n"),
            std::string::npos);
  m.recordReload(false, 1796213999);
  text = m.render();
  EXPECT_NE(text.find("\nworkflow_proxy_config_last_reload_successful 0\n"), std::string::npos) << text;
  // A rejected reload leaves the time of the last success.
  EXPECT_NE(text.find("\nworkflow_proxy_config_last_reload_success_timestamp_seconds 1796213457.5\n"),
            std::string::npos);
}

TEST(Metrics, ProcessFamiliesAreThere) {
  std::string text = Metrics().render();
  for (const char* family : {"process_cpu_seconds_total counter", "process_resident_memory_bytes gauge",
                             "process_virtual_memory_bytes gauge", "process_open_fds gauge", "process_max_fds gauge",
                             "process_start_time_seconds gauge"}) {
    EXPECT_NE(text.find(std::string("# TYPE ") + family + "\n"), std::string::npos) << family;
  }
  std::smatch m;
  ASSERT_TRUE(std::regex_search(text, m, std::regex(R"(\nprocess_resident_memory_bytes (\d+)\n)")));
  EXPECT_GT(std::stod(m[1]), 1e6);
  ASSERT_TRUE(std::regex_search(text, m, std::regex(R"(\nprocess_start_time_seconds ([0-9.]+)\n)")));
  EXPECT_GT(std::stod(m[1]), 1.7e9);
}
}  // namespace
}  // namespace wfp
