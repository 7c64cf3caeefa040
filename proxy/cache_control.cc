#include "proxy/cache_control.h"

#include <algorithm>
#include <string_view>

#include "proxy/text.h"

namespace wfp {

CacheControl parseCacheControl(const HttpHeaders& headers) {
  CacheControl cc;
  for (const auto& h : headers) {
    if (!equalsIgnoreCase(h.name, "cache-control")) continue;
    std::string_view rest = h.value;
    while (!rest.empty()) {
      size_t comma = rest.find(',');
      std::string_view d = rest.substr(0, comma);
      while (!d.empty() && (d.front() == ' ' || d.front() == '\t')) d.remove_prefix(1);
      while (!d.empty() && (d.back() == ' ' || d.back() == '\t')) d.remove_suffix(1);
      if (equalsIgnoreCase(d, "no-cache")) {
        cc.no_cache = true;
      } else if (equalsIgnoreCase(d, "no-store")) {
        cc.no_store = true;
      } else if (equalsIgnoreCase(d, "only-if-cached")) {
        cc.only_if_cached = true;
      } else if (d.size() > 8 && equalsIgnoreCase(d.substr(0, 8), "max-age=")) {
        std::string_view v = d.substr(8);
        if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
        int64_t n = 0;
        bool ok = !v.empty() && v.size() <= 12;
        for (char c : v) {
          if (c < '0' || c > '9') ok = false;
          n = n * 10 + (c - '0');
        }
        if (ok) cc.max_age = cc.max_age ? std::min(*cc.max_age, n) : n;
      }
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return cc;
}

WaiterNeeds waiterNeeds(const CacheControl& cc, int64_t ttl_ms, bool bypass, int64_t now_ms) {
  WaiterNeeds needs;
  // Fresh (within the TTL) ...
  needs.min_stored_at_ms = now_ms - ttl_ms;
  // ... young enough for max-age ...
  if (cc.max_age) needs.min_stored_at_ms = std::max(needs.min_stored_at_ms, now_ms - *cc.max_age * 1000);
  // ... and, under no-cache, nothing stored before the request came (the
  // result of a run that ends after it came is as fresh as its own run).
  // no-store reads nothing at all.
  // (+1: an entry stored in the millisecond the request came may be older
  // than the request.)
  if (cc.no_cache) needs.min_stored_at_ms = std::max(needs.min_stored_at_ms, now_ms + 1);
  if (bypass) needs.min_stored_at_ms = INT64_MAX;
  needs.may_run = !cc.only_if_cached;
  return needs;
}

}  // namespace wfp
