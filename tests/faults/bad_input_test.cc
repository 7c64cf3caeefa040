// Hostile and malformed client input (docs/http.md; README "HTTP server
// behaviour", "Errors the proxy itself produces"): exact bytes on raw
// sockets. Every case must be a clear 4xx/5xx with the JSON error shape,
// reach nothing upstream, and leave the proxy serving normal requests.
#include <gtest/gtest.h>

#include <thread>

#include "tests/faults/fault_helpers.h"

namespace wfp::test::faults {
namespace {

const std::string kAuth = "Authorization: Bearer acme-client-key\r\n";

class BadInput : public ::testing::Test {
 protected:
  void SetUp() override { start(baseConfig()); }
  void start(const std::string& config) {
    proxy_.reset();
    sim_ = std::make_unique<Simulator>();
    proxy_ = std::make_unique<ProxyProcess>(config, sim_->url());
  }
  void TearDown() override {
    if (!proxy_) return;
    // Healthy afterwards: a normal request is answered, and the process lives.
    HttpResponse r = runOn(proxy_->port(), "wf_ok", R"({"after":"bad input"})");
    EXPECT_EQ(r.status, 200) << r.raw;
    expectAlive(*proxy_);
  }

  std::string raw(const std::string& bytes, std::chrono::milliseconds timeout = 3s) {
    return rawExchange(proxy_->port(), bytes, timeout);
  }

  // One response, `status`, JSON {"error": "...", "success": false, "code": code}.
  HttpResponse expectError(const std::string& bytes, int status, const std::string& code) {
    std::string got = raw(bytes);
    HttpResponse r = parseResponse(got);
    EXPECT_TRUE(r.ok) << "no complete response to:\n" << printable(bytes) << "\ngot: " << printable(got);
    EXPECT_EQ(r.status, status) << printable(bytes) << "\n" << r.body;
    EXPECT_EQ(r.header("content-type"), "application/json") << printable(bytes);
    auto j = nlohmann::json::parse(r.body, nullptr, false);
    EXPECT_TRUE(j.is_object()) << r.body;
    if (j.is_object()) {
      EXPECT_EQ(j["success"], false) << r.body;
      EXPECT_EQ(j["code"], code) << printable(bytes) << "\n" << r.body;
      EXPECT_TRUE(j["error"].is_string()) << r.body;
    }
    return r;
  }

  // A 4xx (any of `statuses`) or a plain close, never a 2xx or 5xx.
  void expectRefused(const std::string& bytes, std::initializer_list<int> statuses) {
    std::string got = raw(bytes);
    if (got.empty()) return;  // closed without a word: acceptable
    HttpResponse r = parseResponse(got);
    bool expected = false;
    for (int s : statuses) expected |= r.status == s;
    EXPECT_TRUE(expected) << printable(bytes) << "\n-> " << printable(got.substr(0, 300));
  }

  void expectNothingUpstream() {
    std::this_thread::sleep_for(50ms);
    EXPECT_EQ(simTotal(*sim_), 0) << sim_->requests().dump();
  }

  static std::string printable(const std::string& s) {
    std::string out;
    for (unsigned char c : s.substr(0, 400)) {
      if (c == '\r') {
        out += "\\r";
      } else if (c == '\n') {
        out += "\\n\n";
      } else if (c < 0x20 || c >= 0x7f) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\x%02x", c);
        out += buf;
      } else {
        out += static_cast<char>(c);
      }
    }
    return out;
  }

  std::unique_ptr<Simulator> sim_;
  std::unique_ptr<ProxyProcess> proxy_;
};

std::string runHead(const std::string& extra_headers, const std::string& wf = "wf_x") {
  return "POST /api/v1/run/" + wf + " HTTP/1.1\r\nHost: x\r\n" + kAuth + extra_headers + "\r\n";
}

TEST_F(BadInput, ContentLengthWithTransferEncodingIs400) {
  expectError(runHead("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n") + "2\r\n{}\r\n0\r\n\r\n", 400,
              "bad_request");
  expectError(runHead("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n") + "2\r\n{}\r\n0\r\n\r\n", 400,
              "bad_request");
  // The classic smuggling payload: a second request hidden in the body.
  expectError(runHead("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n") +
                  "0\r\n\r\nGET /api/v1/balance HTTP/1.1\r\nHost: x\r\n" + kAuth + "\r\n",
              400, "bad_request");
  expectNothingUpstream();
}

TEST_F(BadInput, TransferEncodingVariantsAreRefused) {
  expectError(runHead("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n") + "2\r\n{}\r\n0\r\n\r\n", 400,
              "bad_request");
  expectRefused(runHead("Transfer-Encoding: gzip, chunked\r\n") + "0\r\n\r\n", {400, 501});
  expectRefused(runHead("Transfer-Encoding: xchunked\r\n") + "0\r\n\r\n", {400, 501});
  expectError(runHead("Transfer-Encoding : chunked\r\n") + "0\r\n\r\n", 400, "bad_request");
  expectError(runHead("Transfer-Encoding:\x0b" "chunked\r\n") + "0\r\n\r\n", 400, "bad_request");
  expectError("POST /api/v1/run/wf_x HTTP/1.0\r\n" + kAuth + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
              "bad_request");
  expectNothingUpstream();
}

TEST_F(BadInput, MalformedContentLengthIs400Or413) {
  for (const std::string cl : {"-1", "abc", "1 2", "+2", "0x2", "2.0", "", "99999999999999999999",
                               "18446744073709551617", "9223372036854775808"}) {
    std::string req = runHead("Content-Length: " + cl + "\r\n") + "{}";
    std::string got = raw(req);
    HttpResponse r = parseResponse(got);
    EXPECT_TRUE(r.status == 400 || r.status == 413) << "Content-Length: '" << cl << "' -> " << printable(got);
    auto j = nlohmann::json::parse(r.body, nullptr, false);
    EXPECT_TRUE(j.is_object() && (j["code"] == "bad_request" || j["code"] == "payload_too_large")) << r.body;
  }
  // Two different lengths.
  expectError(runHead("Content-Length: 2\r\nContent-Length: 3\r\n") + "{} ", 400, "bad_request");
  expectNothingUpstream();
}

TEST_F(BadInput, AnOversizedBodyIs413BeforeItIsSent) {
  // Announced: refused from the head, without a 100 Continue, body never read.
  std::string got = raw(runHead("Content-Length: 2000000\r\nExpect: 100-continue\r\n"));
  HttpResponse r = parseResponse(got);
  EXPECT_EQ(r.status, 413) << printable(got);
  EXPECT_EQ(r.body, R"({"error":"Request body too large","success":false,"code":"payload_too_large"})");
  EXPECT_EQ(got.find("100 Continue"), std::string::npos);
  // Chunked: cut off once the total passes the limit.
  std::string chunk = std::string(512 * 1024, ' ');
  std::string req = runHead("Transfer-Encoding: chunked\r\n");
  for (int i = 0; i < 3; ++i) req += "80000\r\n" + chunk + "\r\n";
  req += "0\r\n\r\n";
  expectError(req, 413, "payload_too_large");
  expectNothingUpstream();
}

TEST_F(BadInput, InvalidChunkingIs400) {
  const std::vector<std::string> bodies = {
      "zz\r\n{}\r\n0\r\n\r\n",                   // not hex
      "2\r\n{}XX0\r\n\r\n",                      // data not followed by CRLF
      "2\r\n{}\r\n-1\r\n\r\n",                   // negative size
      "ffffffffffffffffffff\r\n{}\r\n0\r\n\r\n",  // size overflow
      "2 ;\r\x01\r\n{}\r\n0\r\n\r\n",            // CR inside an extension
      "\r\n{}\r\n0\r\n\r\n",                     // empty size line
      "2\r\n{}\r\n0\r\nX-Trailer\r\n\r\n",       // a trailer line without a colon? (read and discarded)
  };
  for (size_t i = 0; i + 1 < bodies.size(); ++i) {
    expectError(runHead("Transfer-Encoding: chunked\r\n") + bodies[i], 400, "bad_request");
  }
  expectNothingUpstream();
}

TEST_F(BadInput, OversizedHeadersAre431AndAnOversizedUrlIsRefused) {
  expectError(runHead("X-Big: " + std::string(100 * 1024, 'a') + "\r\nContent-Length: 2\r\n") + "{}", 431,
              "request_header_too_large");
  std::string many;
  for (int i = 0; i < 300; ++i) many += "X-H" + std::to_string(i) + ": v\r\n";
  expectError(runHead(many + "Content-Length: 2\r\n") + "{}", 431, "request_header_too_large");
  // A huge request target: 431 (it counts against the head), or 414/400.
  std::string url = "/api/v1/balance?q=" + std::string(100 * 1024, 'u');
  expectRefused("GET " + url + " HTTP/1.1\r\nHost: x\r\n" + kAuth + "\r\n", {431, 414, 400});
  // A head that never ends is cut at the limit, not buffered forever.
  std::string endless = "GET /api/v1/balance HTTP/1.1\r\nHost: x\r\nX-Endless: " + std::string(1 << 20, 'e');
  expectRefused(endless, {431, 400});
  expectNothingUpstream();
}

TEST_F(BadInput, NonUtf8AndNonObjectBodiesAreInvalidJson) {
  const std::vector<std::string> bodies = {
      "{\"a\":\"\xff\xfe\"}",  // invalid UTF-8 in a string
      "{\"a\":\"\xc0\xaf\"}",  // overlong encoding of '/'
      "{\"a\":\"\xed\xa0\x80\"}",  // UTF-8-encoded surrogate
      "\xef\xbb\xbf{}",         // a BOM before the object
      "[1,2]",  "\"str\"",  "1",  "null",  "{",  "{\"a\":}",  "{} {}",  "{\"a\":1,}",  "{'a':1}",
      "{\"a\":01}",  "{\"a\":1e}",  "{\"a\":NaN}",  "{\"a\":\"\t\"}",  std::string("{\"a\":\"x\0y\"}", 11),
      std::string("{\0}", 3),
  };
  for (const auto& body : bodies) {
    HttpResponse r = expectError(buildRequest("POST", "/api/v1/run/wf_x", kAcme, body), 400, "invalid_json");
    auto j = nlohmann::json::parse(r.body, nullptr, false);
    if (j.is_object()) {
      EXPECT_EQ(j["error"].get<std::string>().rfind("Request body is not a JSON object: ", 0), 0u) << r.body;
      EXPECT_NE(j["error"].get<std::string>().find("at offset "), std::string::npos) << r.body;
    }
  }
  // The offset is where parsing failed.
  HttpResponse r = runOn(proxy_->port(), "wf_x", R"({"a":})");
  EXPECT_NE(r.body.find("at offset 5"), std::string::npos) << r.body;
  // The stream route validates the same way, before a token is spent.
  expectError(buildRequest("POST", "/api/v1/run/wf_x/stream", kAcme, "[1]"), 400, "invalid_json");
  expectNothingUpstream();
}

TEST_F(BadInput, DeeplyNestedAndPathologicalJsonIsRefusedQuickly) {
  const std::vector<std::string> bodies = {
      std::string(100000, '['),
      "{\"a\":" + std::string(100000, '['),
      "{\"a\":" + std::string(50000, '{') + std::string(50000, '}') + "}",
      std::string(300000, '{'),
      "{\"a\":" + [] {
        std::string s;
        for (int i = 0; i < 100000; ++i) s += "{\"a\":";
        return s;
      }(),
  };
  for (const auto& body : bodies) {
    auto start = std::chrono::steady_clock::now();
    HttpResponse r = expectError(buildRequest("POST", "/api/v1/run/wf_x", kAcme, body), 400, "invalid_json");
    EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  }
  expectNothingUpstream();
}

TEST_F(BadInput, HugeNumbersAreCanonicalisedQuicklyOrRefused) {
  // Exact decimal canonicalisation must not cost more than linear work.
  const std::vector<std::string> bodies = {
      "{\"n\":1" + std::string(900000, '0') + "}",
      "{\"n\":0." + std::string(900000, '0') + "1}",
      "{\"n\":1e999999999}",
      "{\"n\":1e-999999999}",
      "{\"n\":1e99999999999999999999}",
      "{\"n\":" + std::string(450000, '9') + "e-450000}",
      "{\"n\":0.000001e" + std::string(50000, '9') + "}",
  };
  for (const auto& body : bodies) {
    auto start = std::chrono::steady_clock::now();
    HttpResponse r = runOn(proxy_->port(), "wf_num", body);
    auto took = std::chrono::steady_clock::now() - start;
    EXPECT_TRUE(r.status == 200 || (r.status == 400 && r.body.find("invalid_json") != std::string::npos))
        << body.substr(0, 40) << " -> " << r.status << " " << r.body.substr(0, 200);
    EXPECT_LT(took, 2s) << body.substr(0, 40);
  }
}

TEST_F(BadInput, NulBytesInTheHeadAre400) {
  expectError(runHead(std::string("X-Nul: a\0b\r\n", 12) + "Content-Length: 2\r\n") + "{}", 400, "bad_request");
  expectError(runHead(std::string("X-N\0ul: ab\r\n", 12) + "Content-Length: 2\r\n") + "{}", 400, "bad_request");
  expectError(std::string("POST /api/v1/run/wf\0x HTTP/1.1\r\nHost: x\r\n", 41) + kAuth + "Content-Length: 2\r\n\r\n{}",
              400, "bad_request");
  expectError(runHead(std::string("Authorization: Bearer acme-client-key\0\r\n", 40) + "Content-Length: 2\r\n") + "{}",
              400, "bad_request");
  expectNothingUpstream();
}

TEST_F(BadInput, NulBytesInAPassThroughBodyAreForwardedVerbatim) {
  // A body is opaque on pass-through paths: NULs are data, forwarded byte for byte.
  std::string body("{\"model\":\"m\",\"x\":\"\0\"}", 21);
  HttpResponse r = httpRequest(proxy_->port(), "POST", "/api/v1/echo-nul", kAcme, body);
  EXPECT_EQ(r.status, 404);  // the simulator's answer for an unknown path
  auto recs = sim_->requests();
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0]["body_len"], 21);
}

TEST_F(BadInput, TraversalAndEncodedSlashesInWorkflowIdsAre404) {
  const std::vector<std::string> targets = {
      "/api/v1/run/..%2F..",       "/api/v1/run/%2e%2e",          "/api/v1/run/a/../b",
      "/api/v1/run/../token",      "/api/v1/run/..",              "/api/v1/run/.",
      "/api/v1/run/",              "/api/v1/run//wf_x",           "/api/v1/run/wf_x/",
      "/api/v1/run/wf_x%2Fstream", "/api/v1/run/wf_x/stream/",     "/api/v1/run/wf_x/stream/..",
      "/api/v1/run/wf_x/other",    "/api/v1/run/wf%00x",          "/api/v1/run/wf%20x",
      "/api/v1/run/wf.x",          "/api/v1/run/" + std::string(129, 'a'),
      "/api/v1/run/%77f_x",        "/api/v1/run/wf_x;param",      "/api/v1/run/wf_x/%2e%2e/%2e%2e/balance",
  };
  for (const auto& t : targets) {
    HttpResponse r = expectError(buildRequest("POST", t, kAcme, "{}"), 404, "not_found");
    EXPECT_EQ(r.body, kWorkflowNotFoundBody) << t;
    // Also for OPTIONS, which skips authentication.
    r = expectError(buildRequest("OPTIONS", t, {}, ""), 404, "not_found");
  }
  // The longest valid id is fine.
  EXPECT_EQ(runOn(proxy_->port(), std::string(128, 'a'), "{}").status, 200);
  auto recs = sim_->requests();
  ASSERT_EQ(recs.size(), 1u) << recs.dump();
  EXPECT_EQ(recs[0]["path"], "/api/v1/run/" + std::string(128, 'a'));
}

TEST_F(BadInput, HeaderInjectionIs400AndNothingReachesTheUpstream) {
  const std::vector<std::string> heads = {
      "X-Folded: a\r\n b\r\n",                       // obs-fold
      "X-Folded: a\r\n\tInjected: b\r\n",            // obs-fold with a tab
      "X-Bare-CR: a\rInjected: b\r\n",               // bare CR inside a value
      "X-Bare-CR\r: a\r\n",                          // CR in a name
      "X-User-Id: u1\rAuthorization: Bearer sk_x\r\n",
      " X-Leading-Space: a\r\n",                     // first field folded onto nothing
      "X Space: a\r\n",                              // whitespace in a name
      "X-Space : a\r\n",                             // whitespace before the colon
      ": no-name\r\n",                               // empty name
      "NoColon\r\n",                                 // no colon
  };
  for (const auto& h : heads) {
    expectError(runHead(h + "Content-Length: 2\r\n") + "{}", 400, "bad_request");
  }
  // Pass-through and token routes too.
  expectError("GET /api/v1/balance HTTP/1.1\r\nHost: x\r\n" + kAuth + "X-A: a\r\n b\r\n\r\n", 400, "bad_request");
  expectError("GET /api/v1/token HTTP/1.1\r\nHost: x\r\n" + kAuth + "X-A: a\rb\r\n\r\n", 400, "bad_request");
  expectNothingUpstream();
}

TEST_F(BadInput, AbsoluteAndAuthorityFormTargetsAre400AndNothingIsSent) {
  expectError("GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n" + kAuth + "\r\n", 400, "bad_request");
  expectError("POST http://127.0.0.1/api/v1/run/wf_x HTTP/1.1\r\nHost: x\r\n" + kAuth + "Content-Length: 2\r\n\r\n{}",
              400, "bad_request");
  expectRefused("CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n" + kAuth + "\r\n", {400, 405});
  expectRefused("GET evil.example HTTP/1.1\r\nHost: x\r\n" + kAuth + "\r\n", {400});
  expectNothingUpstream();
  // An origin-form target that looks like a network path stays on the upstream.
  HttpResponse r = httpRequest(proxy_->port(), "GET", "//evil.example/x", kAcme);
  EXPECT_EQ(r.status, 404);
  auto recs = sim_->requests();
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0]["uri"], "//evil.example/x");
}

// docs/http.md: TRACE and CONNECT on any path are 405, never forwarded: an
// upstream path that echoes the request would hand the organisation key to
// the client. CONNECT's real shape (authority-form) included.
TEST_F(BadInput, TraceAndConnectAre405AndNeverForwarded) {
  const std::string close = "Connection: close\r\n";
  struct Case {
    std::string request;
    std::string allow;
  };
  const std::string forwarded = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
  const std::vector<Case> cases = {
      {"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n" + kAuth + close + "\r\n", ""},
      {"CONNECT 127.0.0.1:6379 HTTP/1.1\r\nHost: 127.0.0.1:6379\r\n" + close + "\r\n", ""},
      {"CONNECT /api/v1/balance HTTP/1.1\r\nHost: x\r\n" + kAuth + close + "\r\n", forwarded},
      {"TRACE /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + kAuth + close + "\r\n", forwarded},
      {"TRACE / HTTP/1.1\r\nHost: x\r\n" + close + "\r\n", forwarded},
      {"TRACE /echo HTTP/1.1\r\nHost: x\r\n" + kAuth + close + "Content-Length: 2\r\n\r\n{}", forwarded},
      {"TRACE /api/v1/token HTTP/1.1\r\nHost: x\r\n" + kAuth + close + "\r\n", "GET, OPTIONS"},
      {"TRACE /api/v1/run/wf_x/stream HTTP/1.1\r\nHost: x\r\n" + kAuth + close + "\r\n", "POST, OPTIONS"},
      {"TRACE /api/v1/run/wf%2Fx HTTP/1.1\r\nHost: x\r\n" + kAuth + close + "\r\n", ""},
      // Case variants and IIS's TRACK: refused too.
      {"trace /api/v1/balance HTTP/1.1\r\nHost: x\r\n" + kAuth + close + "\r\n", forwarded},
      {"Connect /api/v1/balance HTTP/1.1\r\nHost: x\r\n" + kAuth + close + "\r\n", forwarded},
      {"TRACK /api/v1/balance HTTP/1.1\r\nHost: x\r\n" + kAuth + close + "\r\n", forwarded},
  };
  for (const Case& c : cases) {
    HttpResponse r = expectError(c.request, 405, "method_not_allowed");
    EXPECT_EQ(r.headerCount("allow"), 1u) << printable(c.request);
    EXPECT_EQ(r.header("allow"), c.allow) << printable(c.request);
  }
  // An absolute-form TRACE is refused earlier, as any absolute-form target.
  expectError("TRACE http://127.0.0.1/ HTTP/1.1\r\nHost: x\r\n" + kAuth + "\r\n", 400, "bad_request");
  expectNothingUpstream();
}

TEST_F(BadInput, MultipleHostHeadersAre400) {
  expectError("GET /api/v1/balance HTTP/1.1\r\nHost: a\r\nHost: b\r\n" + kAuth + "\r\n", 400, "bad_request");
  expectNothingUpstream();
}

TEST_F(BadInput, AnHttp11RequestWithoutHostIs400) {
  // RFC 9112 §3.2: a server MUST answer 400.
  HttpResponse r = expectError("GET /api/v1/balance HTTP/1.1\r\n" + kAuth + "\r\n", 400, "bad_request");
  EXPECT_EQ(r.body, R"({"error":"Bad request: missing Host header","success":false,"code":"bad_request"})");
  expectError("POST /api/v1/run/wf_x HTTP/1.1\r\n" + kAuth + "Content-Length: 2\r\n\r\n{}", 400, "bad_request");
  expectNothingUpstream();
  // HTTP/1.0 predates Host: still served.
  HttpResponse old = parseResponse(raw("POST /api/v1/run/wf_x HTTP/1.0\r\n" + kAuth + "Content-Length: 2\r\n\r\n{}"));
  EXPECT_EQ(old.status, 200) << old.raw;
}

TEST_F(BadInput, BadRequestLinesAndVersions) {
  expectError("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "http_version_not_supported");
  expectError("GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505, "http_version_not_supported");
  expectError("GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505, "http_version_not_supported");
  expectError("GET / HTTP/1.10\r\nHost: x\r\n\r\n", 400, "bad_request");
  expectError("GET / http/1.1\r\nHost: x\r\n\r\n", 400, "bad_request");
  expectError("G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request");
  expectError("GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request");
  expectError("GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request");
  expectError("GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request");
  expectError("GET / HTTP/1.1\rHost: x\r\n\r\n", 400, "bad_request");
  expectRefused(std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11) + std::string(200, 'A') + "\r\n\r\n",
                {400});  // a TLS ClientHello
  expectNothingUpstream();
}

TEST_F(BadInput, PipelinedRequestsAreAnsweredInOrderAndABadOneEndsTheConnection) {
  std::string batch;
  for (int i = 0; i < 50; ++i) {
    std::string body = "{\"i\":" + std::to_string(i % 5) + "}";
    batch += "POST /api/v1/run/wf_pipe HTTP/1.1\r\nHost: x\r\n" + kAuth + "Content-Length: " +
             std::to_string(body.size()) + "\r\n\r\n" + body;
  }
  batch += "GET /api/v1/balance HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n";  // bad: the connection ends here
  batch += "GET /api/v1/balance HTTP/1.1\r\nHost: x\r\n" + kAuth + "\r\n";    // never handled
  Connection c(proxy_->port());
  c.send(batch);
  for (int i = 0; i < 50; ++i) {
    HttpResponse r = c.readResponse(10s);
    ASSERT_EQ(r.status, 200) << i << ": " << r.raw;
    auto j = nlohmann::json::parse(r.body, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.body;
    const std::string result = j["result"].get<std::string>();
    EXPECT_NE(result.find(": {\"i\":" + std::to_string(i % 5) + "}"), std::string::npos) << i << ": " << result;
  }
  HttpResponse bad = c.readResponse(5s);
  EXPECT_EQ(bad.status, 400);
  HttpResponse none = c.readResponse(1s);
  EXPECT_FALSE(none.ok) << none.raw;
  EXPECT_EQ(simRuns(*sim_), 5);
  auto recs = sim_->requests();
  for (const auto& rec : recs) EXPECT_NE(rec["path"], "/api/v1/balance");
}

TEST_F(BadInput, AuthorizationOddities) {
  // Garbage keys are 401 with the upstream's exact body, and spend nothing.
  const std::vector<std::string> values = {"Bearer",
                                          "Bearer ",
                                          "Bearer  ",
                                          "Basic YWNtZTpwdw==",
                                          "bearer",
                                          "Bearer\tacme-client-key",
                                          "Bearer acme-client-key extra",
                                          "Bearer acme-client-keyX",
                                          "Bearer " + std::string(10000, 'k')};
  for (const std::string& v : values) {
    HttpResponse r = runOn(proxy_->port(), "wf_x", "{}", {{"Authorization", v}});
    EXPECT_EQ(r.status, 401) << "'" << v.substr(0, 40) << "'";
    EXPECT_EQ(r.body, kUnauthorizedBody);
  }
  // Two Authorization headers, the first a valid key: never the second one upstream.
  HttpResponse r = httpRequest(proxy_->port(), "POST", "/api/v1/run/wf_x",
                               {{"Authorization", "Bearer acme-client-key"}, {"Authorization", "Bearer sk_sim_globex"}},
                               "{}");
  if (r.status == 200) {
    auto recs = sim_->requests();
    ASSERT_EQ(recs.size(), 1u);
    EXPECT_EQ(recs[0]["org"], "acme");
    int auths = 0;
    for (const auto& h : recs[0]["headers"]) auths += h[0].get<std::string>() == "Authorization";
    EXPECT_EQ(auths, 1) << recs[0].dump();
  } else {
    EXPECT_EQ(r.status, 400) << r.raw;
  }
}

TEST_F(BadInput, MethodsOnTheRunRoute) {
  for (const std::string m : {"GET", "PUT", "DELETE", "PATCH", "TRACE"}) {
    HttpResponse r = httpRequest(proxy_->port(), m, "/api/v1/run/wf_x", kAcme, "");
    EXPECT_EQ(r.status, 405) << m;
    EXPECT_EQ(r.header("allow"), "POST, OPTIONS") << m;
  }
  expectNothingUpstream();
}

}  // namespace
}  // namespace wfp::test::faults
