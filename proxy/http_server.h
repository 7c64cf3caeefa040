// The client-facing HTTP/1.1 server, on libevent bufferevents.
//
// Why not evhttp: evhttp answers an oversized body with its own HTML 413
// (the spec wants the JSON error shape), stops reading a connection once it
// hands over a request so a client that leaves goes unnoticed (libevent#794),
// and gives no control over write back-pressure. This server keeps each of
// those in our hands; it speaks HTTP/1.0 and 1.1 with keep-alive and
// pipelining (requests on one connection are answered in order, one at a
// time), Content-Length and chunked request bodies, Expect: 100-continue.
// With setTls() its listener speaks TLS (libevent's bufferevent_openssl):
// the handshake comes first, on the clock of the first request's head; a
// connection whose handshake fails is closed without a word and reported to
// the TLS failure observer; after it, the same exchanges run over TLS.
//
// Life of an exchange:
//   bytes → parse head ─(a body follows)─► headHandler(exchange)?
//         │                                  │ answered: Connection: close,
//         │                                  │   the body is never read ─┐
//         │                                  ▼ false                     │
//         │                 (100-continue) → read body                   │
//         ▼                                  ▼                           │
//   (no body) ──────────────────► handler(exchange) ◄ a new exchange id  │
//   handler answers now or later: respond(), or begin() write()* end()   │
//   the response is flushed → onComplete ◄───────────────────────────────┘
//     → the next pipelined request (or, after a head answer, a lingering
//       close that discards whatever the client still sends)
//   client EOF/error before the response is complete → onAbort, then the
//   exchange is destroyed; no other callback runs after onAbort.
//   onComplete and onAbort never run inside respond()/end(): on a later
//   callback of the loop.
//
// Ownership: the server owns connections; a connection owns its current
// HttpExchange. Handlers must not keep an HttpExchange* beyond onAbort or
// onComplete: hold the exchange's id() and look it up, or clear the pointer
// in those callbacks. Every callback runs on the loop thread.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "proxy/config.h"
#include "proxy/event_loop.h"
#include "proxy/http_types.h"
#include "proxy/tls_context.h"

namespace wfp {

struct HttpServerLimits {
  size_t max_header_bytes = 64 * 1024;  // request line + headers; beyond → 431
  size_t max_headers = 100;             // header count; beyond → 431
  size_t max_body_bytes = 1024 * 1024;  // beyond → 413 payload_too_large (JSON)
  double header_timeout_s = 10;   // a request's head and body must arrive within this → 408
  double idle_timeout_s = 75;     // keep-alive connection with no request in progress
  double write_timeout_s = 60;    // response bytes pending with no progress → connection closed
  int max_connections = 10000;    // beyond: stop accepting until one closes
  size_t output_high_water = 256 * 1024;  // write() returns false above this backlog
};

class HttpConnection;

// One request and its response. The server's exchanges write to their
// connection; the response side is virtual so that a simulation (or a test)
// can stand in for the connection and drive a handler without sockets
// (tests/simulation): a subclass sets the request fields, overrides the
// response methods, and calls the callbacks as the server would (never
// inside respond()/end(), onAbort or onComplete at most once, last).
class HttpExchange {
 public:
  virtual ~HttpExchange() = default;
  HttpExchange(const HttpExchange&) = delete;
  HttpExchange& operator=(const HttpExchange&) = delete;

  uint64_t id() const { return id_; }  // unique in the process, across servers

  // --- the request (valid until the exchange ends) ---
  const std::string& method() const { return method_; }
  const std::string& target() const { return target_; }  // raw request-target, e.g. "/a/b?x=1"
  std::string_view path() const;   // target up to '?'
  std::string_view query() const;  // after '?', or empty
  int versionMinor() const { return version_minor_; }  // HTTP/1.x
  const HttpHeaders& headers() const { return headers_; }
  const std::string& body() const { return body_; }
  // Moves the body out (body() is empty afterwards): a request that waits in
  // a queue keeps one copy of it, not two.
  std::string takeBody() { return std::move(body_); }
  // Moves the headers out (headers() is empty afterwards), as takeBody().
  HttpHeaders takeHeaders() { return std::move(headers_); }
  // Frees the request's headers (headers() is empty afterwards): a request
  // that waits in a queue with everything it needs copied out holds less.
  void releaseHeaders() { HttpHeaders().swap(headers_); }
  size_t bytesIn() const { return bytes_in_; }  // head + body as received
  // Milliseconds from the complete head to the complete body (the upload),
  // for the access log's duration_ms; 0 before the body or without one.
  double receiveMs() const {
    return std::max(0.0, std::chrono::duration<double, std::milli>(body_at_ - head_at_).count());
  }
  const std::string& peer() const { return peer_; }
  // On a TLS listener with tls.client_ca_file: the subject CN of the client
  // certificate the connection's handshake verified (docs/security.md);
  // "" otherwise (plain HTTP, no client CA, a simulated exchange).
  const std::string& peerSubject() const { return peer_subject_; }

  // --- the response: exactly one of respond(), or begin() write()* end() ---
  // `headers` must not contain Content-Length, Transfer-Encoding or Connection:
  // the server writes those. A response to HEAD carries no body.
  virtual void respond(int status, std::string_view reason, const HttpHeaders& headers, std::string_view body);
  // Streams a body: chunked on HTTP/1.1 unless `content_length` is given
  // (≥ 0), close-delimited on HTTP/1.0.
  virtual void begin(int status, std::string_view reason, const HttpHeaders& headers, int64_t content_length = -1);
  // The same, with `preformatted` header lines written first: lines the
  // caller built once with appendHeaderLine() (a cached entry's headers).
  // `body_owner`, when given, keeps `body` alive: a large body the client
  // cannot take at once is then queued by reference, not copied.
  virtual void respond(int status, std::string_view reason, std::string_view preformatted, const HttpHeaders& headers,
                       std::string_view body, const std::shared_ptr<const void>& body_owner = nullptr);
  virtual void begin(int status, std::string_view reason, std::string_view preformatted, const HttpHeaders& headers,
                     int64_t content_length = -1);
  // False when the connection's unsent output is above output_high_water:
  // the caller should stop producing until onDrain. Data is never dropped.
  virtual bool write(std::string_view data);
  virtual void end();
  // Ends the response abnormally: the connection is closed without the final
  // chunk, so the client sees a truncated body (upstream cut mid-stream).
  virtual void abortResponse();

  // Data a handler keeps with the connection this exchange came on (the
  // last authentication, say): dropped when the connection closes.
  virtual std::shared_ptr<void>& connectionData();

  bool responseStarted() const { return response_started_; }
  int status() const { return status_; }
  size_t bytesOut() const { return bytes_out_; }
  virtual size_t pendingOutput() const;

  // Output backlog fell below half of output_high_water after write() said false.
  void setOnDrain(std::function<void()> fn) { on_drain_ = std::move(fn); }
  // The client went away (EOF, reset, write timeout) before the response was
  // complete. Runs at most once; the exchange is destroyed right after.
  void setOnAbort(std::function<void()> fn) { on_abort_ = std::move(fn); }
  // The whole response was handed to the kernel. Runs at most once; the
  // exchange is destroyed right after.
  void setOnComplete(std::function<void()> fn) { on_complete_ = std::move(fn); }

 protected:
  friend class HttpConnection;
  friend class HttpRequestReader;   // the request side
  friend class HttpResponseWriter;  // the response side
  HttpExchange() = default;
  // A new id, unique in the process (shared with the server's exchanges).
  static uint64_t nextId();

  uint64_t id_ = 0;
  HttpConnection* conn_ = nullptr;
  std::string method_;
  std::string target_;
  int version_minor_ = 1;
  HttpHeaders headers_;
  std::string body_;
  size_t bytes_in_ = 0;
  std::chrono::steady_clock::time_point head_at_{};
  std::chrono::steady_clock::time_point body_at_{};
  std::string peer_;
  std::string peer_subject_;
  bool head_request_ = false;
  bool response_started_ = false;
  bool response_done_ = false;
  bool chunked_ = false;
  bool want_drain_ = false;
  int status_ = 0;
  size_t bytes_out_ = 0;
  std::function<void()> on_drain_;
  std::function<void()> on_abort_;
  std::function<void()> on_complete_;
};

// A request the server answered itself, without handing it to the handler:
// malformed (400), too slow (408), too large (413, 431), an unsupported
// Transfer-Encoding (501) or HTTP version (505). For the access log and
// metrics. What the server did not get to parse is empty.
struct HttpServerError {
  int status = 0;
  std::string_view code;    // the JSON error body's code, e.g. "bad_request"
  std::string_view method;  // empty when the request line was not parsed
  std::string_view path;    // the target up to '?'; empty likewise
  size_t bytes_in = 0;      // bytes of this request read so far
  size_t bytes_out = 0;     // the error response
  std::string_view peer;
};

struct BoundListener {
  std::string address;  // "127.0.0.1:43123", "[::1]:8080", "unix:/run/x.sock"
  uint16_t port = 0;    // actual port (TCP)
};

class HttpServer {
 public:
  using Handler = std::function<void(HttpExchange&)>;
  // Runs on the loop thread when the server has written an error response of
  // its own (the connection then closes); the fields live for the call only.
  // It must not call back into the server.
  using ErrorObserver = std::function<void(const HttpServerError&)>;
  // Runs once the head of a request that has a body (Content-Length > 0 or
  // chunked, within max_body_bytes) is parsed, unless a Content-Length body
  // is already wholly received with it: before any `100 Continue` and
  // before a byte of the body is read, so a request that will be refused
  // (no valid key, docs/http.md) costs neither. The exchange is live: it has
  // its id, counts in exchangeCount(), method/target/headers are set, body()
  // is empty, setOnAbort/setOnComplete work. The hook either
  //   - answers it now (respond(), or begin() with write()/end() now or
  //     later) and returns true: the response carries `Connection: close`,
  //     the body is never read (what the client still sends, pipelined
  //     requests included, is discarded, not buffered, and bytesIn() counts
  //     only the head), onComplete or onAbort run as for any exchange, and
  //     the connection closes after the response (lingering, so the client
  //     reads it rather than a reset); or
  //   - returns false having registered nothing (callbacks it set are
  //     dropped, with an error logged) and not touched the request (no
  //     takeBody/releaseHeaders): the server goes on as without the hook
  //     (100 Continue, the body, then the Handler with a NEW exchange id).
  // True without a response is a bug: the server answers 500. A request
  // without a body never reaches the hook: the Handler runs on its head.
  using HeadHandler = std::function<bool(HttpExchange&)>;
  // Runs on the loop thread when a TLS handshake did not complete (the
  // connection is closed); `peer` and `detail` live for the call only.
  using TlsFailureObserver = std::function<void(TlsFailure failure, std::string_view peer, std::string_view detail)>;

  HttpServer(EventLoop& loop, HttpServerLimits limits, Handler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and starts accepting. On failure returns false and sets `error`.
  bool listen(const ListenAddress& address, BoundListener* bound, std::string* error);
  // TLS for the connections accepted from now on (null: plain HTTP); open
  // connections keep what they were accepted with. The handshake runs under
  // header_timeout_s, as the first request's head does (it starts at accept).
  void setTls(std::shared_ptr<const TlsContext> tls);
  bool tls() const;
  // Closes every listening socket (new connections are refused).
  void stopAccepting();
  // Closes idle keep-alive connections now, and makes busy ones close after
  // their current response (Connection: close). Used by drain.
  void closeIdleConnections();
  void setLimits(const HttpServerLimits& limits);  // reload: applies to new requests
  void setErrorObserver(ErrorObserver observer);
  void setHeadHandler(HeadHandler handler);
  void setTlsFailureObserver(TlsFailureObserver observer);

  size_t connectionCount() const;
  size_t exchangeCount() const;  // requests handed to the handler, not yet complete
  // Memory held for requests as they come in, over every connection: input
  // not yet parsed (or not yet discarded) plus the capacity of the request
  // bodies. Walks the connections: for tests and an occasional gauge.
  size_t requestBytesHeld() const;

  // The JSON error body the server uses for its own errors (and that the
  // proxy reuses): {"error":"<message>","success":false,"code":"<code>"}.
  static std::string errorBody(std::string_view message, std::string_view code);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace wfp
