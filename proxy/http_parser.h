// The HTTP/1.x request parser of the client-facing server: bytes in, events
// out. No sockets, no event loop, no timers, no copies of the input.
//
// The caller keeps the input. It hands parse() the bytes not consumed yet,
// from the first one, acts on the event, then drops the `consumed` bytes it
// was told of, and calls again; like picohttpparser, a head is parsed once
// it is wholly there, so bytes of an unfinished head or line are looked at
// again on the next call (a scan offset keeps that linear).
//
//   [empty lines, skipped] → Head ─(no body)────────────────────► Complete
//                                 ├─(Content-Length) Body* ──────► Complete
//                                 └─(chunked) Body* [trailers] ──► Complete
//   a rule broken anywhere → Error (the status the server answers); the
//   parser stays failed. After Complete, parse() reads the next request.
//
// The rules (RFC 9112 as this server applies them): HTTP/1.0 and 1.1 only
// (505 otherwise); origin-form targets, plus "*" for OPTIONS and
// authority-form for CONNECT; no obs-fold, no whitespace before a colon, no
// bare CR or NUL; one Host (required on 1.1); Content-Length digits only,
// repeated only with the same value; Transfer-Encoding only "chunked", only
// on 1.1, never with Content-Length (501 for another coding); limits from
// HttpServerLimits (431 head, 413 body).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace wfp {

// The server fills these from its HttpServerLimits.
struct HttpParserLimits {
  size_t max_header_bytes = 0;  // request line + headers, and again trailers → 431
  size_t max_headers = 0;       // header fields (trailer fields: one more) → 431
  size_t max_body_bytes = 0;    // → 413
};

enum class HttpBodyFraming : uint8_t { None, Length, Chunked };

struct HttpHeaderView {
  std::string_view name;
  std::string_view value;  // without leading and trailing whitespace
};

// A parsed head. The views point into the input given to the parse() call
// that returned Head (or Error): copy what you keep before dropping those
// bytes. The next parse() call clears them.
struct HttpRequestHead {
  std::string_view method;  // set once the request line is valid, even if a header is not
  std::string_view target;
  int version_minor = 1;    // HTTP/1.x
  std::vector<HttpHeaderView> headers;
  HttpBodyFraming framing = HttpBodyFraming::None;
  uint64_t content_length = 0;  // framing Length: > 0, within max_body_bytes
  bool keep_alive = true;       // the version's default and Connection; never after CONNECT
  bool expect_continue = false;  // HTTP/1.1 with "Expect: 100-continue"
};

class HttpParser {
 public:
  enum class Event : uint8_t {
    NeedMore,  // nothing more to do with this input (bytes may have been consumed: look again)
    Head,      // head() holds the request's head
    Body,      // `body` holds the next body bytes (chunk framing removed)
    Complete,  // the request is whole
    Error,     // error() says why; the parser stays failed
  };
  struct Result {
    Event event = Event::NeedMore;
    size_t consumed = 0;    // bytes of the input used up, the event's own included
    std::string_view body;  // Body: points into the input
  };

  explicit HttpParser(const HttpParserLimits& limits) : limits_(limits) {}

  // Takes effect at once, for the request in progress too.
  void setLimits(const HttpParserLimits& limits) { limits_ = limits; }

  // Parses from input[0]. A NeedMore that consumed nothing is only final
  // if `input` held every unconsumed byte or at least lookahead() of them;
  // otherwise call again with more of them in one piece.
  Result parse(std::string_view input);

  // How many contiguous bytes parse() may need to see to make progress now
  // (a whole head, a chunk-size line, a chunk's CRLF).
  size_t lookahead() const;

  // Between requests (nothing of the next one seen but empty lines) or not.
  bool inMessage() const { return state_ != State::Start; }
  const HttpRequestHead& head() const { return head_; }
  // Frees the head's field views once they are copied out: a request that
  // then waits (queued, or for another's run) holds nothing here. (The next
  // head allocates them again: one allocation per request.)
  void releaseHeadViews() { std::vector<HttpHeaderView>().swap(head_.headers); }
  // The status the server answers with (400, 413, 431, 501, 505) and the
  // message of its JSON error body.
  int errorStatus() const { return error_status_; }
  const std::string& errorMessage() const { return error_message_; }
  // Bytes of the current request consumed so far (head, body, chunk framing,
  // trailers; not the empty lines before it). 0 until its head is parsed.
  uint64_t messageBytes() const { return message_bytes_; }

 private:
  enum class State : uint8_t { Start, Head, Done, Length, ChunkSize, ChunkData, ChunkDataEnd, Trailer, Failed };

  Result needMore(size_t consumed) const { return {Event::NeedMore, consumed, {}}; }
  Result body(size_t consumed, std::string_view bytes) const { return {Event::Body, consumed, bytes}; }
  Result complete(size_t consumed);
  Result fail(size_t consumed, int status, std::string message);
  Result badRequest(size_t consumed, std::string_view why);

  void beginMessage();
  // Parses a complete head (request line, fields, the empty line) into
  // head_; false with error_status_/error_message_ set when it breaks a rule.
  bool parseHead(std::string_view text);
  bool headError(int status, std::string message);
  bool badHead(std::string_view why);
  size_t nextLine(std::string_view input, size_t bound, std::string_view& line);

  HttpParserLimits limits_;
  State state_ = State::Start;
  HttpRequestHead head_;
  int error_status_ = 0;
  std::string error_message_;
  size_t head_scan_ = 0;       // where the search for the head's end resumes
  size_t line_scan_ = 0;       // where the search for a chunk or trailer line's end resumes
  uint64_t body_remaining_ = 0;  // of a Content-Length body or of the current chunk
  uint64_t body_bytes_ = 0;      // body bytes delivered
  size_t trailer_bytes_ = 0;
  size_t trailer_count_ = 0;
  uint64_t message_bytes_ = 0;
};

}  // namespace wfp
