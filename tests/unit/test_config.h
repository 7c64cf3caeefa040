// Configurations for unit tests of the run path, loaded by the real loader.
#pragma once

#include <string>

#include <gtest/gtest.h>

#include "proxy/config.h"

namespace wfp {

// `yaml` loaded as a file would be (no environment); a failure fails the test.
inline ConfigPtr configFromYaml(const std::string& yaml) {
  ConfigResult r = loadConfigString(yaml, "test.yaml", [](const std::string&) { return std::nullopt; });
  EXPECT_TRUE(r.config) << (r.errors.empty() ? "" : r.errors[0]);
  return r.config;
}

// One organisation, acme, with `key` and `requests` starts a second.
inline ConfigPtr acmeConfig(const std::string& key, int requests, int queue_max = 100, int retry_429 = 3) {
  return configFromYaml("rate_limit:\n  queue_max: " + std::to_string(queue_max) +
                        "\n  retry_429: " + std::to_string(retry_429) +
                        "\norganisations:\n  - name: acme\n    api_key: " + key +
                        "\n    rate_limit:\n      requests: " + std::to_string(requests) + "\n      window_s: 1\n");
}

}  // namespace wfp
