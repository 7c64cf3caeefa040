// The HTTP/1.x response parser of the proxy's own upstream client
// (upstream_http1.h): bytes in, events out, in the shape of the server's
// request parser (http_parser.h). No sockets, no event loop, no copies of
// body bytes.
//
// The caller keeps the input. It hands parse() the bytes not consumed yet,
// from the first one, acts on the event, drops the `consumed` bytes, and
// calls again. A head is parsed once it is wholly there.
//
//   [1xx heads, dropped] → Head ─(HEAD request, 204, 304)──────────► Complete
//                               ├─(Content-Length) Body* ──────────► Complete
//                               ├─(chunked) Body* [trailers, dropped] ► Complete
//                               └─(neither) Body* until finish() ──► Complete
//   a rule broken anywhere → Error; the parser stays failed.
//
// The rules (RFC 9112 as a gateway applies them to a response it relays):
// "HTTP/1.0" or "HTTP/1.1", a three-digit status from 100 to 599; header
// names are tokens; obs-fold is replaced by a space (RFC 9112 §5.2) and
// whitespace before the colon is removed (§5.1); NUL, bare CR and a line
// without a colon are errors; Transfer-Encoding wins over Content-Length
// and then the connection is not reused (§6.3); Content-Length values must
// all agree; a coding other than chunked last is read until close; 101 is
// an error (the proxy never asks for an upgrade). The head and the trailers
// are at most max_head_bytes (libcurl's limit: 100 KiB).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "proxy/upstream_client.h"

namespace wfp {

class HttpResponseParser {
 public:
  static constexpr size_t kMaxHeadBytes = 100 * 1024;

  enum class Event : uint8_t {
    NeedMore,  // nothing more to do with this input (bytes may have been consumed: look again)
    Head,      // head() holds the final response head
    Body,      // `body` holds the next body bytes (chunk framing removed)
    Complete,  // the response is whole
    Error,     // error() says why; the parser stays failed
  };
  struct Result {
    Event event = Event::NeedMore;
    size_t consumed = 0;    // bytes of the input used up, the event's own included
    std::string_view body;  // Body: points into the input
  };

  explicit HttpResponseParser(size_t max_head_bytes = kMaxHeadBytes) : max_head_bytes_(max_head_bytes) {}

  // Expects a new response; to a HEAD request when `head_request` (no body,
  // whatever the head says).
  void begin(bool head_request);
  Result parse(std::string_view input);
  // The connection closed with every byte of it given to parse(): Complete
  // when the body runs until close, else Error.
  Result finish();

  // Valid from the Head event on; the caller may move it out.
  UpstreamHead& head() { return head_; }
  // The connection may carry another exchange after Complete (HTTP/1.1
  // without "Connection: close", or HTTP/1.0 with keep-alive, and a framed
  // body).
  bool keepAlive() const { return keep_alive_; }
  // Not one byte of this response was consumed yet.
  bool untouched() const { return state_ == State::Head && head_scan_ == 0 && !seen_interim_; }
  const std::string& error() const { return error_; }

 private:
  enum class State : uint8_t { Head, Length, UntilClose, ChunkSize, ChunkData, ChunkDataEnd, Trailer, Done, Failed };

  Result fail(std::string why);
  // Parses a complete head; false with error_ set when it breaks a rule.
  bool parseHead(std::string_view text);
  bool parseStatusLine(std::string_view line);
  bool addField(std::string_view line);
  bool decideFraming();
  // The next line of `input` ends within `bound` bytes: its length with the
  // line end, and the line without it; 0 when not whole yet; SIZE_MAX when
  // it runs past the bound.
  static size_t nextLine(std::string_view input, size_t bound, std::string_view& line);

  size_t max_head_bytes_;
  State state_ = State::Head;
  bool head_request_ = false;
  bool seen_interim_ = false;
  bool keep_alive_ = false;
  UpstreamHead head_;
  std::string error_;
  size_t head_scan_ = 0;         // where the search for the head's end resumes
  uint64_t body_remaining_ = 0;  // of a Content-Length body or of the current chunk
  size_t trailer_bytes_ = 0;
};

}  // namespace wfp
