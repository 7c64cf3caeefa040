#include "tests/integration/tls_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

namespace wfp::test {

namespace {

std::string openSslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

// Waits for the socket to be readable (or writable); false at the deadline.
bool waitFor(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  if (left.count() <= 0) return false;
  pollfd p{fd, events, 0};
  return ::poll(&p, 1, static_cast<int>(left.count()) + 1) > 0;
}

}  // namespace

TestCertificates::TestCertificates(const std::vector<std::string>& client_cns) {
  std::string cmd = "bash " + shellQuote(std::string(WFP_SOURCE_DIR) + "/tests/tools/make_test_certs.sh") + " " +
                    shellQuote(dir_.path);
  for (const auto& cn : client_cns) cmd += " " + shellQuote(cn);
  if (std::system((cmd + " >/dev/null 2>&1").c_str()) != 0) {
    throw std::runtime_error("make_test_certs.sh failed: " + cmd);
  }
}

TlsConnection::TlsConnection(int port, const TlsClientOptions& options, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  fd_ = connectTo(port);
  ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);

  ctx_ = SSL_CTX_new(TLS_client_method());
  if (!ctx_) throw std::runtime_error("SSL_CTX_new failed");
  if (!options.ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx_, options.ca_file.c_str(), nullptr) != 1) {
      throw std::runtime_error("cannot load " + options.ca_file + ": " + openSslErrors());
    }
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
  }
  if (!options.cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx_, options.cert_file.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx_, options.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
      throw std::runtime_error("cannot load the client certificate " + options.cert_file + ": " + openSslErrors());
    }
  }
  if (options.max_version != 0) SSL_CTX_set_max_proto_version(ctx_, options.max_version);
  if (!options.alpn.empty()) {
    std::string wire;
    for (const auto& p : options.alpn) {
      wire.push_back(static_cast<char>(p.size()));
      wire += p;
    }
    SSL_CTX_set_alpn_protos(ctx_, reinterpret_cast<const unsigned char*>(wire.data()),
                            static_cast<unsigned int>(wire.size()));
  }
  ssl_ = SSL_new(ctx_);
  if (!ssl_) throw std::runtime_error("SSL_new failed");
  SSL_set_fd(ssl_, fd_);
  // The server's certificate must name the address we connected to.
  X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), "127.0.0.1");
  for (;;) {
    ERR_clear_error();
    int r = SSL_connect(ssl_);
    if (r == 1) {
      handshake_ok_ = true;
      return;
    }
    int err = SSL_get_error(ssl_, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      if (waitFor(fd_, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) continue;
      error_ = "handshake timed out";
      return;
    }
    error_ = "handshake failed: " + openSslErrors();
    if (error_ == "handshake failed: ") error_ += err == SSL_ERROR_SYSCALL ? "connection closed" : "error";
    return;
  }
}

TlsConnection::~TlsConnection() {
  if (ssl_) SSL_free(ssl_);
  if (ctx_) SSL_CTX_free(ctx_);
  if (fd_ >= 0) ::close(fd_);
}

bool TlsConnection::send(const std::string& bytes) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  size_t off = 0;
  while (off < bytes.size()) {
    ERR_clear_error();
    int r = SSL_write(ssl_, bytes.data() + off, static_cast<int>(bytes.size() - off));
    if (r > 0) {
      off += static_cast<size_t>(r);
      continue;
    }
    int err = SSL_get_error(ssl_, r);
    if ((err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) &&
        waitFor(fd_, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) {
      continue;
    }
    error_ = "write failed: " + openSslErrors();
    return false;
  }
  return true;
}

int TlsConnection::readSome(char* buf, int len, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    ERR_clear_error();
    int r = SSL_read(ssl_, buf, len);
    if (r > 0) return r;
    int err = SSL_get_error(ssl_, r);
    if (err == SSL_ERROR_ZERO_RETURN) return 0;
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      if (waitFor(fd_, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) continue;
      error_ = "read timed out";
      return -1;
    }
    std::string why = openSslErrors();
    if (why.empty()) why = err == SSL_ERROR_SYSCALL ? "connection closed without close_notify" : "read error";
    error_ = "read failed: " + why;
    return err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && error_.find("without") != std::string::npos ? 0 : -1;
  }
}

HttpResponse TlsConnection::readResponse(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    HttpResponse r;
    size_t used = parseResponsePrefix(pending_, &r, false);
    if (used) {
      pending_.erase(0, used);
      return r;
    }
    char buf[65536];
    int n = readSome(buf, sizeof buf, deadline);
    if (n > 0) {
      pending_.append(buf, static_cast<size_t>(n));
      continue;
    }
    HttpResponse last;
    if (n == 0) {
      used = parseResponsePrefix(pending_, &last, true);
      if (used) pending_.erase(0, used);
    }
    if (!last.ok) last.raw = pending_;
    return last;
  }
}

bool TlsConnection::waitClosed(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[4096];
  for (;;) {
    int n = readSome(buf, sizeof buf, deadline);
    if (n > 0) continue;
    return error_ != "read timed out";
  }
}

std::string TlsConnection::peerSerial() const {
  X509* cert = SSL_get0_peer_certificate(ssl_);
  if (!cert) return "";
  BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr);
  if (!bn) return "";
  char* hex = BN_bn2hex(bn);
  std::string out = hex ? hex : "";
  OPENSSL_free(hex);
  BN_free(bn);
  return out;
}

std::string TlsConnection::protocol() const { return ssl_ ? SSL_get_version(ssl_) : ""; }

std::string TlsConnection::alpn() const {
  const unsigned char* data = nullptr;
  unsigned int len = 0;
  SSL_get0_alpn_selected(ssl_, &data, &len);
  return std::string(reinterpret_cast<const char*>(data), len);
}

}  // namespace wfp::test
