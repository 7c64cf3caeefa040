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

TEST(Routes, AdminRoutes) {
  EXPECT_EQ(routeClient("GET", "/healthz", true).kind, RouteKind::Health);
  EXPECT_EQ(routeClient("GET", "/metrics", true).kind, RouteKind::Metrics);
  // With admin_listen "" purge is an ordinary path.
  EXPECT_EQ(routeClient("POST", "/admin/purge", true).kind, RouteKind::PassThrough);
  EXPECT_EQ(routeAdmin("GET", "/readyz").kind, RouteKind::Ready);
  EXPECT_EQ(routeAdmin("POST", "/admin/purge").kind, RouteKind::Purge);
  EXPECT_EQ(routeAdmin("GET", "/admin/purge").kind, RouteKind::MethodNotAllowed);
  EXPECT_EQ(routeAdmin("GET", "/nope").kind, RouteKind::NotFound);
}

}  // namespace
}  // namespace wfp
