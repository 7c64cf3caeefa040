#include "proxy/tls_context.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <event2/bufferevent_ssl.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

namespace wfp {

namespace {

constexpr unsigned char kSessionIdContext[] = "workflow-proxy";

// OpenSSL's reasons for what just failed, oldest first, without repeats;
// the error queue is cleared. Reasons name what went wrong ("no start
// line", "key values mismatch"), never the data.
std::string takeOpenSslReasons() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    const char* reason = ERR_reason_error_string(e);
    std::string text = reason ? reason : "error " + std::to_string(ERR_GET_REASON(e));
    if (out.find(text) != std::string::npos) continue;
    if (!out.empty()) out += "; ";
    out += text;
  }
  return out.empty() ? std::string("unknown OpenSSL error") : out;
}

// The file must be there and readable by us: say so plainly, before OpenSSL
// says it in its own words.
bool readable(const std::string& path, std::string* why) {
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (!f) {
    *why = path + ": " + std::strerror(errno);
    return false;
  }
  std::fclose(f);
  return true;
}

// Encrypted keys are refused rather than prompted for: the proxy runs
// unattended, and a prompt on a terminal would hang the start.
int noPassphrase(char*, int, int, void*) { return -1; }

// http/1.1 when the client offers it, else no ALPN at all (the proxy speaks
// nothing else; a client that offers only h2 is told nothing and may fall
// back or give up).
int selectAlpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen,
               void*) {
  static constexpr unsigned char kHttp11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, kHttp11, sizeof kHttp11, in, inlen) == OPENSSL_NPN_NEGOTIATED) {
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

std::string describeCertificate(X509* cert) {
  std::string out;
  X509_NAME* subject = X509_get_subject_name(cert);
  int idx = subject ? X509_NAME_get_index_by_NID(subject, NID_commonName, -1) : -1;
  if (idx >= 0) {
    unsigned char* utf8 = nullptr;
    int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx)));
    if (n > 0) {
      out = "CN=" + std::string(reinterpret_cast<char*>(utf8), static_cast<size_t>(n));
      OPENSSL_free(utf8);
    }
  }
  if (BIGNUM* serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr)) {
    if (char* hex = BN_bn2hex(serial)) {
      out += (out.empty() ? "" : ", ") + std::string("serial ") + hex;
      OPENSSL_free(hex);
    }
    BN_free(serial);
  }
  if (BIO* mem = BIO_new(BIO_s_mem())) {
    if (ASN1_TIME_print(mem, X509_get0_notAfter(cert)) == 1) {
      char* data = nullptr;
      long len = BIO_get_mem_data(mem, &data);
      out += ", valid until " + std::string(data, static_cast<size_t>(len));
    }
    BIO_free(mem);
  }
  return out;
}

}  // namespace

std::shared_ptr<const TlsContext> TlsContext::load(const TlsConfig& config, std::vector<Problem>* problems) {
  std::vector<Problem> found;
  auto problem = [&](const char* key, std::string message) { found.push_back(Problem{key, std::move(message)}); };
  auto fail = [&]() -> std::shared_ptr<const TlsContext> {
    if (problems) problems->insert(problems->end(), found.begin(), found.end());
    return nullptr;
  };
  ERR_clear_error();
  SSL_CTX* raw = SSL_CTX_new(TLS_server_method());
  if (!raw) {
    problem("tls.cert_file", "cannot create a TLS context: " + takeOpenSslReasons());
    return fail();
  }
  std::shared_ptr<TlsContext> tls(new TlsContext(raw));
  SSL_CTX* ctx = tls->ctx_;

  // TLS 1.2 and 1.3 with OpenSSL's default ciphers and security level, the
  // server's order of preference; no renegotiation (a client could make the
  // server redo expensive handshakes, and nothing here needs it). A client
  // that closes without close_notify is an ordinary EOF: HTTP frames its
  // requests itself, so a cut request is seen as such.
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_IGNORE_UNEXPECTED_EOF);
  // Resumption by session tickets only (stateless; the keys are this
  // context's own, so a reload ends resumption of older sessions): no
  // server-side session cache to bound.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_session_id_context(ctx, kSessionIdContext, sizeof kSessionIdContext - 1);
  SSL_CTX_set_alpn_select_cb(ctx, &selectAlpn, nullptr);
  // OpenSSL's record buffers are freed while unused: measured with 1 000
  // kept-alive mTLS connections after one request each, ~27 KiB a connection
  // instead of ~36 KiB (plain HTTP: ~3 KiB). A busy connection reallocates
  // them per request, a small cost next to the record's crypto and syscalls
  // (nginx makes the same choice).
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);

  bool cert_ok = false;
  std::string why;
  if (!readable(config.cert_file, &why)) {
    problem("tls.cert_file", why);
  } else if (SSL_CTX_use_certificate_chain_file(ctx, config.cert_file.c_str()) != 1) {
    problem("tls.cert_file", "cannot load a certificate chain (PEM) from " + config.cert_file + ": " +
                                 takeOpenSslReasons());
  } else {
    cert_ok = true;
  }

  if (!readable(config.key_file, &why)) {
    problem("tls.key_file", why);
  } else {
    EVP_PKEY* key = nullptr;
    if (BIO* bio = BIO_new_file(config.key_file.c_str(), "r")) {
      key = PEM_read_bio_PrivateKey(bio, nullptr, &noPassphrase, nullptr);
      BIO_free(bio);
    }
    if (!key) {
      unsigned long e = ERR_peek_last_error();
      bool encrypted = ERR_GET_LIB(e) == ERR_LIB_PEM &&
                       (ERR_GET_REASON(e) == PEM_R_BAD_PASSWORD_READ || ERR_GET_REASON(e) == PEM_R_PROBLEMS_GETTING_PASSWORD);
      std::string reasons = takeOpenSslReasons();
      problem("tls.key_file",
              encrypted ? "the private key in " + config.key_file +
                              " is encrypted: the proxy takes no passphrase; store it unencrypted, readable only by "
                              "the proxy"
                        : "cannot load a private key (PEM) from " + config.key_file + ": " + reasons);
    } else {
      X509* leaf = cert_ok ? SSL_CTX_get0_certificate(ctx) : nullptr;
      if (leaf && X509_check_private_key(leaf, key) != 1) {
        ERR_clear_error();
        problem("tls.key_file", "the private key in " + config.key_file +
                                    " does not match the certificate in tls.cert_file (" + config.cert_file + ")");
      } else if (SSL_CTX_use_PrivateKey(ctx, key) != 1) {
        problem("tls.key_file", "cannot use the private key in " + config.key_file + ": " + takeOpenSslReasons());
      } else if (leaf && SSL_CTX_check_private_key(ctx) != 1) {
        problem("tls.key_file", "the private key in " + config.key_file +
                                    " does not match the certificate in tls.cert_file (" + config.cert_file +
                                    "): " + takeOpenSslReasons());
      }
      EVP_PKEY_free(key);
    }
  }

  if (!config.client_ca_file.empty()) {
    if (!readable(config.client_ca_file, &why)) {
      problem("tls.client_ca_file", why);
    } else if (SSL_CTX_load_verify_locations(ctx, config.client_ca_file.c_str(), nullptr) != 1) {
      problem("tls.client_ca_file", "cannot load CA certificates (PEM) from " + config.client_ca_file + ": " +
                                        takeOpenSslReasons());
    } else {
      // Named in the CertificateRequest: a client with several certificates
      // picks one these CAs signed.
      STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(config.client_ca_file.c_str());
      if (!names || sk_X509_NAME_num(names) == 0) {
        if (names) sk_X509_NAME_pop_free(names, X509_NAME_free);
        ERR_clear_error();
        problem("tls.client_ca_file", "no CA certificate in " + config.client_ca_file);
      } else {
        SSL_CTX_set_client_CA_list(ctx, names);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
        tls->verify_clients_ = true;
      }
    }
  }

  if (!found.empty()) return fail();
  if (X509* leaf = SSL_CTX_get0_certificate(ctx)) {
    tls->description_ = describeCertificate(leaf);
    tls->outside_validity_ =
        X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0 || X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0;
  }
  ERR_clear_error();
  return tls;
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

ssl_st* TlsContext::newSession() const { return SSL_new(ctx_); }

std::string_view tlsFailureLabel(TlsFailure failure) {
  switch (failure) {
    case TlsFailure::PlainHttp: return "plain_http";
    case TlsFailure::ClientCertificate: return "client_certificate";
    case TlsFailure::Protocol: return "protocol";
    case TlsFailure::Closed: return "closed";
    case TlsFailure::Timeout: return "timeout";
  }
  return "protocol";
}

TlsFailure classifyHandshakeFailure(bufferevent* bev, std::string* detail) {
  // libevent keeps the first few errors of the failure (the SSL_get_error()
  // code, then OpenSSL's queue); the one from the TLS library says why.
  unsigned long ssl_error = 0;
  while (unsigned long e = bufferevent_get_openssl_error(bev)) {
    if (ERR_GET_LIB(e) == ERR_LIB_SSL) ssl_error = e;
  }
  if (ssl_error == 0) {
    if (detail) *detail = "connection closed";
    return TlsFailure::Closed;
  }
  if (detail) {
    const char* reason = ERR_reason_error_string(ssl_error);
    *detail = reason ? reason : "error " + std::to_string(ERR_GET_REASON(ssl_error));
  }
  switch (ERR_GET_REASON(ssl_error)) {
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST:
      return TlsFailure::PlainHttp;
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
      return TlsFailure::ClientCertificate;
    default:
      return TlsFailure::Protocol;
  }
}

std::string verifiedPeerCommonName(ssl_st* ssl) {
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (!cert || SSL_get_verify_result(ssl) != X509_V_OK) return {};
  X509_NAME* subject = X509_get_subject_name(cert);
  if (!subject) return {};
  int idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (idx < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, idx) >= 0) return {};
  unsigned char* utf8 = nullptr;
  int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx)));
  if (n <= 0) return {};
  std::string cn(reinterpret_cast<char*>(utf8), static_cast<size_t>(n));
  OPENSSL_free(utf8);
  if (cn.find('\0') != std::string::npos) return {};
  return cn;
}

}  // namespace wfp
