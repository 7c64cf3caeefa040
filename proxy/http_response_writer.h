// The response side of a server connection: formats a response's head,
// frames its body (Content-Length, chunked, or until the connection closes)
// and puts the bytes on the socket.
//
// Hot path: bytes go with one sendmsg() straight to the socket while nothing
// is queued (the common case), so a cache hit costs no evbuffer copy of the
// body and no epoll_ctl for the write event; whatever the kernel does not
// take goes to the bufferevent's output and libevent flushes it. Over TLS
// there is no socket to write to (fd -1); once the handshake is done
// (setTls) a small piece (one TLS record) goes with one SSL_write() while
// nothing is queued, and anything else to the output of the
// bufferevent_openssl, which encrypts it.
//
// It keeps the exchange's response record (responseStarted(), status(),
// bytesOut()); when to respond, and what follows a response, is the
// connection's to decide (http_connection.h). It calls nothing back: a write
// that fails sets failed() and writes nothing more.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string_view>

#include <event2/util.h>

#include "proxy/http_types.h"

struct evbuffer;
struct ssl_st;

namespace wfp {

class HttpExchange;

class HttpResponseWriter {
 public:
  HttpResponseWriter(HttpExchange& exchange, evbuffer* output, evutil_socket_t fd)
      : ex_(exchange), out_(output), fd_(fd) {}
  HttpResponseWriter(const HttpResponseWriter&) = delete;
  HttpResponseWriter& operator=(const HttpResponseWriter&) = delete;

  // A whole response (none of its body for HEAD, 1xx, 204, 304). With
  // `keep_alive` the connection may stay open after it; returns whether it
  // will (otherwise the head says Connection: close). `body_owner`, when
  // given, keeps `body` alive: a large body the socket does not take at once
  // is then queued by reference, not copied.
  bool respond(int status, std::string_view reason, std::string_view preformatted, const HttpHeaders& headers,
               std::string_view body, const std::shared_ptr<const void>& body_owner, bool keep_alive);
  // The head of a streamed response: Content-Length when given (≥ 0),
  // otherwise chunked on HTTP/1.1 and until the connection closes on 1.0.
  // `keep_alive` and the result as for respond().
  bool begin(int status, std::string_view reason, std::string_view preformatted, const HttpHeaders& headers,
             int64_t content_length, bool keep_alive);
  // A piece of the streamed body, framed; beyond a Content-Length, cut.
  void write(std::string_view data);
  // The end of the streamed body. False when it fell short of its
  // Content-Length: the client waits for bytes that will never come, and
  // only closing the connection tells it.
  bool end();
  // The server's own error (the JSON body of docs/http.md, Connection: close),
  // not recorded in the exchange. Returns its size in bytes.
  size_t error(int status, std::string_view message, std::string_view code);
  // The code of that JSON body for each status the server answers itself
  // (400, 408, 413, 431, 501, 505).
  static std::string_view errorCode(int status);
  // An interim response ("100 Continue"), as given.
  void interim(std::string_view bytes);
  // Clears the exchange's response for the connection's next one.
  void reset();
  // The connection is closing its socket: write nothing more.
  void close() { closed_ = true; }
  // TLS: the connection's session, handshake done; null before.
  void setTls(ssl_st* ssl) { ssl_ = ssl; }

  bool failed() const { return failed_; }  // a write failed: the client is gone
  size_t pending() const;                  // bytes queued, not yet on the socket

 private:
  enum class Framing : uint8_t { None, Length, Chunked, Close };

  void output(iovec* iov, int n, const std::shared_ptr<const void>& owner = nullptr);
  // One SSL_write() of the pieces, while nothing is queued: true when it
  // took them (all written, or, the socket being full, queued whole as
  // OpenSSL's retry needs them) or the connection failed; false when not
  // tried (too large, or a TLS operation is waiting to write).
  bool outputTls(const iovec* iov, int n);
  static void releaseOwner(const void*, size_t, void* hold) noexcept;

  HttpExchange& ex_;
  evbuffer* out_;
  evutil_socket_t fd_;
  ssl_st* ssl_ = nullptr;
  Framing framing_ = Framing::None;
  int64_t declared_length_ = -1;  // begin() with a Content-Length
  uint64_t body_sent_ = 0;
  bool failed_ = false;
  bool closed_ = false;
};

}  // namespace wfp
