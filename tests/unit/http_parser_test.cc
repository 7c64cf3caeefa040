// The request parser on bytes, without sockets: its events, every status it
// answers with, its limits, and the same events however the bytes are cut.
#include "proxy/http_parser.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/unit/http_parser_feed.h"

namespace wfp {
namespace {

using namespace std::string_literals;

HttpParserLimits smallLimits() {
  HttpParserLimits l;
  l.max_header_bytes = 256;
  l.max_headers = 6;
  l.max_body_bytes = 32;
  return l;
}

std::string parseWhole(std::string_view input, const HttpParserLimits& limits = smallLimits()) {
  HttpParser parser(limits);
  return feedParser(parser, input);
}

// The "error …" line of parsing `input` whole, without its offsets; "" if none.
std::string errorOf(std::string_view input, const HttpParserLimits& limits = smallLimits()) {
  std::string text = parseWhole(input, limits);
  size_t at = text.find("error ");
  if (at == std::string::npos) return "";
  return text.substr(at, text.find(" @", at) - at);
}

std::string at(size_t offset, size_t bytes) {
  return " @" + std::to_string(offset) + " bytes=" + std::to_string(bytes) + "\n";
}

const std::string kGet = "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept:  */* \t\r\n\r\n";

TEST(HttpParser, GetWithoutBody) {
  EXPECT_EQ(parseWhole(kGet), "head GET /a?b=1 HTTP/1.1 no-body keep-alive [Host: x] [Accept: */*]" +
                                  at(kGet.size(), kGet.size()) + "complete" + at(kGet.size(), kGet.size()) +
                                  "end unconsumed=0 between\n");
}

TEST(HttpParser, EventsOneAtATimeWithWhatTheyConsumed) {
  const std::string head = "POST /r HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n";
  const std::string input = head + "hel";
  HttpParser p(smallLimits());
  HttpParser::Result r = p.parse(input);
  ASSERT_EQ(r.event, HttpParser::Event::Head);
  EXPECT_EQ(r.consumed, head.size());
  EXPECT_EQ(p.head().method, "POST");
  EXPECT_EQ(p.head().target, "/r");
  EXPECT_EQ(p.head().framing, HttpBodyFraming::Length);
  EXPECT_EQ(p.head().content_length, 5u);
  ASSERT_EQ(p.head().headers.size(), 2u);
  EXPECT_EQ(p.head().headers[1].name, "Content-Length");
  EXPECT_EQ(p.messageBytes(), head.size());

  r = p.parse(std::string_view(input).substr(head.size()));
  ASSERT_EQ(r.event, HttpParser::Event::Body);
  EXPECT_EQ(r.body, "hel");
  EXPECT_EQ(r.consumed, 3u);
  EXPECT_TRUE(p.head().method.empty()) << "the head's views last until the next call";
  EXPECT_TRUE(p.head().headers.empty());

  r = p.parse("");
  EXPECT_EQ(r.event, HttpParser::Event::NeedMore);
  EXPECT_EQ(r.consumed, 0u);
  r = p.parse("lo");
  ASSERT_EQ(r.event, HttpParser::Event::Body);
  EXPECT_EQ(r.body, "lo");
  r = p.parse("");
  EXPECT_EQ(r.event, HttpParser::Event::Complete);
  EXPECT_EQ(r.consumed, 0u);
  EXPECT_EQ(p.messageBytes(), head.size() + 5);
  EXPECT_FALSE(p.inMessage());
}

TEST(HttpParser, ChunkedBodyWithExtensionsAndTrailers) {
  const std::string head = "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::string body = "5;name=value\r\nhello\r\n6 ; x=\"y\"\r\n world\r\n0;last\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n";
  const std::string input = head + body;
  EXPECT_EQ(parseWhole(input), "head POST /c HTTP/1.1 chunked keep-alive [Host: h] [Transfer-Encoding: chunked]" +
                                   at(head.size(), head.size()) + "body hello world" +
                                   at(head.size() + 38, head.size() + 38) + "complete" +
                                   at(input.size(), input.size()) + "end unconsumed=0 between\n");
}

TEST(HttpParser, ChunkedWithBareLineFeedsAndUppercaseHex) {
  const std::string input =
      "POST /c HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\nA\n0123456789\n0\n\n";
  std::string text = parseWhole(input);
  EXPECT_NE(text.find("body 0123456789 @"), std::string::npos) << text;
  EXPECT_NE(text.find("complete" + at(input.size(), input.size())), std::string::npos) << text;
}

TEST(HttpParser, PipelinedRequestsOneAfterAnother) {
  const std::string a = "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n";
  const std::string b = "POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
  const std::string c = "PUT /3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n";
  const std::string d = "GET /4 HTTP/1.0\r\n\r\n";
  const std::string input = a + b + c + d;
  const std::string text = parseWhole(input);
  EXPECT_EQ(text,
            "head GET /1 HTTP/1.1 no-body keep-alive [Host: x]" + at(a.size(), a.size()) + "complete" +
                at(a.size(), a.size()) +
                "head POST /2 HTTP/1.1 length=3 keep-alive [Host: x] [Content-Length: 3]" +
                at(a.size() + b.size() - 3, b.size() - 3) + "body abc" + at(a.size() + b.size(), b.size()) +
                "complete" + at(a.size() + b.size(), b.size()) +
                "head PUT /3 HTTP/1.1 chunked keep-alive [Host: x] [Transfer-Encoding: chunked]" +
                at(a.size() + b.size() + c.size() - 11, c.size() - 11) + "body z" +
                at(a.size() + b.size() + c.size() - 7, c.size() - 7) + "complete" +
                at(a.size() + b.size() + c.size(), c.size()) + "head GET /4 HTTP/1.0 no-body close" +
                at(input.size(), d.size()) + "complete" + at(input.size(), d.size()) + "end unconsumed=0 between\n");
}

TEST(HttpParser, StopsAtEachCompleteRequest) {
  const std::string a = "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n";
  const std::string input = a + "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n";
  HttpParser p(smallLimits());
  HttpParser::Result r = p.parse(input);
  ASSERT_EQ(r.event, HttpParser::Event::Head);
  EXPECT_EQ(r.consumed, a.size());
  r = p.parse(std::string_view(input).substr(a.size()));
  EXPECT_EQ(r.event, HttpParser::Event::Complete);
  EXPECT_EQ(r.consumed, 0u) << "the next request is not touched until the caller asks";
  r = p.parse(std::string_view(input).substr(a.size()));
  ASSERT_EQ(r.event, HttpParser::Event::Head);
  EXPECT_EQ(p.head().target, "/2");
}

TEST(HttpParser, EmptyLinesBeforeARequestAreSkippedNotCounted) {
  const std::string blank = "\r\n\n\r\n";
  const std::string input = blank + kGet;
  std::string text = parseWhole(input);
  EXPECT_EQ(text.substr(text.find(" @")), at(input.size(), kGet.size()) + "complete" +
                                              at(input.size(), kGet.size()) + "end unconsumed=0 between\n");
  // However many, and however they line up.
  std::string many = "\n";
  for (int i = 0; i < 40; ++i) many += "\r\n";
  EXPECT_EQ(errorOf(many + kGet), "");
  EXPECT_NE(parseWhole(many + kGet).find("head GET"), std::string::npos);
}

TEST(HttpParser, ALoneCrWaitsForItsLineFeed) {
  HttpParser p(smallLimits());
  HttpParser::Result r = p.parse("\r");
  EXPECT_EQ(r.event, HttpParser::Event::NeedMore);
  EXPECT_EQ(r.consumed, 0u);
  EXPECT_FALSE(p.inMessage());
  r = p.parse("\r\n");
  EXPECT_EQ(r.event, HttpParser::Event::NeedMore);
  EXPECT_EQ(r.consumed, 2u);
  EXPECT_FALSE(p.inMessage());
  r = p.parse("\rG");
  EXPECT_EQ(r.event, HttpParser::Event::NeedMore);
  EXPECT_TRUE(p.inMessage()) << "a CR not followed by LF starts a request (a bad one)";
}

TEST(HttpParser, LookaheadSaysHowMuchOfAHeadToShow) {
  HttpParserLimits limits = smallLimits();
  HttpParser p(limits);
  HttpParser::Result r = p.parse("GE");
  EXPECT_EQ(r.event, HttpParser::Event::NeedMore);
  EXPECT_EQ(r.consumed, 0u);
  EXPECT_EQ(p.lookahead(), limits.max_header_bytes);
  limits.max_header_bytes = 10;
  p.setLimits(limits);
  EXPECT_EQ(p.lookahead(), 64u) << "a head may always be 64 bytes";
}

TEST(HttpParser, VersionsKeepAliveAndContinue) {
  struct Case {
    std::string request;
    std::string expect;  // what describeHead() says between the version and the fields
  };
  const std::vector<Case> cases = {
      {"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "no-body keep-alive"},
      {"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "no-body close"},
      {"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, CLOSE\r\n\r\n", "no-body close"},
      {"GET / HTTP/1.0\r\n\r\n", "no-body close"},
      {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "no-body keep-alive"},
      {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", "no-body close"},
      {"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "no-body close"},
      {"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
       "length=1 keep-alive 100-continue"},
      {"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", "length=1 close"},
      {"POST / HTTP/1.1\r\nHost: x\r\nExpect: something\r\nContent-Length: 1\r\n\r\n", "length=1 keep-alive"},
  };
  for (const Case& c : cases) {
    HttpParser p(smallLimits());
    ASSERT_EQ(p.parse(c.request).event, HttpParser::Event::Head) << c.request;
    const std::string line = describeHead(p.head());
    const size_t from = line.find("HTTP/1.") + 9;
    EXPECT_EQ(line.substr(from, line.find(" [") - from), c.expect) << c.request;
  }
}

TEST(HttpParser, RequestTargetForms) {
  EXPECT_EQ(errorOf("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"), "");
  EXPECT_EQ(errorOf("CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n"), "");
  EXPECT_EQ(errorOf("CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: x\r\n\r\n"), "");
  EXPECT_EQ(errorOf("CONNECT example.com HTTP/1.1\r\nHost: x\r\n\r\n"), "error 400 Bad request: invalid request target ( )");
  EXPECT_EQ(errorOf("CONNECT [zz]:443 HTTP/1.1\r\nHost: x\r\n\r\n"), "error 400 Bad request: invalid request target ( )");
  EXPECT_EQ(errorOf("GET * HTTP/1.1\r\nHost: x\r\n\r\n"), "error 400 Bad request: invalid request target ( )");
  EXPECT_EQ(errorOf("GET example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n"),
            "error 400 Bad request: invalid request target ( )");
  EXPECT_EQ(errorOf("GET http://example.com/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            "error 400 Bad request: absolute-form request target not supported ( )");
}

// Every status the parser answers with, and why.
struct BadCase {
  const char* name;
  std::string request;
  std::string error;  // "error <status> <message> (<method> <target>)"
};

std::vector<BadCase> badCases() {
  const std::string post = "POST /p HTTP/1.1\r\nHost: x\r\n";
  const std::string chunked = post + "Transfer-Encoding: chunked\r\n\r\n";
  std::string many = "GET /m HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < 6; ++i) many += "X-" + std::to_string(i) + ": v\r\n";
  std::string trailers = chunked + "0\r\n";
  for (int i = 0; i < 7; ++i) trailers += "T-" + std::to_string(i) + ": v\r\n";
  const std::string bad = "error 400 Bad request: ";
  return {
      {"bare CR in request line", "GET / HT\rTP/1.1\r\nHost: x\r\n\r\n", bad + "invalid line ending ( )"},
      {"no target", "GET\r\nHost: x\r\n\r\n", bad + "invalid request line ( )"},
      {"HTTP/0.9", "GET /\r\n\r\n", bad + "invalid request line ( )"},
      {"leading space", " GET / HTTP/1.1\r\nHost: x\r\n\r\n", bad + "invalid request line ( )"},
      {"bad method", "G(T / HTTP/1.1\r\nHost: x\r\n\r\n", bad + "invalid method ( )"},
      {"lowercase version", "GET / http/1.1\r\nHost: x\r\n\r\n", bad + "invalid HTTP version ( )"},
      {"long version", "GET / HTTP/1.10\r\nHost: x\r\n\r\n", bad + "invalid HTTP version ( )"},
      {"HTTP/2.0", "GET / HTTP/2.0\r\n\r\n", "error 505 HTTP version not supported ( )"},
      {"HTTP/1.2", "GET / HTTP/1.2\r\nHost: x\r\n\r\n", "error 505 HTTP version not supported ( )"},
      {"HTTP/0.9 versioned", "GET / HTTP/0.9\r\n\r\n", "error 505 HTTP version not supported ( )"},
      {"double space", "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", bad + "invalid request target ( )"},
      {"control in target", "GET /a\x01 HTTP/1.1\r\nHost: x\r\n\r\n", bad + "invalid request target ( )"},
      {"DEL in target", "GET /a\x7f HTTP/1.1\r\nHost: x\r\n\r\n", bad + "invalid request target ( )"},
      {"obs-fold", "GET /f HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n", bad + "obsolete line folding (GET /f)"},
      {"tab fold", "GET /f HTTP/1.1\r\nHost: x\r\nX-A: one\r\n\ttwo\r\n\r\n", bad + "obsolete line folding (GET /f)"},
      {"no colon", "GET /h HTTP/1.1\r\nHost: x\r\nX-A one\r\n\r\n", bad + "invalid header (GET /h)"},
      {"empty name", "GET /h HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", bad + "invalid header (GET /h)"},
      {"bare CR in field", "GET /h HTTP/1.1\r\nHost: x\r\nX-A: o\re\r\n\r\n", bad + "invalid header (GET /h)"},
      {"space before colon", "GET /h HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", bad + "invalid header name (GET /h)"},
      {"NUL in value", "GET /h HTTP/1.1\r\nHost: x\r\nX-A: o\0e\r\n\r\n"s, bad + "invalid header value (GET /h)"},
      {"too many headers", many + "\r\n", "error 431 Request header too large (GET /m)"},
      {"head too large", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(300, 'a') + "\r\n\r\n",
       "error 431 Request header too large ( )"},
      {"two Hosts", "GET /h HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", bad + "multiple Host headers (GET /h)"},
      {"no Host", "GET /h HTTP/1.1\r\n\r\n", bad + "missing Host header (GET /h)"},
      {"CL not digits", post + "Content-Length: 5a\r\n\r\n", bad + "invalid Content-Length (POST /p)"},
      {"CL negative", post + "Content-Length: -1\r\n\r\n", bad + "invalid Content-Length (POST /p)"},
      {"CL plus", post + "Content-Length: +5\r\n\r\n", bad + "invalid Content-Length (POST /p)"},
      {"CL empty", post + "Content-Length: \r\n\r\n", bad + "invalid Content-Length (POST /p)"},
      {"CL list", post + "Content-Length: 5, 5\r\n\r\n", bad + "invalid Content-Length (POST /p)"},
      {"CL overflow", post + "Content-Length: 99999999999999999999\r\n\r\n", bad + "invalid Content-Length (POST /p)"},
      {"CL conflicting", post + "Content-Length: 5\r\nContent-Length: 6\r\n\r\n",
       bad + "conflicting Content-Length (POST /p)"},
      {"CL over the limit", post + "Content-Length: 33\r\n\r\n", "error 413 Request body too large (POST /p)"},
      {"CL and TE", post + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
       bad + "Content-Length with Transfer-Encoding (POST /p)"},
      {"TE and CL", post + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
       bad + "Content-Length with Transfer-Encoding (POST /p)"},
      {"TE on 1.0", "POST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
       bad + "Transfer-Encoding in an HTTP/1.0 request (POST /p)"},
      {"TE twice", post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
       bad + "multiple Transfer-Encoding headers (POST /p)"},
      {"TE quoted", post + "Transfer-Encoding: \"chunked\"\r\n\r\n", bad + "invalid Transfer-Encoding (POST /p)"},
      {"TE empty", post + "Transfer-Encoding: \r\n\r\n", bad + "invalid Transfer-Encoding (POST /p)"},
      {"TE gzip", post + "Transfer-Encoding: gzip, chunked\r\n\r\n",
       "error 501 Not implemented: Transfer-Encoding other than chunked (POST /p)"},
      {"bad chunk size", chunked + "zz\r\n", bad + "invalid chunk size ( )"},
      {"empty chunk size", chunked + "\r\n", bad + "invalid chunk size ( )"},
      {"chunk size junk", chunked + "5x\r\n", bad + "invalid chunk size ( )"},
      {"chunk size overflow", chunked + "10000000000000000\r\n", bad + "invalid chunk size ( )"},
      {"chunk size 16 digits", chunked + "0000000000000001\r\n", bad + "invalid chunk size ( )"},
      {"chunk line too long", chunked + "1;" + std::string(5000, 'e'), bad + "invalid chunk size ( )"},
      {"CR in extension", chunked + "1;a\rb\r\n", bad + "invalid chunk extension ( )"},
      {"NUL in extension", chunked + "1;a\0b\r\n"s, bad + "invalid chunk extension ( )"},
      {"bad chunk terminator", chunked + "1\r\naXY", bad + "invalid chunk terminator ( )"},
      {"CR without LF after data", chunked + "1\r\na\rX", bad + "invalid chunk terminator ( )"},
      {"chunk over the limit", chunked + "21\r\n", "error 413 Request body too large ( )"},
      {"chunks over the limit", chunked + "10\r\n" + std::string(16, 'a') + "\r\n11\r\n",
       "error 413 Request body too large ( )"},
      {"too many trailers", trailers + "\r\n", "error 431 Request header too large ( )"},
      {"trailers too large", chunked + "0\r\nT: " + std::string(300, 't') + "\r\n\r\n",
       "error 431 Request header too large ( )"},
      {"NUL in trailer", chunked + "0\r\nT: a\0b\r\n\r\n"s, bad + "invalid trailer ( )"},
      {"CR in trailer", chunked + "0\r\nT: a\rb\r\n\r\n", bad + "invalid trailer ( )"},
  };
}

TEST(HttpParser, EveryStatusPath) {
  for (const BadCase& c : badCases()) EXPECT_EQ(errorOf(c.request), c.error) << c.name;
}

// The bytes of the request counted when an error comes: none before its
// head is parsed (the server then reports what it buffered), the head with
// an over-long Content-Length, everything used after that.
TEST(HttpParser, BytesCountedAtAnError) {
  const std::string head = "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 33\r\n\r\n";
  EXPECT_EQ(parseWhole("\r\n" + head), "error 413 Request body too large (POST /p)" + at(head.size() + 2, head.size()) +
                                           "end unconsumed=0 in-message\n");
  const std::string chunked = "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  EXPECT_EQ(parseWhole(chunked + "3\r\nabc\r\n21\r\n"),
            "head POST /p HTTP/1.1 chunked keep-alive [Host: x] [Transfer-Encoding: chunked]" +
                at(chunked.size(), chunked.size()) + "body abc" + at(chunked.size() + 6, chunked.size() + 6) +
                "error 413 Request body too large ( )" + at(chunked.size() + 12, chunked.size() + 12) +
                "end unconsumed=0 in-message\n");
  EXPECT_EQ(parseWhole("GET /h HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\nmore"),
            "error 400 Bad request: invalid header name (GET /h)" + at(0, 0) + "end unconsumed=0 in-message\n");
}

TEST(HttpParser, AnErrorIsFinal) {
  HttpParser p(smallLimits());
  EXPECT_EQ(p.parse("GET / HTTP/2.0\r\n\r\n").event, HttpParser::Event::Error);
  EXPECT_EQ(p.errorStatus(), 505);
  HttpParser::Result r = p.parse(kGet);
  EXPECT_EQ(r.event, HttpParser::Event::Error);
  EXPECT_EQ(r.consumed, 0u);
}

TEST(HttpParser, LimitsAtTheirEdges) {
  HttpParserLimits limits = smallLimits();  // 256-byte head, 6 fields, 32-byte body
  auto head = [](size_t size) {
    std::string h = "GET / HTTP/1.1\r\nHost: x\r\nX: ";
    h += std::string(size - h.size() - 4, 'a');
    return h + "\r\n\r\n";
  };
  EXPECT_EQ(errorOf(head(256), limits), "");
  EXPECT_EQ(errorOf(head(257), limits), "error 431 Request header too large ( )");
  limits.max_header_bytes = 10;  // a head may always be 64 bytes
  EXPECT_EQ(errorOf(head(64), limits), "");
  EXPECT_EQ(errorOf(head(65), limits), "error 431 Request header too large ( )");
  limits = smallLimits();

  std::string six = "GET /s HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < 5; ++i) six += "X-" + std::to_string(i) + ": v\r\n";
  EXPECT_EQ(errorOf(six + "\r\n", limits), "");
  EXPECT_EQ(errorOf(six + "X-6: v\r\n\r\n", limits), "error 431 Request header too large (GET /s)");

  const std::string post = "POST / HTTP/1.1\r\nHost: x\r\n";
  EXPECT_EQ(errorOf(post + "Content-Length: 32\r\n\r\n" + std::string(32, 'b'), limits), "");
  EXPECT_EQ(errorOf(post + "Content-Length: 33\r\n\r\n", limits), "error 413 Request body too large (POST /)");
  const std::string chunked = post + "Transfer-Encoding: chunked\r\n\r\n";
  const std::string sixteen = "10\r\n" + std::string(16, 'c') + "\r\n";
  EXPECT_EQ(errorOf(chunked + sixteen + sixteen + "0\r\n\r\n", limits), "");
  EXPECT_EQ(errorOf(chunked + sixteen + sixteen + "1\r\n", limits), "error 413 Request body too large ( )");
  EXPECT_EQ(errorOf(chunked + "000000000000020\r\n" + std::string(32, 'c') + "\r\n0\r\n\r\n", limits), "")
      << "15 hex digits, leading zeros included, are allowed";

  // Trailers: the head's limits, the empty line counted as a field.
  std::string trailers = chunked + "0\r\n";
  for (int i = 0; i < 6; ++i) trailers += "T" + std::to_string(i) + ": v\r\n";
  EXPECT_EQ(errorOf(trailers + "\r\n", limits), "");
  EXPECT_EQ(errorOf(trailers + "T6: v\r\n\r\n", limits), "error 431 Request header too large ( )");
  // A line must end within what is left of max_header_bytes (at least 2).
  EXPECT_EQ(errorOf(chunked + "0\r\nT: " + std::string(251, 't') + "\r\n\r\n", limits), "");  // 256 + 2
  EXPECT_EQ(errorOf(chunked + "0\r\nT: " + std::string(252, 't') + "\r\n\r\n", limits),
            "error 431 Request header too large ( )");
}

TEST(HttpParser, SameContentLengthTwiceAndZero) {
  EXPECT_NE(parseWhole("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\ncontent-length: 003\r\n\r\nabc")
                .find("length=3"),
            std::string::npos);
  EXPECT_NE(parseWhole("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").find("no-body"), std::string::npos);
}

TEST(HttpParser, NewLimitsApplyToTheRequestInProgress) {
  const std::string head = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  HttpParser p(smallLimits());
  ASSERT_EQ(p.parse(head).event, HttpParser::Event::Head);
  HttpParserLimits tighter = smallLimits();
  tighter.max_body_bytes = 4;
  p.setLimits(tighter);
  EXPECT_EQ(p.parse("5\r\nhello\r\n").event, HttpParser::Event::Error);
  EXPECT_EQ(p.errorStatus(), 413);
}

// The same events whatever the cuts: all at once, a byte at a time, in two
// pieces at every offset, and as the server shows them (the first buffered
// piece, joined only when the parser asks).
std::vector<std::string> corpus() {
  std::vector<std::string> inputs = {
      kGet,
      "\r\n\n" + kGet + "POST /b HTTP/1.1\r\nHost: y\r\nContent-Length: 7\r\nExpect: 100-continue\r\n\r\npayload",
      "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;n=v\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n"
      "GET /next HTTP/1.1\r\nHost: h\r\n\r\n",
      "POST /c HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n",
      "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /two HTTP/1.0\r\n\r\n\r\n",
      "GET /partial HTTP/1.1\r\nHost: x\r\nX-Cut: ",
      "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\nshort",
      "\r",
      "\n\r\n\r",
  };
  for (const BadCase& c : badCases()) inputs.push_back(c.request);
  return inputs;
}

TEST(HttpParser, SplitAnywhereSameEvents) {
  for (const std::string& input : corpus()) {
    SCOPED_TRACE(input.substr(0, 80));
    HttpParser whole(smallLimits());
    const std::string expected = feedParser(whole, input);
    {
      HttpParser p(smallLimits());
      EXPECT_EQ(feedParser(p, input, {{1}, false}), expected) << "byte by byte";
    }
    {
      HttpParser p(smallLimits());
      EXPECT_EQ(feedParser(p, input, {{1}, true}), expected) << "byte by byte, segmented";
    }
    {
      HttpParser p(smallLimits());
      EXPECT_EQ(feedParser(p, input, {{2, 5, 1, 7, 3}, true}), expected) << "uneven pieces, segmented";
    }
    for (size_t cut = 1; cut < input.size(); ++cut) {
      HttpParser p(smallLimits());
      ASSERT_EQ(feedParser(p, input, {{cut, input.size()}, true}), expected) << "cut at " << cut;
    }
  }
}

}  // namespace
}  // namespace wfp
