#include "proxy/http_response_writer.h"

#include <event2/buffer.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <cerrno>
#include <charconv>
#include <string>

#include <spdlog/spdlog.h>

#include "proxy/http_server.h"

namespace wfp {

namespace {

// The last piece of a response at least this large, whose memory an owner
// keeps alive, is queued by reference rather than copied.
constexpr size_t kReferenceMinBytes = 64 * 1024;
// At most one TLS record's plaintext goes out with a direct SSL_write().
constexpr size_t kTlsDirectMaxBytes = 16 * 1024;

void appendDecimal(std::string& out, uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, static_cast<size_t>(r.ptr - buf));
}

std::string_view defaultReason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

void appendStatusLine(std::string& out, int status, std::string_view reason) {
  if (status < 100 || status > 999) {
    spdlog::error("http: handler answered with invalid status {}; sending 500", status);
    status = 500;
    reason = {};
  }
  out.append("HTTP/1.1 ");
  char digits[3] = {static_cast<char>('0' + status / 100), static_cast<char>('0' + status / 10 % 10),
                    static_cast<char>('0' + status % 10)};
  out.append(digits, 3);
  out.push_back(' ');
  if (reason.empty()) reason = defaultReason(status);
  // reason-phrase = *( HTAB / SP / VCHAR / obs-text ): drop anything else, so
  // a reason taken from elsewhere cannot split the response.
  for (char c : reason) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u == '\t' || u >= 0x20) {
      if (u != 0x7F) out.push_back(c);
    }
  }
  out.append("\r\n");
}

void appendHeaders(std::string& out, const HttpHeaders& headers) {
  for (const HttpHeader& h : headers) appendHeaderLine(out, h.name, h.value);
}

// Appends the Connection header a response needs, given whether the
// connection stays open after it.
void appendConnectionHeader(std::string& head, bool keep_alive, int version_minor) {
  if (!keep_alive) {
    head.append("Connection: close\r\n");
  } else if (version_minor == 0) {
    head.append("Connection: keep-alive\r\n");
  }
}

// The response head buffer, reused for every response on this thread.
std::string& headScratch() {
  thread_local std::string buffer = [] {
    std::string s;
    s.reserve(2048);
    return s;
  }();
  buffer.clear();
  return buffer;
}

}  // namespace

bool HttpResponseWriter::respond(int status, std::string_view reason, std::string_view preformatted,
                                 const HttpHeaders& headers, std::string_view body,
                                 const std::shared_ptr<const void>& body_owner, bool keep_alive) {
  const bool no_body_status = status < 200 || status == 204 || status == 304;
  std::string& head = headScratch();
  appendStatusLine(head, status, reason);
  head.append(preformatted);
  appendHeaders(head, headers);
  if (!no_body_status) {
    head.append("Content-Length: ");
    appendDecimal(head, body.size());
    head.append("\r\n");
  }
  appendConnectionHeader(head, keep_alive, ex_.version_minor_);
  head.append("\r\n");
  ex_.response_started_ = true;
  ex_.status_ = status;
  const bool send_body = !ex_.head_request_ && !no_body_status && !body.empty();
  iovec iov[2] = {{head.data(), head.size()}, {const_cast<char*>(body.data()), body.size()}};
  ex_.bytes_out_ = head.size() + (send_body ? body.size() : 0);
  output(iov, send_body ? 2 : 1, body_owner);
  return keep_alive;
}

bool HttpResponseWriter::begin(int status, std::string_view reason, std::string_view preformatted,
                               const HttpHeaders& headers, int64_t content_length, bool keep_alive) {
  const bool no_body_status = status < 200 || status == 204 || status == 304;
  std::string& head = headScratch();
  appendStatusLine(head, status, reason);
  head.append(preformatted);
  appendHeaders(head, headers);
  if (no_body_status) {
    framing_ = Framing::None;
  } else if (content_length >= 0) {
    head.append("Content-Length: ");
    appendDecimal(head, static_cast<uint64_t>(content_length));
    head.append("\r\n");
    framing_ = ex_.head_request_ ? Framing::None : Framing::Length;
    declared_length_ = content_length;
  } else if (ex_.head_request_) {
    framing_ = Framing::None;  // a HEAD response has no body; its length is unknown
  } else if (ex_.version_minor_ == 1) {
    head.append("Transfer-Encoding: chunked\r\n");
    framing_ = Framing::Chunked;
  } else {
    framing_ = Framing::Close;  // HTTP/1.0: the body ends when the connection does
    keep_alive = false;
  }
  appendConnectionHeader(head, keep_alive, ex_.version_minor_);
  head.append("\r\n");
  ex_.response_started_ = true;
  ex_.chunked_ = framing_ == Framing::Chunked;
  ex_.status_ = status;
  ex_.bytes_out_ = head.size();
  body_sent_ = 0;
  iovec iov{head.data(), head.size()};
  output(&iov, 1);
  return keep_alive;
}

void HttpResponseWriter::write(std::string_view data) {
  if (data.empty()) return;
  switch (framing_) {
    case Framing::None:
      break;  // HEAD, 204, 304: no body on the wire
    case Framing::Length: {
      uint64_t room = static_cast<uint64_t>(declared_length_) - body_sent_;
      if (data.size() > room) {
        spdlog::error("http: response body longer than its Content-Length {} (exchange {}); truncated",
                      declared_length_, ex_.id_);
        data = data.substr(0, static_cast<size_t>(room));
      }
      if (data.empty()) break;
      iovec iov{const_cast<char*>(data.data()), data.size()};
      output(&iov, 1);
      body_sent_ += data.size();
      ex_.bytes_out_ += data.size();
      break;
    }
    case Framing::Chunked: {
      char size_line[24];
      auto r = std::to_chars(size_line, size_line + 16, data.size(), 16);
      r.ptr[0] = '\r';
      r.ptr[1] = '\n';
      size_t size_len = static_cast<size_t>(r.ptr - size_line) + 2;
      static constexpr char kCrlf[] = "\r\n";
      iovec iov[3] = {{size_line, size_len},
                      {const_cast<char*>(data.data()), data.size()},
                      {const_cast<char*>(kCrlf), 2}};
      output(iov, 3);
      body_sent_ += data.size();
      ex_.bytes_out_ += size_len + data.size() + 2;
      break;
    }
    case Framing::Close: {
      iovec iov{const_cast<char*>(data.data()), data.size()};
      output(&iov, 1);
      body_sent_ += data.size();
      ex_.bytes_out_ += data.size();
      break;
    }
  }
}

bool HttpResponseWriter::end() {
  if (framing_ == Framing::Chunked) {
    static constexpr char kLast[] = "0\r\n\r\n";
    iovec iov{const_cast<char*>(kLast), 5};
    output(&iov, 1);
    ex_.bytes_out_ += 5;
  } else if (framing_ == Framing::Length && body_sent_ < static_cast<uint64_t>(declared_length_)) {
    spdlog::error("http: response body shorter ({}) than its Content-Length {} (exchange {}); closing", body_sent_,
                  declared_length_, ex_.id_);
    return false;
  }
  return true;
}

size_t HttpResponseWriter::error(int status, std::string_view message, std::string_view code) {
  std::string body = HttpServer::errorBody(message, code);
  std::string& head = headScratch();
  appendStatusLine(head, status, {});
  head.append("Content-Type: application/json\r\nContent-Length: ");
  appendDecimal(head, body.size());
  head.append("\r\nConnection: close\r\n\r\n");
  iovec iov[2] = {{head.data(), head.size()}, {body.data(), body.size()}};
  const size_t bytes = head.size() + body.size();
  output(iov, 2);
  return bytes;
}

std::string_view HttpResponseWriter::errorCode(int status) {
  switch (status) {
    case 408: return "request_timeout";
    case 413: return "payload_too_large";
    case 431: return "request_header_too_large";
    case 501: return "not_implemented";
    case 505: return "http_version_not_supported";
    default: return "bad_request";
  }
}

void HttpResponseWriter::interim(std::string_view bytes) {
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  output(&iov, 1);
}

void HttpResponseWriter::reset() {
  ex_.response_started_ = false;
  ex_.response_done_ = false;
  ex_.chunked_ = false;
  ex_.want_drain_ = false;
  ex_.status_ = 0;
  ex_.bytes_out_ = 0;
  framing_ = Framing::None;
  declared_length_ = -1;
  body_sent_ = 0;
}

size_t HttpResponseWriter::pending() const { return closed_ ? 0 : evbuffer_get_length(out_); }

// Appends bytes in order: straight to the socket while nothing is queued
// (never over TLS: no socket, fd_ is -1), the rest to the bufferevent's output.
// What the socket does not take at once is queued: copied, or for a large
// last piece whose memory `owner` keeps alive (a cached body), referenced.
void HttpResponseWriter::output(iovec* iov, int n, const std::shared_ptr<const void>& owner) {
  if (closed_ || failed_) return;
  if (ssl_ && evbuffer_get_length(out_) == 0 && outputTls(iov, n)) return;
  int i = 0;
  if (fd_ >= 0 && evbuffer_get_length(out_) == 0) {
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(n);
    ssize_t w;
    do {
      w = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
    } while (w < 0 && errno == EINTR);
    if (w < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        failed_ = true;  // the client is gone
        return;
      }
      w = 0;
    }
    auto written = static_cast<size_t>(w);
    while (i < n && written >= iov[i].iov_len) {
      written -= iov[i].iov_len;
      ++i;
    }
    if (i < n) {
      iov[i].iov_base = static_cast<char*>(iov[i].iov_base) + written;
      iov[i].iov_len -= written;
    }
  }
  for (; i < n; ++i) {
    if (!iov[i].iov_len) continue;
    if (owner && i == n - 1 && iov[i].iov_len >= kReferenceMinBytes) {
      auto* hold = new std::shared_ptr<const void>(owner);
      if (evbuffer_add_reference(out_, iov[i].iov_base, iov[i].iov_len, &releaseOwner, hold) == 0) continue;
      delete hold;
    }
    evbuffer_add(out_, iov[i].iov_base, iov[i].iov_len);
  }
}

// Over TLS, the answer of a keep-alive request (a cache hit, say) is one
// small record: writing it at once, as nginx does, spares a pass of the
// loop and two epoll_ctl() for the write event that the bufferevent's
// output would cost. Safe with bufferevent_openssl because nothing of it is
// pending: its output is empty (so no SSL_write() of its own awaits a retry)
// and no TLS operation waits to write (SSL_want). When the socket takes
// only part, OpenSSL keeps the rest of its record and wants the retry with
// the same bytes: they are queued whole, in one piece (an empty evbuffer
// puts them in one chain), and libevent's next SSL_write() is that retry
// (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, which libevent sets, allows the new
// address; a longer buffer is allowed too).
bool HttpResponseWriter::outputTls(const iovec* iov, int n) {
  size_t total = 0;
  for (int i = 0; i < n; ++i) total += iov[i].iov_len;
  if (total == 0) return true;
  if (total > kTlsDirectMaxBytes || SSL_want(ssl_) == SSL_WRITING) return false;
  thread_local std::string scratch = [] {
    std::string s;
    s.reserve(kTlsDirectMaxBytes);
    return s;
  }();
  scratch.clear();
  for (int i = 0; i < n; ++i) scratch.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
  ERR_clear_error();
  int w = SSL_write(ssl_, scratch.data(), static_cast<int>(scratch.size()));
  if (w > 0) return true;  // all of it: partial writes are not enabled
  int err = SSL_get_error(ssl_, w);
  if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
    evbuffer_add(out_, scratch.data(), scratch.size());
    return true;
  }
  ERR_clear_error();
  failed_ = true;  // the client is gone, or the session failed
  return true;
}

void HttpResponseWriter::releaseOwner(const void*, size_t, void* hold) noexcept {
  delete static_cast<std::shared_ptr<const void>*>(hold);
}

}  // namespace wfp
