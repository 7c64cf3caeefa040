// One organisation's queue (docs/rate-limits.md). Pure. FIFO within a client; across
// clients deficit round robin by weight, so a busy client cannot starve the
// others. Entries are ids; the owner keeps what they stand for.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "proxy/clock.h"

namespace wfp {

class FairQueue {
 public:
  explicit FairQueue(size_t max_entries) : max_entries_(max_entries) {}
  // Movable, not copyable: the index points into the queue's own nodes.
  FairQueue(const FairQueue&) = delete;
  FairQueue& operator=(const FairQueue&) = delete;
  FairQueue(FairQueue&&) = default;
  FairQueue& operator=(FairQueue&&) = default;

  // False when the queue holds max_entries already.
  bool push(uint64_t id, const std::string& client, int weight, Clock::time_point enqueued);
  // Back at the head of its client's FIFO, and that client served next
  // (an upstream 429 retry). Never refused.
  void pushFront(uint64_t id, const std::string& client, int weight, Clock::time_point enqueued);
  // The next entry by DRR, removed from the queue.
  std::optional<uint64_t> pop();
  // Removes an entry wherever it is (a client that left). False if absent.
  bool remove(uint64_t id);
  // Removes and returns every entry enqueued at or before `deadline`.
  std::vector<uint64_t> expire(Clock::time_point deadline);
  std::optional<Clock::time_point> oldest() const;

  size_t size() const { return index_.size(); }
  bool empty() const { return index_.empty(); }
  void setMaxEntries(size_t n) { max_entries_ = n; }

 private:
  // Invariants: clients_ holds exactly the clients with a non-empty FIFO,
  // each of them once in ring_ (a client that empties leaves both, so memory
  // follows the queued entries, not every client ever seen); index_ holds
  // every queued id once, and by_time_ the same entries ordered by
  // enqueue time. About 200 bytes per entry across the three.
  struct Client;
  struct Entry {
    uint64_t id;
    Clock::time_point enqueued;
  };
  using Fifo = std::list<Entry>;  // a list so that remove() is O(1)
  using Ring = std::list<Client*>;
  using ByTime = std::set<std::pair<Clock::time_point, uint64_t>>;
  struct Client {
    std::string name;
    int weight = 1;
    int64_t deficit = 0;  // DRR: entries it may still take this round
    Fifo fifo;
    Ring::iterator ring_pos;
  };
  struct Location {
    Client* client;
    Fifo::iterator entry;
    ByTime::iterator by_time;
  };

  // Finds or creates (at the back of the ring) the client; takes the
  // latest weight, so a reload applies to a client already queued.
  Client& client(const std::string& name, int weight);
  void insert(Client& c, Fifo::iterator pos, uint64_t id, Clock::time_point enqueued);
  // Unlinks one entry; a client left empty leaves the ring and clients_.
  void erase(std::unordered_map<uint64_t, Location>::iterator it);

  size_t max_entries_;
  std::unordered_map<std::string, Client> clients_;  // nodes are stable: Client* stays valid
  Ring ring_;  // active clients, served from the front
  std::unordered_map<uint64_t, Location> index_;  // id → where it is
  ByTime by_time_;  // (enqueued, id): expire() and oldest() without a scan
};

}  // namespace wfp
