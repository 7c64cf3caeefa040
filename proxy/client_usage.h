// What each client of each organisation used since the start (docs/operations.md,
// "Usage"): the answers it got by cache state, the upstream runs its requests
// led, and its error answers. The one table behind GET /admin/usage and the
// metric workflow_proxy_client_requests_total{org,client,cache}.
//
// Labels come from the configuration (organisation and client names), the
// fixed "pass_through" / "-" / "default", and the fixed cache states: the
// table is bounded by the configuration, whatever clients send.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>

namespace wfp {

struct UsageCounts {
  uint64_t runs = 0;       // upstream runs led by the client's requests
  uint64_t hits = 0;       // answered from the cache
  uint64_t coalesced = 0;  // answered by another request's run
  uint64_t stale = 0;      // answered with an expired entry (stale-if-error)
  uint64_t errors = 0;     // answered with a status ≥ 400 (the proxy's or the upstream's)
  std::map<std::string, uint64_t, std::less<>> by_cache;  // X-Cache → answers
};

class ClientUsage {
 public:
  using Key = std::pair<std::string, std::string>;  // organisation label, client
  // Orders keys and (string_view, string_view) look-ups alike: no allocation to find.
  struct KeyLess {
    using is_transparent = void;
    template <typename A, typename B>
    bool operator()(const A& a, const B& b) const {
      std::string_view a1 = a.first, a2 = a.second, b1 = b.first, b2 = b.second;
      return a1 < b1 || (a1 == b1 && a2 < b2);
    }
  };

  // An answered request of an identified client (`cache`: its X-Cache, or "-").
  void countAnswer(std::string_view org, std::string_view client, std::string_view cache, int status);
  // An upstream run led by the client's request.
  void countRun(std::string_view org, std::string_view client);

  const UsageCounts* find(std::string_view org, std::string_view client) const;
  const std::map<Key, UsageCounts, KeyLess>& table() const { return table_; }

  // workflow_proxy_client_requests_total{org,client,cache}, head included.
  void render(std::string& out) const;

 private:
  UsageCounts& at(std::string_view org, std::string_view client);
  std::map<Key, UsageCounts, KeyLess> table_;
};

}  // namespace wfp
