// The harness itself: a proxy that ends before the test does fails the test,
// unless the test ended it (or said it would end).
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <signal.h>

#include "tests/integration/harness.h"

namespace wfp::test {
namespace {

using namespace std::chrono_literals;

// Ends the proxy behind the harness's back, the way a crash or the OOM killer
// would.
void endBehindTheHarness(ProxyProcess& proxy, int signo) {
  ::kill(proxy.process().pid(), signo);
  ASSERT_TRUE(eventually([&] { return !proxy.process().running(); }, 5s));
}

TEST(Harness, AProxyThatEndedOnItsOwnFailsTheTest) {
  Simulator sim;
  EXPECT_NONFATAL_FAILURE(
      {
        ProxyProcess proxy(baseConfig(), sim.url());
        endBehindTheHarness(proxy, SIGKILL);
      },
      "the proxy ended before the test did (killed by signal 9");
  EXPECT_NONFATAL_FAILURE(
      {
        ProxyProcess proxy(baseConfig(), sim.url());
        endBehindTheHarness(proxy, SIGABRT);
      },
      "the proxy ended before the test did (killed by signal 6");
}

TEST(Harness, AnEndTheTestAskedForIsNotAFailure) {
  Simulator sim;
  {
    ProxyProcess proxy(baseConfig(), sim.url());
    proxy.process().signal(SIGKILL);  // deliberately
    ASSERT_TRUE(eventually([&] { return !proxy.process().running(); }, 5s));
  }
  {
    ProxyProcess proxy(baseConfig(), sim.url());
    proxy.process().signal(SIGTERM);  // the harness still checks for exit code 0
    ASSERT_TRUE(eventually([&] { return !proxy.process().running(); }, 5s));
  }
  {
    ProxyProcess proxy(baseConfig(), sim.url());
    endBehindTheHarness(proxy, SIGKILL);
    EXPECT_EQ(proxy.process().wait(0ms), 128 + SIGKILL);  // the test saw how it ended
  }
  {
    ProxyProcess proxy(baseConfig(), sim.url());
    proxy.expectExit();
    endBehindTheHarness(proxy, SIGKILL);
  }
}

}  // namespace
}  // namespace wfp::test
