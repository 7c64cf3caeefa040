// The route table of SPEC §3, decided on the method and the raw path. Pure.
#pragma once

#include <string>
#include <string_view>

namespace wfp {

enum class RouteKind {
  Run,              // POST /api/v1/run/{id}
  Stream,           // POST /api/v1/run/{id}/stream
  Token,            // GET /api/v1/token
  Options,          // OPTIONS anything: forwarded, no authentication
  PassThrough,      // any other path: forwarded with the organisation key
  Health,           // GET /healthz       (admin)
  Ready,            // GET /readyz        (admin)
  Metrics,          // GET /metrics       (admin)
  Purge,            // POST /admin/purge  (admin listener only)
  NotFound,         // 404 not_found
  MethodNotAllowed, // 405 method_not_allowed, with `allow`
};

struct Route {
  RouteKind kind = RouteKind::NotFound;
  std::string workflow_id;  // Run, Stream
  std::string allow;        // MethodNotAllowed
};

// [A-Za-z0-9_-]{1,128}
bool isValidWorkflowId(std::string_view id);

// Routes on the client listener. `admin_here`: admin_listen is "" so the
// health/readiness/metrics routes are served on this listener too.
Route routeClient(std::string_view method, std::string_view raw_path, bool admin_here);
// Routes on the admin listener.
Route routeAdmin(std::string_view method, std::string_view raw_path);

}  // namespace wfp
