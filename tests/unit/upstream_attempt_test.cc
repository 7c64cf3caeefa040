// UpstreamAttempt: the one way upstream (queue, key in force, 429 retry) of
// runs, stream flights and forwarded requests, on a virtual clock with a
// transport the test answers by hand.
#include "proxy/upstream_attempt.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "proxy/errors.h"
#include "proxy/headers.h"
#include "tests/simulation/sim_runtime.h"
#include "tests/unit/hand_transport.h"
#include "tests/unit/test_config.h"

namespace wfp {
namespace {

using sim::SimRuntime;

ConfigPtr withoutAcme() { return configFromYaml("organisations:\n  - name: other\n    api_key: sk_other\n"); }

// What the owner saw.
struct Seen {
  std::vector<int> heads;
  std::string body;
  int done = 0;
  AttemptEnd end;
  bool inside_start = false;
};

struct UpstreamAttemptTest : ::testing::Test {
  SimRuntime rt;
  Metrics metrics;
  Scheduler scheduler{rt, rt, metrics};
  HandTransport transport;
  KeysInForce keys;
  UpstreamPorts ports{rt, transport, scheduler, metrics, keys};

  void configure(const ConfigPtr& config) {
    keys.setConfig(config);
    scheduler.configure(config);
  }
  std::unique_ptr<UpstreamAttempt> attempt(Seen& seen, bool queued = true) {
    AttemptSpec spec;
    spec.request.method = "POST";
    spec.request.url = "http://upstream.test/api/v1/workflows/wf/run";
    spec.request.headers = {{"Authorization", ""}};
    if (queued) spec.admission = Admission{"acme", "acme", "client", 1};
    spec.org = "acme";
    spec.org_label = "acme";
    AttemptCallbacks cb;
    cb.on_head = [&seen](const UpstreamHead& head) { seen.heads.push_back(head.status); };
    cb.on_data = [&seen](std::string_view data) {
      seen.body.append(data);
      return true;
    };
    cb.on_done = [&seen](const AttemptEnd& end) {
      ++seen.done;
      seen.end = end;
    };
    return std::make_unique<UpstreamAttempt>(ports, std::move(spec), std::move(cb));
  }
  // With one start a second: `a` runs, `b` waits in the queue.
  std::pair<std::unique_ptr<UpstreamAttempt>, std::unique_ptr<UpstreamAttempt>> runningAndQueued(Seen& a_seen,
                                                                                                 Seen& b_seen) {
    configure(acmeConfig("sk", 1));
    auto a = attempt(a_seen);
    auto b = attempt(b_seen);
    a->start();
    b->start();
    return {std::move(a), std::move(b)};
  }
  void settle() {
    for (int i = 0; i < 10000 && rt.step(); ++i) {
    }
  }
};

TEST_F(UpstreamAttemptTest, SendsTheKeyInForceAtItsStartNotTheOneOfWhenItWasQueued) {
  configure(acmeConfig("sk_old", 1));
  Seen first, second;
  auto a = attempt(first);
  auto b = attempt(second);
  a->start();
  b->start();  // queued behind a: one start per second
  ASSERT_EQ(transport.started.size(), 1u);
  EXPECT_EQ(*findHeader(transport.started[0].headers, "authorization"), "Bearer sk_old");
  configure(acmeConfig("sk_new", 1));  // SIGHUP: the key rotates while b waits
  transport.answer(transport.last(), 200, "{}");
  settle();
  ASSERT_EQ(transport.started.size(), 2u);
  EXPECT_EQ(*findHeader(transport.started[1].headers, "authorization"), "Bearer sk_new");
  transport.answer(transport.last(), 200, "{\"ok\":1}");
  EXPECT_EQ(second.done, 1);
  EXPECT_EQ(second.body, "{\"ok\":1}");
}

TEST_F(UpstreamAttemptTest, ARetried429IsNeverShownAndTheRetryIsOneMoreStart) {
  configure(acmeConfig("sk", 10));
  Seen seen;
  auto a = attempt(seen);
  a->start();
  transport.answer(transport.last(), 429, "slow down", {{"Retry-After", "1"}});
  EXPECT_EQ(seen.heads.size(), 0u);
  EXPECT_EQ(seen.done, 0);
  settle();  // the organisation's pause, then the retry
  ASSERT_EQ(transport.started.size(), 2u);
  transport.answer(transport.last(), 200, "{\"success\":true}");
  EXPECT_EQ(seen.heads, std::vector<int>{200});
  EXPECT_EQ(seen.body, "{\"success\":true}");
  EXPECT_EQ(seen.done, 1);
  EXPECT_GT(a->queueMs(), 900.0);  // the pause counts as queue time
}

TEST_F(UpstreamAttemptTest, A429WithItsRetriesUsedIsTheAnswerWhole) {
  configure(acmeConfig("sk", 10, 100, /*retry_429=*/0));
  Seen seen;
  auto a = attempt(seen);
  a->start();
  transport.answer(transport.last(), 429, "slow down", {{"Retry-After", "1"}});
  EXPECT_EQ(transport.started.size(), 1u);
  EXPECT_EQ(seen.heads, std::vector<int>{429});
  EXPECT_EQ(seen.body, "slow down");
  EXPECT_EQ(seen.done, 1);
  EXPECT_FALSE(seen.end.rejected);
}

TEST_F(UpstreamAttemptTest, ARefusalInsideStartIsAnsweredOnALaterTurn) {
  configure(acmeConfig("sk", 1, /*queue_max=*/1));
  Seen a_seen, b_seen, c_seen;
  auto a = attempt(a_seen);
  auto b = attempt(b_seen);
  auto c = attempt(c_seen);
  a->start();  // runs
  b->start();  // queued
  c->start();  // the queue is full
  EXPECT_EQ(c_seen.done, 0) << "called back inside start()";
  rt.step();
  EXPECT_EQ(c_seen.done, 1);
  EXPECT_TRUE(c_seen.end.rejected);
  EXPECT_EQ(c_seen.end.why, RejectReason::QueueFull);
  EXPECT_EQ(transport.started.size(), 1u);
}

TEST_F(UpstreamAttemptTest, DestroyedWhileQueuedItLeavesTheQueueAndNeverStarts) {
  Seen a_seen, b_seen;
  auto [a, b] = runningAndQueued(a_seen, b_seen);
  EXPECT_EQ(scheduler.queued(), 1u);
  b.reset();
  EXPECT_EQ(scheduler.queued(), 0u);
  transport.answer(transport.last(), 200, "{}");
  settle();
  EXPECT_EQ(transport.started.size(), 1u);
  EXPECT_EQ(b_seen.done, 0);
}

TEST_F(UpstreamAttemptTest, DestroyedDuringTheTransferItCancelsItAndIsNeverCalledAgain) {
  configure(acmeConfig("sk", 10));
  Seen seen;
  auto a = attempt(seen);
  a->start();
  uint64_t id = transport.last();
  a.reset();
  EXPECT_EQ(transport.cancelled, std::vector<uint64_t>{id});
  EXPECT_EQ(transport.live.size(), 0u);
  settle();
  EXPECT_EQ(seen.done, 0);
  // Its slot was given back: another starts at once.
  Seen next;
  auto b = attempt(next);
  b->start();
  EXPECT_EQ(transport.started.size(), 2u);
}

TEST_F(UpstreamAttemptTest, AnOrganisationRemovedWhileQueuedGetsTheUpstreamsUnknownKeyAnswer) {
  Seen a_seen, b_seen;
  auto [a, b] = runningAndQueued(a_seen, b_seen);
  keys.setConfig(withoutAcme());  // the reload removed acme
  transport.answer(transport.last(), 200, "{}");
  settle();
  EXPECT_EQ(transport.started.size(), 1u) << "no key of ours is sent for a removed organisation";
  EXPECT_EQ(b_seen.heads, std::vector<int>{401});
  EXPECT_EQ(b_seen.body, std::string(kUnauthorizedBody));
  EXPECT_EQ(b_seen.done, 1);
}

TEST_F(UpstreamAttemptTest, TheOwnerMayDestroyTheAttemptInsideOnDone) {
  configure(acmeConfig("sk", 10));
  std::unique_ptr<UpstreamAttempt> held;
  int done = 0;
  AttemptSpec spec;
  spec.request.method = "GET";
  spec.request.url = "http://upstream.test/x";
  AttemptCallbacks cb;
  cb.on_head = [](const UpstreamHead&) {};
  cb.on_data = [](std::string_view) { return true; };
  cb.on_done = [&](const AttemptEnd&) {
    ++done;
    held.reset();  // (ASan: nothing of the attempt is touched afterwards)
  };
  held = std::make_unique<UpstreamAttempt>(ports, std::move(spec), std::move(cb));
  held->start();
  transport.answer(transport.last(), 200, "x");
  EXPECT_EQ(done, 1);
  EXPECT_EQ(held, nullptr);
}

TEST_F(UpstreamAttemptTest, UnqueuedItSpendsNoQuotaAndCarriesNoKeyOfOurs) {
  configure(acmeConfig("sk", 1));
  Seen a_seen, b_seen;
  auto a = attempt(a_seen);
  a->start();  // takes the only start of this second
  AttemptSpec spec;
  spec.request.method = "POST";
  spec.request.url = "http://upstream.test/api/v1/workflows/wf/stream?token=t";
  AttemptCallbacks cb;
  cb.on_done = [&](const AttemptEnd&) { ++b_seen.done; };
  UpstreamAttempt b(ports, std::move(spec), std::move(cb));
  b.start();
  ASSERT_EQ(transport.started.size(), 2u) << "not queued behind the budget";
  EXPECT_EQ(findHeader(transport.started[1].headers, "authorization"), nullptr);
}

}  // namespace
}  // namespace wfp
