// Client key → organisation (docs/http.md). Pure; rebuilt and swapped on reload.
//
// Only SHA-256 digests of client keys are kept. A presented key is hashed and
// compared to the candidates with CRYPTO_memcmp (constant time). A verified
// client certificate's subject CN may stand for a key (clients[].tls_subject,
// docs/security.md): the CN is no secret, so it is looked up plainly.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "proxy/config.h"

namespace wfp {

struct Principal {
  const Organisation* org = nullptr;  // null in pass_through
  std::string org_label;              // metrics/logs: org name, or "pass_through"
  std::string client;                 // client name; "default" or "-" when none
  // Cache namespace and rate-limit budget: the org name, or in pass_through
  // "pt:" + hex SHA-256 of the key (never the key).
  std::string namespace_id;
  int weight = 1;
  bool pass_through = false;
  // The client's quota (a pointer into the KeyStore's config), or null.
  const ClientQuota* quota = nullptr;
};

enum class AuthOutcome { Authenticated, Unauthorized };

struct AuthResult {
  AuthOutcome outcome = AuthOutcome::Unauthorized;
  Principal principal;
};

class KeyStore {
 public:
  explicit KeyStore(ConfigPtr config);

  // `authorization`: the request's Authorization header value, or nullptr.
  AuthResult authenticate(const std::string* authorization) const;
  // `cn`: the subject CN of the connection's verified client certificate.
  // Authenticated as the client whose tls_subject it is; Unauthorized when
  // no client names it (the caller then treats the request as one without
  // a key: default_organisation or 401, never pass_through).
  AuthResult authenticateSubject(std::string_view cn) const;

  const Config& config() const { return *config_; }

 private:
  struct Entry {
    Sha256 digest;
    const Organisation* org;
    const ClientConfig* client;
  };
  ConfigPtr config_;  // keeps the Organisation pointers alive
  // Bucketed by the digest's first 8 bytes; full compare in constant time.
  std::unordered_multimap<uint64_t, Entry> entries_;
  struct SubjectEntry {
    const Organisation* org;
    const ClientConfig* client;
  };
  std::unordered_map<std::string_view, SubjectEntry> subjects_;  // views into config_
};

// The key from "Bearer <key>" (scheme case-insensitive, one or more spaces),
// or nullopt.
std::optional<std::string_view> bearerToken(std::string_view authorization);

}  // namespace wfp
