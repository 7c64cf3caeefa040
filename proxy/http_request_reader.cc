#include "proxy/http_request_reader.h"

#include <event2/buffer.h>

#include <algorithm>

#include "proxy/http_server.h"

namespace wfp {

namespace {

// Bodies whose buffer grew beyond this are released after the exchange.
constexpr size_t kKeepBodyCapacity = 64 * 1024;

}  // namespace

HttpRequestReader::Step HttpRequestReader::read() {
  for (;;) {
    const HttpParser::Result r = parseBuffered();
    switch (r.event) {
      case HttpParser::Event::NeedMore:
        if (r.consumed == 0) return Step::NeedMore;
        evbuffer_drain(in_, r.consumed);
        if (in_body_) ex_.bytes_in_ = parser_.messageBytes();
        break;
      case HttpParser::Event::Head:
        takeHead(r.consumed);
        return Step::Head;
      case HttpParser::Event::Body:
        ex_.body_.append(r.body);
        evbuffer_drain(in_, r.consumed);
        ex_.bytes_in_ = parser_.messageBytes();
        break;
      case HttpParser::Event::Complete:
        evbuffer_drain(in_, r.consumed);
        ex_.bytes_in_ = parser_.messageBytes();
        ex_.body_at_ = std::chrono::steady_clock::now();
        in_body_ = false;
        return Step::Complete;
      case HttpParser::Event::Error:
        if (!in_body_) {
          // What was parsed of the request line, for the error observer.
          ex_.method_.assign(parser_.head().method);
          ex_.target_.assign(parser_.head().target);
        }
        evbuffer_drain(in_, r.consumed);
        ex_.bytes_in_ = parser_.messageBytes();
        in_body_ = false;
        return Step::Error;
    }
  }
}

// Shows the parser the input's first piece, as it lies in the buffer
// (usually all of a head is there); only when the parser needs more of it in
// one piece is the buffer pulled up, and then no further than it may look.
HttpParser::Result HttpRequestReader::parseBuffered() {
  const size_t len = evbuffer_get_length(in_);
  std::string_view view;
  evbuffer_iovec first{};
  if (len > 0 && evbuffer_peek(in_, -1, nullptr, &first, 1) >= 1) {
    view = std::string_view(static_cast<const char*>(first.iov_base), first.iov_len);
  }
  for (;;) {
    HttpParser::Result r = parser_.parse(view);
    if (r.event != HttpParser::Event::NeedMore || r.consumed != 0) return r;
    const size_t want = std::min(len, parser_.lookahead());
    if (view.size() >= want) return r;  // wait for more input
    view = std::string_view(reinterpret_cast<const char*>(evbuffer_pullup(in_, static_cast<ev_ssize_t>(want))), want);
  }
}

void HttpRequestReader::takeHead(size_t consumed) {
  const HttpRequestHead& head = parser_.head();
  ex_.method_.assign(head.method);
  ex_.target_.assign(head.target);
  ex_.version_minor_ = head.version_minor;
  ex_.head_request_ = ex_.method_ == "HEAD";
  ex_.head_at_ = std::chrono::steady_clock::now();
  ex_.body_at_ = ex_.head_at_;
  // The fields are assigned into the elements the previous request left,
  // reusing their capacity; a connection's first request allocates once.
  HttpHeaders& headers = ex_.headers_;
  if (headers.capacity() == 0) headers.reserve(head.headers.size());
  for (size_t i = 0; i < head.headers.size(); ++i) {
    if (i < headers.size()) {
      headers[i].name.assign(head.headers[i].name);
      headers[i].value.assign(head.headers[i].value);
    } else {
      headers.push_back(HttpHeader{std::string(head.headers[i].name), std::string(head.headers[i].value)});
    }
  }
  if (head.headers.size() < headers.size()) headers.resize(head.headers.size());
  parser_.releaseHeadViews();     // copied: 10 000 queued requests keep none of them
  evbuffer_drain(in_, consumed);  // the views in `head` end here
  ex_.bytes_in_ = parser_.messageBytes();
  in_body_ = true;
}

void HttpRequestReader::reset() {
  ex_.method_.clear();
  ex_.target_.clear();
  ex_.version_minor_ = 1;
  // headers_ keeps its elements: the next request's fields are assigned
  // into them, reusing their capacity.
  if (ex_.body_.capacity() > kKeepBodyCapacity) {
    std::string().swap(ex_.body_);
  } else {
    ex_.body_.clear();
  }
  ex_.bytes_in_ = 0;
  ex_.head_request_ = false;
}

void HttpRequestReader::reserveBody() {
  if (parser_.head().framing == HttpBodyFraming::Length) {
    ex_.body_.reserve(static_cast<size_t>(parser_.head().content_length));
  }
}

}  // namespace wfp
