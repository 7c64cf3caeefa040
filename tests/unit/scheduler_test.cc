// The scheduler's bookkeeping around the rate limiter, with a clock that
// moves on every reading as the real one does (a clock that stands still
// hides a start dated twice).
#include "proxy/scheduler.h"

#include <gtest/gtest.h>

#include <vector>

namespace wfp {
namespace {

using namespace std::chrono_literals;

class TickingClock final : public Clock {
 public:
  Clock::time_point now() const override { return now_ += 1us; }

 private:
  mutable Clock::time_point now_ = Clock::time_point(1000s);
};

ConfigPtr budgetOf(int requests) {
  ConfigResult r = loadConfigString("organisations:\n"
                                    "  - name: acme\n"
                                    "    api_key: sk_test_acme\n"
                                    "    rate_limit:\n"
                                    "      requests: " +
                                        std::to_string(requests) +
                                        "\n"
                                        "      window_s: 1\n",
                                    "test.yaml", [](const std::string&) { return std::nullopt; });
  EXPECT_TRUE(r.config) << (r.errors.empty() ? "" : r.errors[0]);
  return r.config;
}

Admission acme() { return Admission{"acme", "acme", "client", 1}; }

// A started request sent upstream is one start, not two: the next one of a
// budget of two still goes at once.
TEST(Scheduler, ASentStartCountsOnce) {
  EventLoop loop;
  TickingClock clock;
  Metrics metrics;
  Scheduler scheduler(loop, clock, metrics);
  scheduler.configure(budgetOf(2));
  std::vector<int> started;
  auto submit = [&](int n) {
    return scheduler.submit(acme(), {[&started, n] { started.push_back(n); }, [](RejectReason, int) {}});
  };
  uint64_t first = submit(1);
  ASSERT_EQ(started, std::vector<int>{1});
  scheduler.sending(first);
  uint64_t second = submit(2);
  EXPECT_EQ(started, (std::vector<int>{1, 2}));
  scheduler.sending(second);
  submit(3);
  EXPECT_EQ(started.size(), 2u) << "the third waits for the window";
  EXPECT_EQ(scheduler.queued(), 1u);
  scheduler.rejectAll(RejectReason::ShuttingDown);
}

}  // namespace
}  // namespace wfp
