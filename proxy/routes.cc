#include "proxy/routes.h"

namespace wfp {

namespace {

constexpr std::string_view kRunPrefix = "/api/v1/run/";

Route make(RouteKind kind) { return Route{kind, {}, {}}; }

Route notAllowed(std::string_view allow) { return Route{RouteKind::MethodNotAllowed, {}, std::string(allow)}; }

// A path no method is served on: 404, but a never-forwarded method is told
// 405 on any path (docs/http.md), with an empty Allow.
Route nowhere(std::string_view method) {
  return isNeverForwardedMethod(method) ? notAllowed("") : make(RouteKind::NotFound);
}

// A malformed workflow id on a run or stream route: 404 as for a workflow
// the upstream does not know (or 405 for a never-forwarded method).
Route badWorkflow(std::string_view method) {
  Route route = nowhere(method);
  route.bad_workflow = route.kind == RouteKind::NotFound;
  return route;
}

// GET-only admin routes; HEAD is answered like GET by nobody here, keep it simple.
Route adminGet(std::string_view method, RouteKind kind) {
  if (method == "GET" || method == "HEAD") return make(kind);
  return notAllowed("GET, HEAD");
}

}  // namespace

bool isNeverForwardedMethod(std::string_view method) {
  return equalsIgnoreCase(method, "TRACE") || equalsIgnoreCase(method, "CONNECT") ||
         equalsIgnoreCase(method, "TRACK");
}

Route routeClient(std::string_view method, std::string_view raw_path, bool admin_here) {
  // Only an origin-form path is ever appended to upstream.base_url.
  if (raw_path.empty() || raw_path.front() != '/') return nowhere(method);
  if (admin_here) {
    if (raw_path == "/healthz") return adminGet(method, RouteKind::Health);
    if (raw_path == "/readyz") return adminGet(method, RouteKind::Ready);
    if (raw_path == "/metrics") return adminGet(method, RouteKind::Metrics);
  }
  if (raw_path.substr(0, kRunPrefix.size()) == kRunPrefix) {
    // Matched on the raw path: "%2F", "..", a third segment are malformed ids.
    std::string_view rest = raw_path.substr(kRunPrefix.size());
    bool stream = false;
    size_t slash = rest.find('/');
    std::string_view id = rest.substr(0, slash);
    if (slash != std::string_view::npos) {
      if (rest.substr(slash) != "/stream") return badWorkflow(method);
      stream = true;
    }
    if (!isValidWorkflowId(id)) return badWorkflow(method);
    if (method == "OPTIONS") return make(RouteKind::Options);
    if (method != "POST") return notAllowed("POST, OPTIONS");
    return Route{stream ? RouteKind::Stream : RouteKind::Run, std::string(id), {}};
  }
  if (method == "OPTIONS") return make(RouteKind::Options);
  if (raw_path == "/api/v1/token") {
    if (method != "GET") return notAllowed("GET, OPTIONS");
    return make(RouteKind::Token);
  }
  if (isNeverForwardedMethod(method)) return notAllowed(kForwardedMethods);
  return make(RouteKind::PassThrough);
}

Route routeAdmin(std::string_view method, std::string_view raw_path) {
  if (raw_path == "/healthz") return adminGet(method, RouteKind::Health);
  if (raw_path == "/readyz") return adminGet(method, RouteKind::Ready);
  if (raw_path == "/metrics") return adminGet(method, RouteKind::Metrics);
  if (raw_path == "/admin/purge") {
    if (method != "POST") return notAllowed("POST");
    return make(RouteKind::Purge);
  }
  if (raw_path == "/admin/usage") return adminGet(method, RouteKind::Usage);
  return nowhere(method);
}

}  // namespace wfp
