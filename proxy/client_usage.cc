#include "proxy/client_usage.h"

#include "proxy/prometheus_text.h"

namespace wfp {

UsageCounts& ClientUsage::at(std::string_view org, std::string_view client) {
  auto it = table_.find(std::pair<std::string_view, std::string_view>(org, client));
  if (it != table_.end()) return it->second;
  return table_[Key(std::string(org), std::string(client))];
}

void ClientUsage::countAnswer(std::string_view org, std::string_view client, std::string_view cache, int status) {
  UsageCounts& c = at(org, client);
  if (cache == "HIT") ++c.hits;
  if (cache == "COALESCED") ++c.coalesced;
  if (cache == "STALE") ++c.stale;
  if (status >= 400) ++c.errors;
  auto it = c.by_cache.find(cache);
  if (it == c.by_cache.end()) it = c.by_cache.emplace(std::string(cache), 0).first;
  ++it->second;
}

void ClientUsage::countRun(std::string_view org, std::string_view client) { ++at(org, client).runs; }

const UsageCounts* ClientUsage::find(std::string_view org, std::string_view client) const {
  auto it = table_.find(std::pair<std::string_view, std::string_view>(org, client));
  return it == table_.end() ? nullptr : &it->second;
}

void ClientUsage::render(std::string& out) const {
  appendFamilyHead(out, "workflow_proxy_client_requests_total", "counter",
                   "Client requests answered, by organisation, client and cache state.");
  // Names are [A-Za-z0-9_.-] or fixed words: nothing to escape.
  for (const auto& [key, counts] : table_) {
    for (const auto& [cache, n] : counts.by_cache) {
      out += "workflow_proxy_client_requests_total{org=\"";
      out += key.first;
      out += "\",client=\"";
      out += key.second;
      out += "\",cache=\"";
      out += cache;
      out += "\"} ";
      out += std::to_string(n);
      out += '\n';
    }
  }
}

}  // namespace wfp
