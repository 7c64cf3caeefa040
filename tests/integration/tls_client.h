// TLS for the integration tests: throw-away certificates
// (tests/tools/make_test_certs.sh) and a blocking OpenSSL client connection
// that speaks raw HTTP/1.1 bytes, as harness.h's Connection does over TCP.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "tests/integration/harness.h"

struct ssl_st;
struct ssl_ctx_st;

namespace wfp::test {

// The certificates of make_test_certs.sh in a temporary directory, removed
// with it: ca.pem, server.pem/.key (serial 1001), server2.pem/.key (serial
// 1002), client-<CN>.pem/.key for each CN, other-client.pem/.key (another CA).
class TestCertificates {
 public:
  explicit TestCertificates(const std::vector<std::string>& client_cns = {});
  std::string file(const std::string& name) const { return dir_.file(name); }
  std::string ca() const { return file("ca.pem"); }
  std::string clientCert(const std::string& cn) const { return file("client-" + cn + ".pem"); }
  std::string clientKey(const std::string& cn) const { return file("client-" + cn + ".key"); }

 private:
  TempDir dir_;
};

struct TlsClientOptions {
  std::string ca_file;    // the server's certificate must verify against it (and name 127.0.0.1)
  std::string cert_file;  // a client certificate; "" for none
  std::string key_file;
  std::vector<std::string> alpn;  // protocols offered, e.g. {"h2", "http/1.1"}; none by default
  int max_version = 0;            // e.g. TLS1_2_VERSION; 0: the newest OpenSSL speaks
};

class TlsConnection {
 public:
  // Connects to 127.0.0.1:port and runs the handshake; handshakeOk() says
  // how it went (a TCP connection that fails throws).
  TlsConnection(int port, const TlsClientOptions& options,
                std::chrono::milliseconds timeout = std::chrono::seconds(10));
  ~TlsConnection();
  TlsConnection(const TlsConnection&) = delete;
  TlsConnection& operator=(const TlsConnection&) = delete;

  bool handshakeOk() const { return handshake_ok_; }
  // The last failure, in OpenSSL's words (e.g. "... alert certificate required").
  const std::string& error() const { return error_; }
  bool send(const std::string& bytes);
  // One response; `ok` false when the connection ended or failed first
  // (then error() says why) or `timeout` passed.
  HttpResponse readResponse(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // Reads (and drops) until the server closes the connection: true, or
  // false when `timeout` passes first.
  bool waitClosed(std::chrono::milliseconds timeout);
  // The server certificate's serial number in hex ("1001"), the protocol
  // ("TLSv1.3") and the ALPN protocol the server chose ("" for none).
  std::string peerSerial() const;
  std::string protocol() const;
  std::string alpn() const;

 private:
  // SSL_read with a deadline: bytes read (> 0), 0 on a clean close, -1 on an
  // error or timeout.
  int readSome(char* buf, int len, std::chrono::steady_clock::time_point deadline);

  int fd_ = -1;
  ssl_ctx_st* ctx_ = nullptr;
  ssl_st* ssl_ = nullptr;
  bool handshake_ok_ = false;
  std::string error_;
  std::string pending_;
};

}  // namespace wfp::test
