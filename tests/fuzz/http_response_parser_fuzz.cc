// libFuzzer harness for the upstream client's HTTP/1.x response parser
// (proxy/http_response_parser.h; scripts/fuzz runs it). No sockets: the
// parser is fed bytes.
//
// Input layout: byte 0 holds options, the rest is what an upstream sends on
// one connection (responses one after the other, bodies, garbage).
//   bit 0     the request was HEAD
//   bit 1     limits: a 256-byte head (and trailers), or the default 100 KiB
//   bit 2     the connection stays open after the last byte (no finish())
//   bits 3-7  seed of the piece sizes for the third feeding below
//
// Checks:
//   * the same events, offsets and keep-alive decisions whether the bytes
//     come all at once, a byte at a time, or in pieces of pseudo-random
//     sizes (tests/unit/http_response_parser_feed.h), for up to 4 responses
//     on the connection;
//   * fed whole: parse() never consumes more than it is given, always makes
//     progress or asks for more, a Body event is non-empty and lies in what
//     was consumed; a head has a final status (200-599), token names and
//     values without CR, LF or NUL; a response to HEAD, a 204 and a 304 have
//     no body; a Content-Length body is exactly that long at Complete; a
//     response with Transfer-Encoding and Content-Length never keeps the
//     connection; after an error the parser stays failed.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/http_response_parser.h"
#include "proxy/text.h"
#include "tests/unit/http_response_parser_feed.h"

namespace {

[[noreturn]] void die(const char* what, std::string_view detail) {
  std::fprintf(stderr, "http_response_parser_fuzz: %s: %.*s\n", what, static_cast<int>(detail.size()), detail.data());
  std::abort();
}

const std::string* field(const wfp::UpstreamHead& head, std::string_view name) {
  for (const auto& h : head.headers) {
    if (wfp::equalsIgnoreCase(h.name, name)) return &h.value;
  }
  return nullptr;
}

void checkWhole(size_t max_head, bool head_request, bool close_at_end, std::string_view input) {
  using Event = wfp::HttpResponseParser::Event;
  wfp::HttpResponseParser parser(max_head);
  parser.begin(head_request);
  size_t pos = 0;
  uint64_t body = 0;
  bool no_body = false;
  bool has_length = false;
  bool has_te = false;
  uint64_t length = 0;
  int responses = 0;
  size_t steps = 0;
  for (;;) {
    if (++steps > 4 * input.size() + 64) die("no progress", input.substr(0, 200));
    const std::string_view rest = input.substr(pos);
    const wfp::HttpResponseParser::Result r = parser.parse(rest);
    if (r.consumed > rest.size()) die("consumed more than it was given", rest.substr(0, 200));
    switch (r.event) {
      case Event::NeedMore:
        if (r.consumed == 0) {
          if (!close_at_end) return;
          const wfp::HttpResponseParser::Result f = parser.finish();
          if (f.event == Event::Complete && (has_length || no_body) && !has_te) {
            die("finish() completed a framed response", rest.substr(0, 200));
          }
          if (f.event != Event::Complete && f.event != Event::Error) die("finish() said neither", rest.substr(0, 200));
          return;
        }
        break;
      case Event::Head: {
        const wfp::UpstreamHead& head = parser.head();
        if (head.status < 200 || head.status > 599) die("a head with a status that is not final", rest.substr(0, 200));
        for (const auto& h : head.headers) {
          if (!wfp::isToken(h.name)) die("a field name that is not a token", h.name);
          if (h.value.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) die("CR, LF or NUL in a value", h.value);
        }
        no_body = head_request || head.status == 204 || head.status == 304;
        const std::string* cl = field(head, "content-length");
        has_te = field(head, "transfer-encoding") != nullptr;
        has_length = cl != nullptr;
        length = 0;
        if (cl) {
          std::string v(wfp::trimOws(std::string_view(*cl).substr(0, cl->find(','))));
          length = std::strtoull(v.c_str(), nullptr, 10);
        }
        body = 0;
        if (no_body) {
          const wfp::HttpResponseParser::Result next = parser.parse(rest.substr(r.consumed));
          if (next.event != Event::Complete || next.consumed != 0) die("a body where none can be", rest.substr(0, 200));
        }
        break;
      }
      case Event::Body:
        if (r.body.empty()) die("an empty Body event", rest.substr(0, 200));
        if (r.body.data() < rest.data() || r.body.data() + r.body.size() > rest.data() + r.consumed) {
          die("body bytes outside what was consumed", rest.substr(0, 200));
        }
        if (no_body) die("a body where none can be", rest.substr(0, 200));
        body += r.body.size();
        if (has_length && !has_te && body > length) die("a body longer than its Content-Length", rest.substr(0, 200));
        break;
      case Event::Complete:
        if (has_length && !has_te && !no_body && body != length) die("a body of the wrong length", rest.substr(0, 200));
        if (has_te && has_length && parser.keepAlive()) die("kept a connection with TE and CL", rest.substr(0, 200));
        if (++responses >= 4 || !parser.keepAlive()) return;
        pos += r.consumed;
        parser.begin(head_request);
        body = 0;
        no_body = has_length = has_te = false;
        continue;
      case Event::Error: {
        if (parser.keepAlive()) die("keep-alive after an error", rest.substr(0, 200));
        const wfp::HttpResponseParser::Result again = parser.parse(rest.substr(r.consumed));
        if (again.event != Event::Error || again.consumed != 0) die("parsing went on after an error", rest.substr(0, 200));
        if (parser.finish().event != Event::Error) die("finish() after an error", rest.substr(0, 200));
        return;
      }
    }
    pos += r.consumed;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || size > 64 * 1024) return 0;
  const bool head_request = data[0] & 1;
  const size_t max_head = (data[0] & 2) ? 256 : wfp::HttpResponseParser::kMaxHeadBytes;
  const bool close_at_end = !(data[0] & 4);
  std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);

  checkWhole(max_head, head_request, close_at_end, input);

  wfp::ResponseFeed feed;
  feed.head_request = head_request;
  feed.close_at_end = close_at_end;
  feed.max_responses = 4;
  std::string broken;
  feed.broken = &broken;
  wfp::HttpResponseParser whole(max_head);
  const std::string expected = wfp::feedResponseParser(whole, input, feed);
  if (!broken.empty()) die(broken.c_str(), expected);
  wfp::ResponseFeed bytewise = feed;
  bytewise.pieces = {1};
  wfp::HttpResponseParser one(max_head);
  if (wfp::feedResponseParser(one, input, bytewise) != expected) die("a byte at a time differs", expected);
  wfp::ResponseFeed pieces = feed;
  uint32_t x = (data[0] >> 3) * 2654435761u + 1;
  for (int i = 0; i < 32; ++i) {
    x = x * 1103515245u + 12345u;
    pieces.pieces.push_back(1 + (x >> 16) % 97);
  }
  wfp::HttpResponseParser cut(max_head);
  if (wfp::feedResponseParser(cut, input, pieces) != expected) die("pseudo-random pieces differ", expected);
  return 0;
}
