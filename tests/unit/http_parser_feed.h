// Drives an HttpParser as the server does and writes down what it says, so
// that two ways of delivering the same bytes can be compared as text (the
// parser's unit tests and tests/fuzz/http_parser_fuzz.cc).
#pragma once

#include <algorithm>
#include <cstddef>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/http_parser.h"

namespace wfp {

struct ParserFeed {
  // Sizes of the pieces in which the bytes arrive, in turn (the last one
  // repeats); empty: all at once.
  std::vector<size_t> pieces;
  // As the server's evbuffer: parse() sees only the first piece still
  // buffered, and pieces joined only when lookahead() asks for more in one
  // piece. Otherwise parse() sees everything buffered.
  bool segmented = false;
};

inline std::string describeHead(const HttpRequestHead& h) {
  std::string out = "head " + std::string(h.method) + " " + std::string(h.target) + " HTTP/1." +
                    std::to_string(h.version_minor);
  switch (h.framing) {
    case HttpBodyFraming::None: out += " no-body"; break;
    case HttpBodyFraming::Length: out += " length=" + std::to_string(h.content_length); break;
    case HttpBodyFraming::Chunked: out += " chunked"; break;
  }
  out += h.keep_alive ? " keep-alive" : " close";
  if (h.expect_continue) out += " 100-continue";
  for (const HttpHeaderView& f : h.headers) out += " [" + std::string(f.name) + ": " + std::string(f.value) + "]";
  return out;
}

// One line per event: "head …", "body <bytes>" (consecutive Body events
// joined), "complete", "error <status> <message>", each with the number of
// input bytes consumed when it came and the parser's messageBytes(); then
// "end" with what was left unconsumed. Stops at the first error.
inline std::string feedParser(HttpParser& parser, std::string_view input, const ParserFeed& feed = {}) {
  struct Rec {
    HttpParser::Event event;
    std::string text;
    size_t offset;
    uint64_t message_bytes;
  };
  std::vector<Rec> recs;
  std::string buf;          // bytes arrived, not consumed
  std::deque<size_t> segs;  // buf in the pieces it arrived in
  size_t arrived = 0, consumed = 0, piece = 0;
  auto consume = [&](size_t n) {
    buf.erase(0, n);
    consumed += n;
    while (n > 0) {
      size_t take = std::min(n, segs.front());
      segs.front() -= take;
      n -= take;
      if (segs.front() == 0) segs.pop_front();
    }
    while (!segs.empty() && segs.front() == 0) segs.pop_front();
  };
  auto joinFirst = [&](size_t want) {  // evbuffer_pullup
    while (segs.size() > 1 && segs.front() < want) {
      size_t first = segs.front();
      segs.pop_front();
      segs.front() += first;
    }
  };
  bool failed = false;
  for (;;) {
    for (;;) {
      std::string_view view(buf);
      if (feed.segmented) view = view.substr(0, segs.empty() ? 0 : segs.front());
      HttpParser::Result r;
      for (;;) {
        r = parser.parse(view);
        if (r.event != HttpParser::Event::NeedMore || r.consumed != 0) break;
        size_t want = std::min(buf.size(), parser.lookahead());
        if (view.size() >= want) break;
        joinFirst(want);
        view = std::string_view(buf).substr(0, segs.front());
      }
      const size_t at = consumed + r.consumed;
      switch (r.event) {
        case HttpParser::Event::NeedMore:
          break;
        case HttpParser::Event::Head:
          recs.push_back({r.event, describeHead(parser.head()), at, parser.messageBytes()});
          break;
        case HttpParser::Event::Body:
          if (!recs.empty() && recs.back().event == HttpParser::Event::Body) {
            recs.back().text.append(r.body);
            recs.back().offset = at;
            recs.back().message_bytes = parser.messageBytes();
          } else {
            recs.push_back({r.event, "body " + std::string(r.body), at, parser.messageBytes()});
          }
          break;
        case HttpParser::Event::Complete:
          recs.push_back({r.event, "complete", at, parser.messageBytes()});
          break;
        case HttpParser::Event::Error:
          recs.push_back({r.event,
                          "error " + std::to_string(parser.errorStatus()) + " " + parser.errorMessage() + " (" +
                              std::string(parser.head().method) + " " + std::string(parser.head().target) + ")",
                          at, parser.messageBytes()});
          failed = true;
          break;
      }
      consume(r.consumed);
      if (failed || (r.event == HttpParser::Event::NeedMore && r.consumed == 0)) break;
    }
    if (failed || arrived == input.size()) break;
    size_t n = input.size() - arrived;
    if (!feed.pieces.empty()) n = std::min(n, std::max<size_t>(1, feed.pieces[std::min(piece++, feed.pieces.size() - 1)]));
    buf.append(input.substr(arrived, n));
    segs.push_back(n);
    arrived += n;
  }
  std::string out;
  for (const Rec& r : recs) {
    out += r.text + " @" + std::to_string(r.offset) + " bytes=" + std::to_string(r.message_bytes) + "\n";
  }
  out += "end unconsumed=" + std::to_string(failed ? 0 : buf.size()) +
         (parser.inMessage() ? " in-message" : " between") + "\n";
  return out;
}

}  // namespace wfp
