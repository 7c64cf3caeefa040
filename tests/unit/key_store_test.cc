#include "proxy/key_store.h"

#include <gtest/gtest.h>

#include "proxy/hash.h"

namespace wfp {
namespace {

ConfigPtr makeConfig(bool pass_through, bool with_default) {
  auto cfg = std::make_shared<Config>();
  Organisation acme;
  acme.name = "acme";
  acme.api_key = "sk_acme_secret";
  acme.clients.push_back(ClientConfig{"billing", sha256("key-one"), 1, "", std::nullopt});
  acme.clients.push_back(ClientConfig{"web", sha256("key-two"), 3, "web.acme.internal", std::nullopt});
  // Named only by its certificate.
  acme.clients.push_back(ClientConfig{"batch", std::nullopt, 2, "batch.acme.internal", std::nullopt});
  Organisation globex;
  globex.name = "globex";
  globex.api_key = "sk_globex_secret";
  globex.clients.push_back(ClientConfig{"app", sha256("key-three"), 1, "", std::nullopt});
  cfg->organisations = {acme, globex};
  if (with_default) cfg->default_organisation = "globex";
  cfg->unknown_keys = pass_through ? Config::UnknownKeys::PassThrough : Config::UnknownKeys::Reject;
  return cfg;
}

TEST(KeyStore, FindsOrganisationAndClientByKey) {
  KeyStore keys(makeConfig(false, false));
  std::string h = "Bearer key-two";
  AuthResult r = keys.authenticate(&h);
  ASSERT_EQ(r.outcome, AuthOutcome::Authenticated);
  EXPECT_EQ(r.principal.org->name, "acme");
  EXPECT_EQ(r.principal.client, "web");
  EXPECT_EQ(r.principal.weight, 3);
  EXPECT_EQ(r.principal.namespace_id, "acme");
  h = "Bearer key-three";
  EXPECT_EQ(keys.authenticate(&h).principal.org->name, "globex");
}

TEST(KeyStore, RejectsUnknownMalformedAndMissing) {
  KeyStore keys(makeConfig(false, false));
  for (std::string h : {"Bearer nope", "Basic a2V5LW9uZQ==", "Bearer", "Bearer ", "key-one", "Bearerkey-one"}) {
    EXPECT_EQ(keys.authenticate(&h).outcome, AuthOutcome::Unauthorized) << h;
  }
  EXPECT_EQ(keys.authenticate(nullptr).outcome, AuthOutcome::Unauthorized);
}

TEST(KeyStore, DefaultOrganisationWithoutHeader) {
  KeyStore keys(makeConfig(false, true));
  AuthResult r = keys.authenticate(nullptr);
  ASSERT_EQ(r.outcome, AuthOutcome::Authenticated);
  EXPECT_EQ(r.principal.org->name, "globex");
  // A wrong key is still rejected: the default is for requests without one.
  std::string h = "Bearer wrong";
  EXPECT_EQ(keys.authenticate(&h).outcome, AuthOutcome::Unauthorized);
}

TEST(KeyStore, PassThroughNamespacesByDigestNeverByKey) {
  KeyStore keys(makeConfig(true, false));
  std::string h = "Bearer sk_someone_elses_key";
  AuthResult r = keys.authenticate(&h);
  ASSERT_EQ(r.outcome, AuthOutcome::Authenticated);
  EXPECT_TRUE(r.principal.pass_through);
  EXPECT_EQ(r.principal.org, nullptr);
  EXPECT_EQ(r.principal.namespace_id, "pt:" + sha256Hex("sk_someone_elses_key"));
  EXPECT_EQ(r.principal.namespace_id.find("sk_someone"), std::string::npos);
  // A configured key still maps to its organisation.
  h = "Bearer key-one";
  EXPECT_FALSE(keys.authenticate(&h).principal.pass_through);
}

TEST(KeyStore, FindsClientByCertificateSubject) {
  KeyStore keys(makeConfig(false, false));
  AuthResult r = keys.authenticateSubject("web.acme.internal");
  ASSERT_EQ(r.outcome, AuthOutcome::Authenticated);
  EXPECT_EQ(r.principal.org->name, "acme");
  EXPECT_EQ(r.principal.org_label, "acme");
  EXPECT_EQ(r.principal.client, "web");
  EXPECT_EQ(r.principal.weight, 3);
  EXPECT_EQ(r.principal.namespace_id, "acme");
  EXPECT_FALSE(r.principal.pass_through);
  // A client without a key, named only by its certificate.
  r = keys.authenticateSubject("batch.acme.internal");
  ASSERT_EQ(r.outcome, AuthOutcome::Authenticated);
  EXPECT_EQ(r.principal.client, "batch");
  EXPECT_EQ(r.principal.weight, 2);
  // Its key-less entry adds no key that could match.
  std::string h = "Bearer ";
  EXPECT_EQ(keys.authenticate(&h).outcome, AuthOutcome::Unauthorized);
}

TEST(KeyStore, UnknownSubjectIsNoClientEvenWithDefaultOrPassThrough) {
  // The caller falls back to "no key" (default_organisation or 401); the
  // store itself never invents a principal for a CN, nor a pass_through one.
  for (bool pass_through : {false, true}) {
    KeyStore keys(makeConfig(pass_through, true));
    for (std::string_view cn : {"", "unknown.example", "WEB.ACME.INTERNAL", "web.acme.internal ", "billing"}) {
      EXPECT_EQ(keys.authenticateSubject(cn).outcome, AuthOutcome::Unauthorized) << cn;
    }
  }
}

TEST(KeyStore, SubjectsFollowTheConfiguration) {
  ConfigPtr cfg = makeConfig(false, false);
  KeyStore before(cfg);
  auto next = std::make_shared<Config>(*cfg);
  next->organisations[0].clients[1].tls_subject = "web2.acme.internal";
  KeyStore after(next);
  EXPECT_EQ(before.authenticateSubject("web.acme.internal").outcome, AuthOutcome::Authenticated);
  EXPECT_EQ(after.authenticateSubject("web.acme.internal").outcome, AuthOutcome::Unauthorized);
  EXPECT_EQ(after.authenticateSubject("web2.acme.internal").principal.client, "web");
}

TEST(KeyStore, BearerParsing) {
  EXPECT_EQ(bearerToken("Bearer abc").value(), "abc");
  EXPECT_EQ(bearerToken("bearer   abc  ").value(), "abc");
  EXPECT_FALSE(bearerToken("Bearer").has_value());
  EXPECT_FALSE(bearerToken("Token abc").has_value());
}

}  // namespace
}  // namespace wfp
