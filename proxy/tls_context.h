// TLS on the client listener (docs/security.md): the server's OpenSSL
// context, built from `tls:` at the start and again at each reload, and what
// a connection asks of OpenSSL (a session, the verified client certificate's
// subject CN, why a handshake failed). The HTTP server's part: only it and
// the configuration check use it.
//
// Lifetime: a TlsContext owns one SSL_CTX. Each connection's SSL holds its
// own reference on that SSL_CTX (OpenSSL counts them), so a reload that
// swaps the server's TlsContext leaves open connections on the context they
// were accepted with; the old SSL_CTX goes with its last connection.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/config.h"

struct ssl_st;
struct ssl_ctx_st;
struct bufferevent;

namespace wfp {

class TlsContext {
 public:
  // One problem with the files of `tls:`: the key it concerns
  // ("tls.cert_file", "tls.key_file", "tls.client_ca_file") and a message
  // that names the file and the reason, never the file's content.
  struct Problem {
    std::string key;
    std::string message;
  };

  // Loads the certificate chain, the private key (and checks that it is the
  // certificate's) and, with client_ca_file, the CAs a client certificate
  // must be signed by. Null with every problem found in `problems`.
  static std::shared_ptr<const TlsContext> load(const TlsConfig& config, std::vector<Problem>* problems);

  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  // A new server-side session for one connection (null: out of memory).
  // It holds its own reference on this context.
  ssl_st* newSession() const;
  bool verifiesClients() const { return verify_clients_; }
  // The leaf certificate, for the log: "subject CN, serial, notAfter".
  const std::string& description() const { return description_; }
  // The leaf certificate has expired (or is not valid yet): served anyway,
  // as nginx does, with a warning at each load.
  bool outsideValidity() const { return outside_validity_; }

 private:
  explicit TlsContext(ssl_ctx_st* ctx) : ctx_(ctx) {}

  ssl_ctx_st* ctx_;
  bool verify_clients_ = false;
  bool outside_validity_ = false;
  std::string description_;
};

// Why a TLS handshake did not complete; the `reason` label of
// workflow_proxy_tls_handshake_failures_total (docs/operations.md).
enum class TlsFailure : uint8_t {
  PlainHttp,          // the client spoke plain HTTP to the TLS listener
  ClientCertificate,  // no client certificate, or one the client CA did not sign
  Protocol,           // any other TLS error (no common version or cipher, a bad record, an alert)
  Closed,             // the client closed the connection before finishing the handshake
  Timeout,            // limits.client_header_timeout_s passed before the handshake finished
};
std::string_view tlsFailureLabel(TlsFailure failure);

// After a failed handshake on `bev` (a bufferevent_openssl): why, from the
// OpenSSL errors libevent kept for it; `detail` gets OpenSSL's reason text.
TlsFailure classifyHandshakeFailure(bufferevent* bev, std::string* detail);

// The subject CN of the client certificate that `ssl`'s handshake verified;
// "" when there is none, it did not verify, or its subject has no CN, more
// than one, or one with a NUL in it.
std::string verifiedPeerCommonName(ssl_st* ssl);

}  // namespace wfp
