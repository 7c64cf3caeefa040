#include "proxy/fair_queue.h"

#include <algorithm>

namespace wfp {

// Deficit round robin with a quantum of `weight` and a cost of 1 per entry:
// the client at the front of the ring takes `weight` entries in a row (fewer
// if it runs dry), then goes to the back. A client that empties leaves the
// ring and forgets its deficit, so an idle client banks no credit; a
// newcomer joins at the back, behind at most one turn of each other client.

FairQueue::Client& FairQueue::client(const std::string& name, int weight) {
  auto [it, inserted] = clients_.try_emplace(name);
  Client& c = it->second;
  if (inserted) {
    c.name = name;
    c.ring_pos = ring_.insert(ring_.end(), &c);
  }
  c.weight = std::max(1, weight);
  return c;
}

void FairQueue::insert(Client& c, Fifo::iterator pos, uint64_t id, Clock::time_point enqueued) {
  auto by_time = by_time_.emplace(enqueued, id).first;
  auto entry = c.fifo.insert(pos, Entry{id, enqueued});
  index_.emplace(id, Location{&c, entry, by_time});
}

void FairQueue::erase(std::unordered_map<uint64_t, Location>::iterator it) {
  Client* c = it->second.client;
  by_time_.erase(it->second.by_time);
  c->fifo.erase(it->second.entry);
  index_.erase(it);
  if (c->fifo.empty()) {
    ring_.erase(c->ring_pos);
    clients_.erase(clients_.find(c->name));
  }
}

bool FairQueue::push(uint64_t id, const std::string& name, int weight, Clock::time_point enqueued) {
  // An id is queued at most once: a second push moves it (a caller bug, but
  // one that must not leave a stale entry behind).
  if (auto it = index_.find(id); it != index_.end()) erase(it);
  if (size() >= max_entries_) return false;
  Client& c = client(name, weight);
  insert(c, c.fifo.end(), id, enqueued);
  return true;
}

void FairQueue::pushFront(uint64_t id, const std::string& name, int weight, Clock::time_point enqueued) {
  if (auto it = index_.find(id); it != index_.end()) erase(it);
  Client& c = client(name, weight);
  insert(c, c.fifo.begin(), id, enqueued);
  // Serve it next. The client keeps its deficit; the one it displaces keeps
  // its own and resumes its turn afterwards.
  ring_.splice(ring_.begin(), ring_, c.ring_pos);
}

std::optional<uint64_t> FairQueue::pop() {
  if (ring_.empty()) return std::nullopt;
  Client& c = *ring_.front();
  if (c.deficit < 1) c.deficit += c.weight;
  const uint64_t id = c.fifo.front().id;
  --c.deficit;
  if (c.fifo.size() > 1 && c.deficit < 1) ring_.splice(ring_.end(), ring_, c.ring_pos);
  erase(index_.find(id));  // the last entry takes the client (and its deficit) with it
  return id;
}

bool FairQueue::remove(uint64_t id) {
  auto it = index_.find(id);
  if (it == index_.end()) return false;
  erase(it);
  return true;
}

std::vector<uint64_t> FairQueue::expire(Clock::time_point deadline) {
  // by_time_ rather than the FIFO fronts: pushFront puts a retry, enqueued
  // whenever it was, ahead of younger entries, so a FIFO is not sorted.
  std::vector<uint64_t> expired;
  while (!by_time_.empty() && by_time_.begin()->first <= deadline) {
    const uint64_t id = by_time_.begin()->second;
    expired.push_back(id);
    erase(index_.find(id));
  }
  return expired;
}

std::optional<Clock::time_point> FairQueue::oldest() const {
  if (by_time_.empty()) return std::nullopt;
  return by_time_.begin()->first;
}

}  // namespace wfp
