#include "proxy/routes.h"

namespace wfp {

namespace {

constexpr std::string_view kRunPrefix = "/api/v1/run/";

Route make(RouteKind kind) { return Route{kind, {}, {}}; }

Route notAllowed(std::string allow) { return Route{RouteKind::MethodNotAllowed, {}, std::move(allow)}; }

// GET-only admin routes; HEAD is answered like GET by nobody here, keep it simple.
Route adminGet(std::string_view method, RouteKind kind) {
  if (method == "GET" || method == "HEAD") return make(kind);
  return notAllowed("GET, HEAD");
}

}  // namespace

bool isValidWorkflowId(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

Route routeClient(std::string_view method, std::string_view raw_path, bool admin_here) {
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
      if (rest.substr(slash) != "/stream") return make(RouteKind::NotFound);
      stream = true;
    }
    if (!isValidWorkflowId(id)) return make(RouteKind::NotFound);
    if (method == "OPTIONS") return make(RouteKind::Options);
    if (method != "POST") return notAllowed("POST, OPTIONS");
    return Route{stream ? RouteKind::Stream : RouteKind::Run, std::string(id), {}};
  }
  if (method == "OPTIONS") return make(RouteKind::Options);
  if (raw_path == "/api/v1/token") {
    if (method != "GET") return notAllowed("GET, OPTIONS");
    return make(RouteKind::Token);
  }
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
  return make(RouteKind::NotFound);
}

}  // namespace wfp
