// One client connection of an HttpServer: the server's own, not for other
// modules (they see HttpServer and HttpExchange, http_server.h). It reads
// requests with an HttpRequestReader, writes responses with an
// HttpResponseWriter, and in between runs the exchange: the handlers, time,
// keep-alive and closing.
#pragma once

#include <sys/time.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <string_view>

#include <event2/util.h>
#include <spdlog/spdlog.h>

#include "proxy/connection_timer.h"
#include "proxy/http_parser.h"
#include "proxy/http_request_reader.h"
#include "proxy/http_response_writer.h"
#include "proxy/http_server.h"

struct bufferevent;
struct evbuffer;
struct event;

namespace wfp {

// Runs fn, catching everything (C callbacks must not throw; STYLE):
// false if it threw.
template <typename Fn>
bool guarded(const char* what, Fn&& fn) noexcept {
  try {
    fn();
    return true;
  } catch (const std::exception& e) {
    spdlog::error("http: exception in {}: {}", what, e.what());
  } catch (...) {
    spdlog::error("http: unknown exception in {}", what);
  }
  return false;
}

// What the connections of one server share with it: the settings they read
// and the count they keep. The server owns it and outlives its connections.
struct HttpServerShared {
  HttpServerShared(EventLoop& l, const HttpServerLimits& lim, HttpServer::Handler h)
      : loop(l), limits(lim), handler(std::move(h)) {}
  virtual ~HttpServerShared() = default;
  HttpServerShared(const HttpServerShared&) = delete;
  HttpServerShared& operator=(const HttpServerShared&) = delete;

  // A connection closed: the server forgets it.
  virtual void unlink(HttpConnection* c) = 0;
  // Tells the error observer of an error response of the server's own, with
  // what was parsed of the request (`buffered`: the bytes read of it while
  // its head is not parsed yet).
  void reportError(int status, std::string_view code, const HttpExchange& ex, size_t buffered, size_t bytes_out);
  // Tells the TLS failure observer (and the debug log) of a handshake that
  // did not complete.
  void reportTlsFailure(TlsFailure failure, std::string_view peer, std::string_view detail);

  HttpParserLimits parserLimits() const { return {limits.max_header_bytes, limits.max_headers, limits.max_body_bytes}; }

  EventLoop& loop;
  HttpServerLimits limits;
  uint64_t limits_generation = 1;  // bumped by setLimits()
  HttpServer::Handler handler;
  HttpServer::HeadHandler head_handler;
  HttpServer::ErrorObserver on_error;
  HttpServer::TlsFailureObserver on_tls_failure;
  std::shared_ptr<const TlsContext> tls;  // for connections accepted from now on; null: plain HTTP
  size_t exchange_count = 0;

  // Timeouts as libevent "common timeouts" (O(1) add/remove, every connection
  // uses the same few durations); `has_*` false → disabled.
  timeval header_tv{}, idle_tv{}, write_tv{}, linger_tv{};
  bool has_header_tv = false, has_idle_tv = false, has_write_tv = false;
};

class HttpConnection {
 public:
  // `tls`: `bev` is a bufferevent_openssl, accepting (its handshake not yet
  // done); the response never goes straight to `fd`, which would bypass TLS.
  HttpConnection(HttpServerShared& server, bufferevent* bev, evutil_socket_t fd, std::string peer, bool tls);
  ~HttpConnection();
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  // --- for the server ---
  bool valid() const { return timer_.valid(); }  // false: out of memory in the constructor
  void start();
  // Waiting for a request, nothing of one read.
  bool idle() const;
  // closeIdleConnections(): close after the current response.
  void closeAfterResponse() { close_after_ = true; }
  // Releases the socket now; the memory goes on the next loop pass, since a
  // callback of this connection may be on the stack.
  void close() noexcept;
  // close() after the last response went out whole (or none was started):
  // over TLS the client is told with a close_notify alert first, so it can
  // tell this close from a cut. close() alone sends none (an aborted or
  // failed connection must not look complete).
  void closeGracefully() noexcept;
  // The server is going away: abort and close.
  void teardown();
  size_t requestBytesHeld() const;
  HttpConnection* prev_ = nullptr;  // the server's list of open connections
  HttpConnection* next_ = nullptr;

  // --- for HttpExchange (see http_server.h) ---
  std::shared_ptr<void>& data() { return data_; }
  void respond(int status, std::string_view reason, std::string_view preformatted, const HttpHeaders& headers,
               std::string_view body, const std::shared_ptr<const void>& body_owner);
  void begin(int status, std::string_view reason, std::string_view preformatted, const HttpHeaders& headers,
             int64_t content_length);
  bool write(std::string_view data);
  void end();
  void abortResponse();
  size_t pendingOutput() const { return writer_.pending(); }

 private:
  enum class State : uint8_t { Head, Body, Exchange, Closing, Lingering };
  using TimerKind = ConnectionTimer::Kind;

  static void run(void* arg, const char* what, void (HttpConnection::*handle)()) noexcept;
  static void onRead(bufferevent*, void* arg) noexcept;
  static void onWrite(bufferevent*, void* arg) noexcept;
  static void onEvent(bufferevent*, short what, void* arg) noexcept;
  static void onTimer(evutil_socket_t, short, void* arg) noexcept;
  static void onDeferred(evutil_socket_t, short, void* arg) noexcept;

  // input
  void handleRead();
  void processInput();
  bool onHead();
  // the exchange
  void dispatch();
  void openExchange();
  bool offerHead();
  void abortExchange();
  void fail() noexcept;
  void completeExchange();
  void resetExchange();
  // the response
  bool canRespond(const char* what) const;
  bool mayKeepAlive() const { return keep_alive_ && !close_after_ && !body_unread_; }
  void afterWrite();
  void finishResponse();
  void activateDeferred();
  void checkOutput();
  void handleDeferred();
  // events, timers, closing
  void handleEvent(short what);
  void handleTimer();
  void arm(TimerKind kind);  // with the server's limit for it
  void applyWriteTimeout();
  void sendError(int status, std::string_view message);
  void startClose(bool linger);
  void flushed();
  // TLS
  void handshakeDone();
  void handshakeFailed(TlsFailure failure, std::string_view detail);
  void sendCloseNotify() noexcept;

  HttpServerShared& server_;
  bufferevent* bev_;
  evbuffer* in_;
  evutil_socket_t fd_;
  ConnectionTimer timer_;
  event* deferred_ = nullptr;

  HttpExchange ex_;  // reused for every request on this connection
  HttpRequestReader reader_;
  HttpResponseWriter writer_;
  std::shared_ptr<void> data_;  // HttpExchange::connectionData()
  State state_ = State::Head;
  bool closed_ = false;
  bool exchange_active_ = false;  // handed to the handler, not yet complete/aborted
  bool keep_alive_ = true;
  bool close_after_ = false;  // closeIdleConnections(): close after the current response
  bool peer_eof_ = false;
  bool read_suspended_ = false;
  bool linger_ = false;
  bool body_unread_ = false;  // the head handler answered: the request's body is never read
  const bool tls_;                // bev_ is a bufferevent_openssl
  bool handshake_done_ = false;   // TLS: BEV_EVENT_CONNECTED came
  uint64_t applied_generation_ = 0;  // of the limits, for the write timeout
  uint64_t reader_generation_ = 0;   // of the limits, in the parser
};

}  // namespace wfp
