// The route table of docs/http.md, decided on the method and the raw path. Pure.
#pragma once

#include <string>
#include <string_view>

#include "proxy/text.h"  // isValidWorkflowId(): the workflow-id rule

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
  Usage,            // GET /admin/usage   (admin listener only)
  NotFound,         // 404 not_found
  MethodNotAllowed, // 405 method_not_allowed, with `allow`
};

// Routes of the admin listener that act or report on clients (purge, usage),
// as against probes and the scrape: these need admin.token_file's token.
inline bool isAdminAction(RouteKind kind) { return kind == RouteKind::Purge || kind == RouteKind::Usage; }

struct Route {
  RouteKind kind = RouteKind::NotFound;
  std::string workflow_id;  // Run, Stream
  // MethodNotAllowed: the methods the path takes, for the Allow header. Empty
  // ("Allow: ", RFC 9110 §10.2.1: no method) where none is: a target that is
  // not a path, a malformed workflow id, an unknown admin path.
  std::string allow;
  // NotFound: a malformed workflow id on a run or stream route, answered with
  // the upstream's own sentence ("Workflow not found").
  bool bad_workflow = false;
};

// Methods never forwarded, whatever the path (docs/http.md): TRACE echoes the
// request it receives, organisation key included, and CONNECT asks for a
// tunnel. Matched without regard to case, and TRACK (IIS's TRACE) with them:
// RFC 9110 makes `trace` another method, but an upstream or intermediary that
// folds case would echo it all the same, and no API call uses these names.
bool isNeverForwardedMethod(std::string_view method);

// The methods a pass-through path lists in Allow. Every other method but the
// never-forwarded ones is forwarded too (an extension method is the
// upstream's to judge); Allow names the usual ones.
inline constexpr std::string_view kForwardedMethods = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

// Routes on the client listener. `raw_path` is the request-target up to '?':
// anything that is not an origin-form path ("*", a CONNECT's "host:443") is
// never forwarded (404, or 405 for a never-forwarded method). `admin_here`:
// admin_listen is "" so the health/readiness/metrics routes are served on this
// listener too.
Route routeClient(std::string_view method, std::string_view raw_path, bool admin_here);
// Routes on the admin listener.
Route routeAdmin(std::string_view method, std::string_view raw_path);

}  // namespace wfp
