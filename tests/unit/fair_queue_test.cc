#include "proxy/fair_queue.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace wfp {
namespace {

using namespace std::chrono_literals;
using TimePoint = Clock::time_point;

const TimePoint kT0 = TimePoint(1000s);
TimePoint at(int ms) { return kT0 + std::chrono::milliseconds(ms); }

std::vector<uint64_t> popAll(FairQueue& q) {
  std::vector<uint64_t> out;
  while (auto id = q.pop()) out.push_back(*id);
  return out;
}

std::vector<uint64_t> popN(FairQueue& q, int n) {
  std::vector<uint64_t> out;
  for (int i = 0; i < n; ++i) {
    auto id = q.pop();
    if (!id) break;
    out.push_back(*id);
  }
  return out;
}

TEST(FairQueue, EmptyQueuePopsNothing) {
  FairQueue q(10);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.size(), 0u);
  EXPECT_FALSE(q.pop());
  EXPECT_FALSE(q.oldest());
  EXPECT_TRUE(q.expire(at(1'000'000)).empty());
  EXPECT_FALSE(q.remove(1));

  ASSERT_TRUE(q.push(1, "a", 1, at(0)));
  EXPECT_EQ(q.pop(), 1u);
  EXPECT_FALSE(q.pop());
  EXPECT_TRUE(q.empty());
}

TEST(FairQueue, FifoWithinAClient) {
  FairQueue q(100);
  for (uint64_t id = 1; id <= 5; ++id) ASSERT_TRUE(q.push(id, "a", 1, at(static_cast<int>(id))));
  EXPECT_EQ(q.size(), 5u);
  EXPECT_EQ(q.oldest(), at(1));
  EXPECT_EQ(popAll(q), (std::vector<uint64_t>{1, 2, 3, 4, 5}));
}

TEST(FairQueue, WeightsShareThePops) {
  FairQueue q(10'000);
  // Both backlogged; ids 1000+ for the weight-1 client, 2000+ for weight 2.
  for (uint64_t i = 0; i < 300; ++i) {
    ASSERT_TRUE(q.push(1000 + i, "light", 1, at(0)));
    ASSERT_TRUE(q.push(2000 + 2 * i, "heavy", 2, at(0)));
    ASSERT_TRUE(q.push(2000 + 2 * i + 1, "heavy", 2, at(0)));
  }
  int light = 0;
  int heavy = 0;
  uint64_t next_light = 1000;
  uint64_t next_heavy = 2000;
  for (int pop = 1; pop <= 600; ++pop) {
    const uint64_t id = *q.pop();
    if (id < 2000) {
      EXPECT_EQ(id, next_light++);  // and FIFO within each
      ++light;
    } else {
      EXPECT_EQ(id, next_heavy++);
      ++heavy;
    }
    if (pop % 3 == 0) {
      EXPECT_EQ(light, pop / 3) << "after " << pop << " pops";
      EXPECT_EQ(heavy, 2 * pop / 3) << "after " << pop << " pops";
    }
  }
}

TEST(FairQueue, AFloodDoesNotStarveASmallClient) {
  FairQueue q(20'000);
  for (uint64_t i = 0; i < 10'000; ++i) ASSERT_TRUE(q.push(i, "flood", 1, at(0)));
  for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(q.push(100'000 + i, "small", 1, at(1)));
  const std::vector<uint64_t> first = popN(q, 6);
  EXPECT_EQ(first, (std::vector<uint64_t>{0, 100'000, 1, 100'001, 2, 100'002}));
  EXPECT_EQ(q.size(), 10'000u - 3);
  // The flood then has the queue to itself, in order.
  EXPECT_EQ(q.pop(), 3u);
}

TEST(FairQueue, WeightIsClampedToOne) {
  FairQueue q(100);
  for (uint64_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(q.push(10 + i, "zero", 0, at(0)));
    ASSERT_TRUE(q.push(20 + i, "negative", -5, at(0)));
  }
  EXPECT_EQ(popAll(q), (std::vector<uint64_t>{10, 20, 11, 21, 12, 22}));
}

TEST(FairQueue, AClientThatEmptiesRejoinsAtTheBackWithoutCredit) {
  FairQueue q(100);
  ASSERT_TRUE(q.push(1, "a", 2, at(0)));
  for (uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(q.push(10 + i, "b", 1, at(0)));
  EXPECT_EQ(q.pop(), 1u);  // a empties with one unit of its quantum unused
  ASSERT_TRUE(q.push(2, "a", 2, at(1)));
  ASSERT_TRUE(q.push(3, "a", 2, at(1)));
  ASSERT_TRUE(q.push(4, "a", 2, at(1)));
  // Ring: b, then a (back, fresh quantum of 2).
  EXPECT_EQ(popN(q, 6), (std::vector<uint64_t>{10, 2, 3, 11, 4, 12}));
}

TEST(FairQueue, RefusesBeyondQueueMax) {
  FairQueue q(3);
  EXPECT_TRUE(q.push(1, "a", 1, at(0)));
  EXPECT_TRUE(q.push(2, "b", 1, at(0)));
  EXPECT_TRUE(q.push(3, "a", 1, at(0)));
  EXPECT_FALSE(q.push(4, "c", 1, at(0)));
  EXPECT_FALSE(q.push(4, "a", 1, at(0)));
  EXPECT_EQ(q.size(), 3u);
  EXPECT_FALSE(q.remove(4));  // the refused entry left no trace

  EXPECT_EQ(q.pop(), 1u);
  EXPECT_TRUE(q.push(4, "c", 1, at(0)));
  EXPECT_FALSE(q.push(5, "c", 1, at(0)));

  // A retry goes back even when full, and the queue may exceed its maximum.
  q.pushFront(1, "a", 1, at(0));
  EXPECT_EQ(q.size(), 4u);
  EXPECT_FALSE(q.push(5, "c", 1, at(0)));
  EXPECT_EQ(q.pop(), 1u);
  EXPECT_FALSE(q.push(5, "c", 1, at(0)));  // 3 queued, still full
  EXPECT_EQ(q.pop(), 2u);
  EXPECT_TRUE(q.push(5, "c", 1, at(0)));

  q.setMaxEntries(10);
  EXPECT_TRUE(q.push(6, "c", 1, at(0)));
  q.setMaxEntries(1);
  EXPECT_FALSE(q.push(7, "c", 1, at(0)));
  EXPECT_EQ(popAll(q), (std::vector<uint64_t>{4, 3, 5, 6}));
}

TEST(FairQueue, RemovesFromMiddleFrontAndBack) {
  FairQueue q(100);
  for (uint64_t id = 1; id <= 5; ++id) ASSERT_TRUE(q.push(id, "a", 1, at(static_cast<int>(id))));
  ASSERT_TRUE(q.push(10, "b", 1, at(0)));
  EXPECT_TRUE(q.remove(3));
  EXPECT_TRUE(q.remove(1));
  EXPECT_TRUE(q.remove(5));
  EXPECT_FALSE(q.remove(3));
  EXPECT_FALSE(q.remove(99));
  EXPECT_EQ(q.size(), 3u);
  EXPECT_EQ(q.oldest(), at(0));
  EXPECT_TRUE(q.remove(10));  // b empties and leaves the ring
  EXPECT_EQ(q.oldest(), at(2));
  EXPECT_EQ(popAll(q), (std::vector<uint64_t>{2, 4}));
  EXPECT_TRUE(q.empty());
}

TEST(FairQueue, RemovingTheFrontClientsLastEntryPassesTheTurn) {
  FairQueue q(100);
  ASSERT_TRUE(q.push(1, "a", 3, at(0)));
  ASSERT_TRUE(q.push(2, "a", 3, at(0)));
  ASSERT_TRUE(q.push(10, "b", 1, at(0)));
  ASSERT_TRUE(q.push(11, "b", 1, at(0)));
  EXPECT_EQ(q.pop(), 1u);  // a is mid-quantum at the front
  EXPECT_TRUE(q.remove(2));
  EXPECT_EQ(popAll(q), (std::vector<uint64_t>{10, 11}));
}

TEST(FairQueue, ExpiresAcrossClientsByEnqueueTime) {
  FairQueue q(100);
  ASSERT_TRUE(q.push(1, "a", 1, at(100)));
  ASSERT_TRUE(q.push(2, "b", 1, at(200)));
  ASSERT_TRUE(q.push(3, "a", 1, at(300)));
  ASSERT_TRUE(q.push(4, "b", 1, at(400)));
  ASSERT_TRUE(q.push(5, "a", 1, at(500)));
  ASSERT_TRUE(q.push(6, "c", 1, at(600)));
  EXPECT_EQ(q.oldest(), at(100));

  EXPECT_TRUE(q.expire(at(99)).empty());
  EXPECT_EQ(q.expire(at(300)), (std::vector<uint64_t>{1, 2, 3}));  // "at or before"
  EXPECT_EQ(q.size(), 3u);
  EXPECT_EQ(q.oldest(), at(400));
  EXPECT_EQ(q.expire(at(450)), (std::vector<uint64_t>{4}));  // b is gone now
  EXPECT_EQ(popAll(q), (std::vector<uint64_t>{5, 6}));
}

TEST(FairQueue, ExpireHandlesRetriesOutOfOrder) {
  FairQueue q(100);
  ASSERT_TRUE(q.push(1, "a", 1, at(100)));
  ASSERT_TRUE(q.push(2, "a", 1, at(200)));
  ASSERT_TRUE(q.push(3, "a", 1, at(300)));
  EXPECT_EQ(q.pop(), 1u);
  EXPECT_EQ(q.pop(), 2u);
  // Both are refused by the upstream and come back, the older first: the
  // FIFO is now 2 (200), 1 (100), 3 (300) — not sorted.
  q.pushFront(1, "a", 1, at(100));
  q.pushFront(2, "a", 1, at(200));
  EXPECT_EQ(q.oldest(), at(100));
  EXPECT_EQ(q.expire(at(150)), (std::vector<uint64_t>{1}));
  EXPECT_EQ(q.oldest(), at(200));
  EXPECT_EQ(popAll(q), (std::vector<uint64_t>{2, 3}));
}

TEST(FairQueue, PushFrontServesNext) {
  FairQueue q(100);
  for (uint64_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(q.push(10 + i, "a", 1, at(0)));
    ASSERT_TRUE(q.push(20 + i, "b", 1, at(0)));
    ASSERT_TRUE(q.push(30 + i, "c", 1, at(0)));
  }
  EXPECT_EQ(popN(q, 2), (std::vector<uint64_t>{10, 20}));
  // c is next in the ring; a 429 on a's request puts it back ahead of all.
  q.pushFront(10, "a", 1, at(0));
  EXPECT_EQ(q.size(), 11u);
  EXPECT_EQ(q.pop(), 10u);
  EXPECT_EQ(popN(q, 3), (std::vector<uint64_t>{30, 21, 11}));

  // A client with nothing queued any more comes back at the front too.
  FairQueue r(100);
  ASSERT_TRUE(r.push(1, "x", 1, at(0)));
  ASSERT_TRUE(r.push(2, "y", 1, at(0)));
  EXPECT_EQ(r.pop(), 1u);
  r.pushFront(1, "x", 1, at(0));
  EXPECT_EQ(popAll(r), (std::vector<uint64_t>{1, 2}));

  // Pushing an id that is queued moves it instead of duplicating it.
  FairQueue s(100);
  ASSERT_TRUE(s.push(1, "x", 1, at(0)));
  ASSERT_TRUE(s.push(2, "x", 1, at(0)));
  s.pushFront(2, "x", 1, at(0));
  EXPECT_EQ(s.size(), 2u);
  EXPECT_EQ(popAll(s), (std::vector<uint64_t>{2, 1}));
}

// Random operations against a plain model: same size, nothing lost or
// duplicated, FIFO within each client, expire and oldest exact.
TEST(FairQueue, RandomOperationsMatchAModel) {
  uint64_t rng = 0x5eed;
  auto next = [&rng](uint64_t bound) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng % bound;
  };
  struct Item {
    std::string client;
    TimePoint enqueued;
  };
  const std::vector<std::string> names = {"a", "b", "c", "d", "e", "f"};
  size_t max_entries = 200;
  FairQueue q(max_entries);
  std::map<uint64_t, Item> queued;                    // id → item
  std::map<std::string, std::deque<uint64_t>> fifos;  // client → ids, head first
  std::vector<std::pair<uint64_t, Item>> retriable;   // popped, may come back
  uint64_t next_id = 1;
  int now_ms = 0;
  size_t pops = 0;

  auto modelErase = [&](uint64_t id) {
    auto& f = fifos[queued.at(id).client];
    f.erase(std::find(f.begin(), f.end(), id));
    queued.erase(id);
  };

  for (int step = 0; step < 40'000; ++step) {
    now_ms += static_cast<int>(next(3));
    const uint64_t op = next(100);
    if (op < 40) {
      const std::string& c = names[next(names.size())];
      const uint64_t id = next_id++;
      const bool accepted = q.push(id, c, 1 + static_cast<int>(next(3)), at(now_ms));
      ASSERT_EQ(accepted, queued.size() < max_entries);
      if (accepted) {
        queued[id] = {c, at(now_ms)};
        fifos[c].push_back(id);
      }
    } else if (op < 75) {
      auto id = q.pop();
      ASSERT_EQ(id.has_value(), !queued.empty());
      if (!id) continue;
      ASSERT_TRUE(queued.count(*id)) << "popped an id that is not queued";
      const Item item = queued.at(*id);
      ASSERT_EQ(fifos[item.client].front(), *id) << "not FIFO within " << item.client;
      modelErase(*id);
      ++pops;
      if (next(4) == 0) retriable.emplace_back(*id, item);
    } else if (op < 80 && !retriable.empty()) {
      const size_t k = next(retriable.size());
      auto [id, item] = retriable[k];
      retriable.erase(retriable.begin() + static_cast<long>(k));
      q.pushFront(id, item.client, 1, item.enqueued);
      queued[id] = item;
      fifos[item.client].push_front(id);
      ASSERT_EQ(q.pop(), id) << "a retry is served next";
      modelErase(id);
    } else if (op < 83 && !retriable.empty()) {
      // Retried but not popped right away: stays at its client's head.
      auto [id, item] = retriable.back();
      retriable.pop_back();
      q.pushFront(id, item.client, 2, item.enqueued);
      queued[id] = item;
      fifos[item.client].push_front(id);
    } else if (op < 93) {
      // Half of the time an id that is queued, else one that is not.
      uint64_t id = next(next_id + 1);
      if (next(2) == 0 && !queued.empty()) {
        auto it = queued.lower_bound(id);
        id = (it == queued.end() ? queued.begin() : it)->first;
      }
      const bool present = queued.count(id) > 0;
      ASSERT_EQ(q.remove(id), present);
      if (present) modelErase(id);
    } else if (op < 98) {
      const TimePoint deadline = at(now_ms - static_cast<int>(next(400)));
      std::vector<uint64_t> got = q.expire(deadline);
      std::vector<uint64_t> want;
      for (const auto& [id, item] : queued) {
        if (item.enqueued <= deadline) want.push_back(id);
      }
      std::sort(got.begin(), got.end());
      ASSERT_EQ(got, want);
      for (uint64_t id : want) modelErase(id);
    } else {
      max_entries = 50 + next(300);
      q.setMaxEntries(max_entries);
    }

    ASSERT_EQ(q.size(), queued.size());
    ASSERT_EQ(q.empty(), queued.empty());
    if (step % 16 == 0) {
      std::optional<TimePoint> oldest;
      for (const auto& [id, item] : queued) {
        if (!oldest || item.enqueued < *oldest) oldest = item.enqueued;
      }
      ASSERT_EQ(q.oldest(), oldest);
    }
  }
  EXPECT_GT(pops, 5'000u);

  // Drain: exactly what the model holds, each once.
  std::vector<uint64_t> rest = popAll(q);
  std::set<uint64_t> unique(rest.begin(), rest.end());
  EXPECT_EQ(unique.size(), rest.size());
  std::set<uint64_t> want;
  for (const auto& [id, item] : queued) want.insert(id);
  EXPECT_EQ(unique, want);
  EXPECT_TRUE(q.empty());
  EXPECT_FALSE(q.oldest());
}

}  // namespace
}  // namespace wfp
