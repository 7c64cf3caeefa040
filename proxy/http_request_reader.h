// The request side of a server connection: feeds the parser (http_parser.h)
// from the connection's input buffer and fills in its exchange's request.
// What happens next (the head handler, 100 Continue, the handler, an error
// response) is the connection's to decide (http_connection.h).
#pragma once

#include <cstdint>
#include <string>

#include "proxy/http_parser.h"

struct evbuffer;

namespace wfp {

class HttpExchange;

class HttpRequestReader {
 public:
  enum class Step : uint8_t {
    NeedMore,  // everything buffered is parsed
    Head,      // the exchange has the method, target, version and headers; head() has the rest
    Complete,  // the exchange has the whole request, body and bytesIn() included
    Error,     // the request broke a rule: errorStatus(), errorMessage(); the exchange has
               // the method and target if the request line was valid
  };

  HttpRequestReader(HttpExchange& exchange, evbuffer* input, const HttpParserLimits& limits)
      : ex_(exchange), in_(input), parser_(limits) {}
  HttpRequestReader(const HttpRequestReader&) = delete;
  HttpRequestReader& operator=(const HttpRequestReader&) = delete;

  // Parses what is buffered, up to the next step. The buffer keeps only what
  // is not parsed yet.
  Step read();
  void setLimits(const HttpParserLimits& limits) { parser_.setLimits(limits); }
  // Makes room for the Content-Length body the head announced: only once it
  // is sure to be read (the head handler declined the request).
  void reserveBody();
  // Clears the exchange's request for the connection's next one.
  void reset();

  // Between requests: nothing of the next one seen but empty lines.
  bool inMessage() const { return parser_.inMessage(); }
  // After Head: framing, keep-alive, Expect (its views are gone).
  const HttpRequestHead& head() const { return parser_.head(); }
  int errorStatus() const { return parser_.errorStatus(); }
  const std::string& errorMessage() const { return parser_.errorMessage(); }

 private:
  HttpParser::Result parseBuffered();
  void takeHead(size_t consumed);

  HttpExchange& ex_;
  evbuffer* in_;
  HttpParser parser_;
  bool in_body_ = false;  // the request's head is in the exchange
};

}  // namespace wfp
