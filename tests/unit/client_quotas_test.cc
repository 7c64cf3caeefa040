// ClientQuotas on a virtual clock (no Redis): the sliding window of buckets,
// Retry-After, tickets given back, counts kept by name; and the decoders of
// Redis' untrusted answers.
#include "proxy/client_quotas.h"

#include <gtest/gtest.h>

#include "proxy/redis_client.h"
#include "tests/simulation/sim_runtime.h"

namespace wfp {
namespace {

using sim::SimRuntime;
using namespace std::chrono_literals;

void passTime(SimRuntime& rt, std::chrono::microseconds by) {
  rt.after(by.count(), [] {});
  while (rt.step()) {
  }
}

QuotaDecision ask(ClientQuotas& q, const ClientQuota& quota, const std::string& client = "billing") {
  std::optional<QuotaDecision> got;
  q.acquire("acme", client, quota, [&](QuotaDecision d) { got = std::move(d); });
  EXPECT_TRUE(got.has_value()) << "a local decision is made inside the call";
  return got ? std::move(*got) : QuotaDecision{};
}

int64_t usedOf(ClientQuotas& q, const ClientQuota& quota, const std::string& client = "billing") {
  int64_t used = -1;
  q.used("acme", client, quota, [&](int64_t n) { used = n; });
  return used;
}

TEST(ClientQuotas, AtMostNRunsInAnyWindowAndRetryAfterUntilOneFreesUp) {
  SimRuntime rt;
  ClientQuotas quotas(rt, nullptr, "wfp:");
  const ClientQuota quota{3, 60};  // buckets of one second
  std::vector<QuotaTicket> runs;
  for (int i = 0; i < 3; ++i) {
    QuotaDecision d = ask(quotas, quota);
    ASSERT_TRUE(d.allowed);
    d.ticket.use();
    passTime(rt, 10s);
  }
  EXPECT_EQ(usedOf(quotas, quota), 3);
  QuotaDecision over = ask(quotas, quota);
  EXPECT_FALSE(over.allowed);
  // The first run's bucket ends at most 1 s after it, and counts 60 s more:
  // it leaves 30–31 s from now (three runs 10 s apart, now at +30 s).
  EXPECT_GE(over.retry_after_s, 30);
  EXPECT_LE(over.retry_after_s, 31);
  passTime(rt, std::chrono::seconds(over.retry_after_s) - 1s);
  EXPECT_FALSE(ask(quotas, quota).allowed) << "never before the window has moved past the run";
  passTime(rt, 1s);
  QuotaDecision again = ask(quotas, quota);
  EXPECT_TRUE(again.allowed);
  again.ticket.use();
  EXPECT_EQ(usedOf(quotas, quota), 3);
}

TEST(ClientQuotas, AnUnusedTicketGivesItsRunBack) {
  SimRuntime rt;
  ClientQuotas quotas(rt, nullptr, "wfp:");
  const ClientQuota quota{1, 3600};
  {
    QuotaDecision d = ask(quotas, quota);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(usedOf(quotas, quota), 1);
    EXPECT_FALSE(ask(quotas, quota).allowed);
    QuotaTicket moved = std::move(d.ticket);  // moving keeps one place, not two
    EXPECT_FALSE(d.ticket);
    EXPECT_TRUE(moved);
  }
  EXPECT_EQ(usedOf(quotas, quota), 0);
  QuotaDecision d = ask(quotas, quota);
  EXPECT_TRUE(d.allowed);
  d.ticket.use();
  d = QuotaDecision{};
  EXPECT_EQ(usedOf(quotas, quota), 1) << "a used ticket stays counted";
}

TEST(ClientQuotas, ClientsCountApartAndAReloadKeepsTheCountsOfClientsThatStay) {
  SimRuntime rt;
  ClientQuotas quotas(rt, nullptr, "wfp:");
  const ClientQuota quota{1, 3600};
  ask(quotas, quota, "billing").ticket.use();
  ask(quotas, quota, "web").ticket.use();
  EXPECT_FALSE(ask(quotas, quota, "billing").allowed);
  Config config;
  Organisation acme;
  acme.name = "acme";
  ClientConfig billing;
  billing.name = "billing";
  billing.quota = ClientQuota{2, 3600};
  acme.clients.push_back(billing);
  config.organisations.push_back(acme);
  quotas.forgetRemoved(config);  // web is gone; billing stays
  EXPECT_EQ(usedOf(quotas, quota, "billing"), 1);
  EXPECT_EQ(usedOf(quotas, quota, "web"), 0);
}

RedisReply integer(long long v) {
  RedisReply r;
  r.type = RedisReply::Type::Integer;
  r.integer = v;
  return r;
}

RedisReply array(std::vector<long long> values) {
  RedisReply r;
  r.type = RedisReply::Type::Array;
  for (long long v : values) r.elements.push_back(integer(v));
  return r;
}

TEST(ClientQuotas, RedisAnswersOutsideWhatTheScriptSendsAreNotBelieved) {
  const ClientQuota quota{5, 60};
  auto granted = ClientQuotas::decodeAcquire(array({1, 1'700'000'001'000, 3}), quota);
  ASSERT_TRUE(granted);
  EXPECT_TRUE(granted->allowed);
  auto refused = ClientQuotas::decodeAcquire(array({0, 1500, 5}), quota);
  ASSERT_TRUE(refused);
  EXPECT_FALSE(refused->allowed);
  EXPECT_EQ(refused->retry_ms, 1500);
  EXPECT_FALSE(ClientQuotas::decodeAcquire(array({1, 1'700'000'001'000, 6}), quota)) << "granted beyond the quota";
  EXPECT_FALSE(ClientQuotas::decodeAcquire(array({1, 1'700'000'001'000, 0}), quota));
  EXPECT_FALSE(ClientQuotas::decodeAcquire(array({1, -5, 1}), quota));
  EXPECT_FALSE(ClientQuotas::decodeAcquire(array({0, 1500, 4}), quota)) << "refused below the quota";
  EXPECT_FALSE(ClientQuotas::decodeAcquire(array({0, 0, 5}), quota));
  EXPECT_FALSE(ClientQuotas::decodeAcquire(array({0, 3'600'000, 5}), quota)) << "a wait beyond the window";
  EXPECT_FALSE(ClientQuotas::decodeAcquire(array({2, 1500, 5}), quota));
  EXPECT_FALSE(ClientQuotas::decodeAcquire(array({1, 1500}), quota));
  EXPECT_FALSE(ClientQuotas::decodeAcquire(integer(1), quota));
  EXPECT_EQ(ClientQuotas::decodeUsed(integer(4)), 4);
  EXPECT_FALSE(ClientQuotas::decodeUsed(integer(-1)));
  EXPECT_FALSE(ClientQuotas::decodeUsed(array({1})));
}

}  // namespace
}  // namespace wfp
