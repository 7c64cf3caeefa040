// Drives an HttpResponseParser as the upstream client does and writes down
// what it says, so that two ways of delivering the same bytes can be compared
// as text (the parser's unit tests and tests/fuzz/http_response_parser_fuzz.cc).
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/http_response_parser.h"

namespace wfp {

struct ResponseFeed {
  // Sizes of the pieces in which the bytes arrive, in turn (the last one
  // repeats); empty: all at once.
  std::vector<size_t> pieces;
  bool head_request = false;
  // The connection closes after the last byte: finish() is called if the
  // response is not whole by then.
  bool close_at_end = true;
  // Responses parsed one after the other (begin() again after a Complete
  // that keeps the connection), as a reused connection carries them.
  int max_responses = 1;
  // Set to what went wrong when parse() broke its own contract (consumed
  // more than it was given, an empty Body, no progress); the text says it too.
  std::string* broken = nullptr;
};

inline std::string describeResponseHead(const UpstreamHead& h, bool keep_alive) {
  std::string out = "head " + std::to_string(h.status) + " \"" + h.reason + "\"";
  out += keep_alive ? " keep-alive" : " close";
  for (const HttpHeader& f : h.headers) out += " [" + f.name + ": " + f.value + "]";
  return out;
}

// One line per event: "head …", "body <bytes>" (consecutive Body events
// joined), "complete keep-alive|close", "error <message>", each with the
// number of input bytes consumed when it came; "finish: " before what
// finish() said; then "end consumed=N of M". Parsing stops at Complete or
// Error (the rest of the input arrives and stays unconsumed). A parser that
// neither consumes nor asks for more is reported as "stuck".
inline std::string feedResponseParser(HttpResponseParser& parser, std::string_view input,
                                      const ResponseFeed& feed = {}) {
  using Event = HttpResponseParser::Event;
  struct Rec {
    Event event;
    std::string text;
    size_t offset;
  };
  std::vector<Rec> recs;
  std::string buf;  // arrived, not consumed
  size_t arrived = 0, consumed = 0, piece = 0;
  int responses = 0;
  bool ended = false;  // Complete (of the last response) or Error
  parser.begin(feed.head_request);
  auto record = [&](const HttpResponseParser::Result& r, bool from_finish) {
    const size_t at = consumed + r.consumed;
    const std::string prefix = from_finish ? "finish: " : "";
    switch (r.event) {
      case Event::NeedMore:
        break;
      case Event::Head:
        recs.push_back({r.event, describeResponseHead(parser.head(), parser.keepAlive()), at});
        break;
      case Event::Body:
        if (!recs.empty() && recs.back().event == Event::Body) {
          recs.back().text.append(r.body);
          recs.back().offset = at;
        } else {
          recs.push_back({r.event, "body " + std::string(r.body), at});
        }
        break;
      case Event::Complete:
        recs.push_back({r.event, prefix + "complete" + (parser.keepAlive() ? " keep-alive" : " close"), at});
        if (!from_finish && ++responses < feed.max_responses && parser.keepAlive()) {
          parser.begin(feed.head_request);
        } else {
          ended = true;
        }
        break;
      case Event::Error:
        recs.push_back({r.event, prefix + "error " + parser.error(), at});
        ended = true;
        break;
    }
  };
  size_t spins = 0;
  for (;;) {
    while (!ended) {
      const HttpResponseParser::Result r = parser.parse(buf);
      if (r.consumed > buf.size()) {
        if (feed.broken) *feed.broken = "consumed more than given";
        recs.push_back({Event::Error, "consumed more than given", consumed});
        ended = true;
        break;
      }
      if (r.event == Event::Body && r.body.empty()) {
        if (feed.broken) *feed.broken = "empty body event";
        recs.push_back({Event::Error, "empty body event", consumed});
        ended = true;
        break;
      }
      record(r, false);
      buf.erase(0, r.consumed);
      consumed += r.consumed;
      if (r.event == Event::NeedMore && r.consumed == 0) break;
      if (r.consumed > 0) spins = 0;
      if (r.consumed == 0 && !ended && ++spins > 16) {
        if (feed.broken) *feed.broken = "stuck";
        recs.push_back({Event::Error, "stuck", consumed});
        ended = true;
      }
    }
    if (arrived == input.size()) break;
    size_t n = input.size() - arrived;
    if (!feed.pieces.empty()) {
      n = std::min(n, std::max<size_t>(1, feed.pieces[std::min(piece++, feed.pieces.size() - 1)]));
    }
    if (ended) n = input.size() - arrived;
    buf.append(input.substr(arrived, n));
    arrived += n;
  }
  if (!ended && feed.close_at_end) record(parser.finish(), true);
  std::string out;
  for (const Rec& r : recs) out += r.text + " @" + std::to_string(r.offset) + "\n";
  out += "end consumed=" + std::to_string(consumed) + " of " + std::to_string(input.size()) + "\n";
  return out;
}

}  // namespace wfp
