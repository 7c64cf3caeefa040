#include "proxy/key_store.h"

#include <cstring>

#include "proxy/hash.h"
#include "proxy/text.h"

namespace wfp {

namespace {
uint64_t bucketOf(const Sha256& digest) {
  uint64_t v = 0;
  std::memcpy(&v, digest.data(), sizeof v);
  return v;
}
}  // namespace

std::optional<std::string_view> bearerToken(std::string_view authorization) {
  constexpr std::string_view kScheme = "bearer";
  if (authorization.size() <= kScheme.size() || !equalsIgnoreCase(authorization.substr(0, kScheme.size()), kScheme)) {
    return std::nullopt;
  }
  std::string_view rest = authorization.substr(kScheme.size());
  if (rest.front() != ' ') return std::nullopt;
  while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
  while (!rest.empty() && (rest.back() == ' ' || rest.back() == '\t')) rest.remove_suffix(1);
  if (rest.empty()) return std::nullopt;
  return rest;
}

KeyStore::KeyStore(ConfigPtr config) : config_(std::move(config)) {
  for (const auto& org : config_->organisations) {
    for (const auto& client : org.clients) {
      if (client.key_sha256) entries_.emplace(bucketOf(*client.key_sha256), Entry{*client.key_sha256, &org, &client});
      // Unique across the configuration (the loader refuses a second one).
      if (!client.tls_subject.empty()) subjects_.emplace(client.tls_subject, SubjectEntry{&org, &client});
    }
  }
}

namespace {
void setClient(Principal& p, const Organisation& org, const ClientConfig& client) {
  p.org = &org;
  p.org_label = org.name;
  p.client = client.name;
  p.namespace_id = org.name;
  p.weight = client.weight;
  p.quota = client.quota ? &*client.quota : nullptr;
}
}  // namespace

AuthResult KeyStore::authenticateSubject(std::string_view cn) const {
  AuthResult result;
  if (cn.empty()) return result;
  auto it = subjects_.find(cn);
  if (it == subjects_.end()) return result;
  result.outcome = AuthOutcome::Authenticated;
  setClient(result.principal, *it->second.org, *it->second.client);
  return result;
}

AuthResult KeyStore::authenticate(const std::string* authorization) const {
  AuthResult result;
  if (authorization == nullptr) {
    if (!config_->default_organisation) return result;
    const Organisation* org = config_->findOrganisation(*config_->default_organisation);
    if (!org) return result;
    result.outcome = AuthOutcome::Authenticated;
    result.principal.org = org;
    result.principal.org_label = org->name;
    result.principal.client = "default";
    result.principal.namespace_id = org->name;
    return result;
  }
  auto token = bearerToken(*authorization);
  if (!token) return result;
  Sha256 digest = sha256(*token);
  auto [begin, end] = entries_.equal_range(bucketOf(digest));
  const Entry* match = nullptr;
  for (auto it = begin; it != end; ++it) {
    if (constantTimeEqual(it->second.digest, digest)) match = &it->second;
  }
  if (match) {
    result.outcome = AuthOutcome::Authenticated;
    setClient(result.principal, *match->org, *match->client);
    return result;
  }
  if (config_->unknown_keys == Config::UnknownKeys::PassThrough) {
    result.outcome = AuthOutcome::Authenticated;
    result.principal.pass_through = true;
    result.principal.org_label = "pass_through";
    result.principal.client.assign(1, '-');  // not = "-": GCC 12 -O3 -Wrestrict false positive (PR105329)
    // Built in place: GCC 12 at -O2 warns falsely (-Wrestrict) on "pt:" + toHex(…).
    std::string ns = toHex(digest);
    ns.insert(0, "pt:", 3);
    result.principal.namespace_id = std::move(ns);
  }
  return result;
}

}  // namespace wfp
