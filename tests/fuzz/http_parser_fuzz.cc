// libFuzzer harness for the HTTP/1.x request parser (proxy/http_parser.h;
// scripts/fuzz runs it). No sockets: the parser is fed bytes.
//
// Input layout: byte 0 holds options, the rest is what a client sends on one
// connection (pipelined requests, bodies, garbage).
//   bit 0     limits: small (64-byte heads, 4 fields, 16-byte bodies) or the
//             server fuzzer's (2048, 16, 4096)
//   bits 1-7  seed of the piece sizes for the third feeding below
//
// Checks:
//   * the same events, offsets and counts whether the bytes come all at once,
//     a byte at a time, or in pieces of pseudo-random sizes shown the way
//     the server shows them (its first buffered piece, joined on request;
//     tests/unit/http_parser_feed.h);
//   * fed whole: parse() never consumes more than it is given; a Body event
//     is non-empty and lies in the input; heads keep to max_headers and
//     Content-Length to max_body_bytes; a body never exceeds max_body_bytes
//     and a Content-Length body is exactly that long at Complete; an error
//     has a status the server answers with (400, 413, 431, 501, 505) and the
//     parser stays failed.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/http_parser.h"
#include "tests/unit/http_parser_feed.h"

namespace {

[[noreturn]] void die(const char* what, std::string_view detail) {
  std::fprintf(stderr, "http_parser_fuzz: %s: %.*s\n", what, static_cast<int>(detail.size()), detail.data());
  std::abort();
}

void checkWhole(const wfp::HttpParserLimits& limits, std::string_view input) {
  using Event = wfp::HttpParser::Event;
  wfp::HttpParser parser(limits);
  size_t pos = 0;
  uint64_t body = 0;
  wfp::HttpBodyFraming framing = wfp::HttpBodyFraming::None;
  uint64_t content_length = 0;
  for (;;) {
    const std::string_view rest = input.substr(pos);
    const wfp::HttpParser::Result r = parser.parse(rest);
    if (r.consumed > rest.size()) die("consumed more than it was given", rest.substr(0, 200));
    switch (r.event) {
      case Event::NeedMore:
        if (r.consumed == 0) return;  // it saw every byte: nothing more to do
        break;
      case Event::Head: {
        const wfp::HttpRequestHead& head = parser.head();
        if (head.headers.size() > limits.max_headers) die("more header fields than max_headers", rest.substr(0, 200));
        if (head.method.empty() || head.target.empty()) die("a head without method or target", rest.substr(0, 200));
        framing = head.framing;
        content_length = head.content_length;
        const bool length = framing == wfp::HttpBodyFraming::Length;
        if (length && (content_length == 0 || content_length > limits.max_body_bytes)) {
          die("a Content-Length body outside (0, max_body_bytes]", rest.substr(0, 200));
        }
        body = 0;
        break;
      }
      case Event::Body:
        if (r.body.empty()) die("an empty Body event", rest.substr(0, 200));
        if (r.body.data() < rest.data() || r.body.data() + r.body.size() > rest.data() + r.consumed) {
          die("body bytes outside what was consumed", rest.substr(0, 200));
        }
        body += r.body.size();
        if (body > limits.max_body_bytes) die("a body over max_body_bytes", rest.substr(0, 200));
        break;
      case Event::Complete:
        if (framing == wfp::HttpBodyFraming::Length ? body != content_length
                                                    : framing == wfp::HttpBodyFraming::None && body != 0) {
          die("a body of the wrong length", rest.substr(0, 200));
        }
        break;
      case Event::Error: {
        const int s = parser.errorStatus();
        if (s != 400 && s != 413 && s != 431 && s != 501 && s != 505) die("an unexpected status", rest.substr(0, 200));
        const wfp::HttpParser::Result again = parser.parse(rest.substr(r.consumed));
        if (again.event != Event::Error || again.consumed != 0) die("parsing went on after an error", rest.substr(0, 200));
        return;
      }
    }
    pos += r.consumed;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || size > 64 * 1024) return 0;
  wfp::HttpParserLimits limits;
  if (data[0] & 1) {
    limits = {2048, 16, 4096};
  } else {
    limits = {64, 4, 16};
  }
  std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);

  checkWhole(limits, input);

  wfp::HttpParser whole(limits);
  const std::string expected = wfp::feedParser(whole, input);
  wfp::HttpParser bytewise(limits);
  if (wfp::feedParser(bytewise, input, {{1}, true}) != expected) die("a byte at a time differs", expected);
  wfp::ParserFeed pieces;
  pieces.segmented = true;
  uint32_t x = (data[0] >> 1) * 2654435761u + 1;
  for (int i = 0; i < 32; ++i) {
    x = x * 1103515245u + 12345u;
    pieces.pieces.push_back(1 + (x >> 16) % 97);
  }
  wfp::HttpParser cut(limits);
  if (wfp::feedParser(cut, input, pieces) != expected) die("pseudo-random pieces differ", expected);
  return 0;
}
