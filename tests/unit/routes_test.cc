#include "proxy/routes.h"

#include <gtest/gtest.h>

namespace wfp {
namespace {

TEST(Routes, RunAndStream) {
  Route r = routeClient("POST", "/api/v1/run/wf_abc123", false);
  EXPECT_EQ(r.kind, RouteKind::Run);
  EXPECT_EQ(r.workflow_id, "wf_abc123");
  r = routeClient("POST", "/api/v1/run/wf-A_9/stream", false);
  EXPECT_EQ(r.kind, RouteKind::Stream);
  EXPECT_EQ(r.workflow_id, "wf-A_9");
}

TEST(Routes, MalformedWorkflowIdsAreNotFound) {
  for (const char* path : {"/api/v1/run/", "/api/v1/run/wf%2Fx", "/api/v1/run/..", "/api/v1/run/wf/x",
                           "/api/v1/run/wf_x/stream/more", "/api/v1/run/wf_x/", "/api/v1/run/wf.x",
                           "/api/v1/run//stream", "/api/v1/run/wf_x/Stream"}) {
    EXPECT_EQ(routeClient("POST", path, false).kind, RouteKind::NotFound) << path;
    // Answered with the upstream's "Workflow not found".
    EXPECT_TRUE(routeClient("POST", path, false).bad_workflow) << path;
    EXPECT_TRUE(routeClient("OPTIONS", path, false).bad_workflow) << path;
    EXPECT_FALSE(routeClient("TRACE", path, false).bad_workflow) << path;  // 405
  }
  std::string long_id(129, 'a');
  EXPECT_EQ(routeClient("POST", "/api/v1/run/" + long_id, false).kind, RouteKind::NotFound);
  EXPECT_EQ(routeClient("POST", "/api/v1/run/" + std::string(128, 'a'), false).kind, RouteKind::Run);
}

TEST(Routes, WrongMethodOnRunIs405WithAllow) {
  Route r = routeClient("GET", "/api/v1/run/wf_x", false);
  EXPECT_EQ(r.kind, RouteKind::MethodNotAllowed);
  EXPECT_EQ(r.allow, "POST, OPTIONS");
  EXPECT_EQ(routeClient("POST", "/api/v1/token", false).kind, RouteKind::MethodNotAllowed);
}

TEST(Routes, TokenOptionsAndPassThrough) {
  EXPECT_EQ(routeClient("GET", "/api/v1/token", false).kind, RouteKind::Token);
  EXPECT_EQ(routeClient("OPTIONS", "/api/v1/run/wf_x/stream", false).kind, RouteKind::Options);
  EXPECT_EQ(routeClient("OPTIONS", "/anything", false).kind, RouteKind::Options);
  EXPECT_EQ(routeClient("POST", "/api/v1/chat/completions", false).kind, RouteKind::PassThrough);
  EXPECT_EQ(routeClient("GET", "/api/v1/balance", false).kind, RouteKind::PassThrough);
  EXPECT_EQ(routeClient("GET", "/healthz", false).kind, RouteKind::PassThrough);
}

// docs/http.md: TRACE echoes the request (organisation key included) and CONNECT
// asks for a tunnel: 405 on every path, never a route that forwards.
bool forwards(RouteKind kind) {
  return kind == RouteKind::Run || kind == RouteKind::Stream || kind == RouteKind::Token ||
         kind == RouteKind::Options || kind == RouteKind::PassThrough;
}

TEST(Routes, TraceAndConnectAre405OnEveryPathWithWhatThePathAllows) {
  struct Case {
    const char* path;
    bool admin_here;
    const char* allow;
  };
  const Case cases[] = {
      {"/api/v1/chat/completions", false, "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"},
      {"/", false, "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"},
      {"/echo/headers", false, "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"},
      {"/healthz", false, "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"},
      {"/admin/purge", true, "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"},
      {"/api/v1/run/wf_x", false, "POST, OPTIONS"},
      {"/api/v1/run/wf_x/stream", false, "POST, OPTIONS"},
      {"/api/v1/token", false, "GET, OPTIONS"},
      {"/healthz", true, "GET, HEAD"},
      {"/metrics", true, "GET, HEAD"},
      // Paths no method is served on: an empty Allow.
      {"/api/v1/run/wf%2Fx", false, ""},
      {"/api/v1/run/wf_x/more", false, ""},
      {"example.com:443", false, ""},  // CONNECT's authority-form
      {"[::1]:443", false, ""},
      {"*", false, ""},
  };
  for (const char* method : {"TRACE", "CONNECT", "TRACK"}) {
    for (const Case& c : cases) {
      Route r = routeClient(method, c.path, c.admin_here);
      EXPECT_EQ(r.kind, RouteKind::MethodNotAllowed) << method << " " << c.path;
      EXPECT_EQ(r.allow, c.allow) << method << " " << c.path;
      EXPECT_TRUE(r.workflow_id.empty());
    }
  }
  for (const char* path : {"/healthz", "/admin/purge", "/nope", "example.com:443"}) {
    EXPECT_EQ(routeAdmin("TRACE", path).kind, RouteKind::MethodNotAllowed) << path;
    EXPECT_EQ(routeAdmin("CONNECT", path).kind, RouteKind::MethodNotAllowed) << path;
  }
  EXPECT_EQ(routeAdmin("TRACE", "/nope").allow, "");
}

// Method names are case-sensitive (RFC 9110 §9.1), so `trace` is not TRACE;
// but an upstream or a hop before it that folds case would echo it the same:
// refused like the upper-case names, never forwarded.
TEST(Routes, CaseVariantsOfTraceAndConnectAreNotForwarded) {
  for (const char* method : {"trace", "Trace", "tRACE", "connect", "Connect", "track"}) {
    for (const char* path : {"/api/v1/chat/completions", "/api/v1/run/wf_x", "/api/v1/token", "/x:1"}) {
      Route r = routeClient(method, path, false);
      EXPECT_EQ(r.kind, RouteKind::MethodNotAllowed) << method << " " << path;
    }
  }
  // Names that merely contain them are ordinary (extension) methods.
  EXPECT_EQ(routeClient("TRACES", "/x", false).kind, RouteKind::PassThrough);
  EXPECT_EQ(routeClient("RECONNECT", "/x", false).kind, RouteKind::PassThrough);
  EXPECT_EQ(routeClient("PROPFIND", "/x", false).kind, RouteKind::PassThrough);
}

// Only an origin-form path is ever appended to upstream.base_url: whatever
// the method, a target that is not one is never a forwarding route.
TEST(Routes, OnlyAnOriginFormPathIsForwarded) {
  for (const char* method : {"GET", "POST", "OPTIONS", "PUT", "TRACE", "CONNECT"}) {
    for (const char* path : {"", "*", "example.com:443", "http://evil.example/x", "evil.example", "@evil"}) {
      for (bool admin_here : {false, true}) {
        EXPECT_FALSE(forwards(routeClient(method, path, admin_here).kind)) << method << " '" << path << "'";
      }
    }
  }
  EXPECT_EQ(routeClient("OPTIONS", "*", false).kind, RouteKind::NotFound);
  EXPECT_EQ(routeClient("GET", "example.com:443", false).kind, RouteKind::NotFound);
  EXPECT_FALSE(routeClient("OPTIONS", "*", false).bad_workflow);  // not a workflow: "Not found"
}

TEST(Routes, AdminRoutes) {
  EXPECT_EQ(routeClient("GET", "/healthz", true).kind, RouteKind::Health);
  EXPECT_EQ(routeClient("GET", "/metrics", true).kind, RouteKind::Metrics);
  // With admin_listen "" purge is an ordinary path.
  EXPECT_EQ(routeClient("POST", "/admin/purge", true).kind, RouteKind::PassThrough);
  EXPECT_EQ(routeAdmin("GET", "/readyz").kind, RouteKind::Ready);
  EXPECT_EQ(routeAdmin("POST", "/admin/purge").kind, RouteKind::Purge);
  EXPECT_EQ(routeAdmin("GET", "/admin/purge").kind, RouteKind::MethodNotAllowed);
  EXPECT_EQ(routeAdmin("GET", "/nope").kind, RouteKind::NotFound);
  EXPECT_FALSE(routeAdmin("GET", "/nope").bad_workflow);
}

}  // namespace
}  // namespace wfp
