#include "proxy/http_types.h"

#include <spdlog/spdlog.h>

namespace wfp {

namespace {

// Connection, Content-Length and Transfer-Encoding are the server's to write.
bool isFramingHeader(std::string_view name) {
  switch (name.size()) {
    case 10: return equalsIgnoreCase(name, "connection");
    case 14: return equalsIgnoreCase(name, "content-length");
    case 17: return equalsIgnoreCase(name, "transfer-encoding");
    default: return false;
  }
}

bool safeHeaderValue(std::string_view v) {
  for (char c : v) {
    if (c == '\r' || c == '\n' || c == '\0') return false;
  }
  return true;
}

}  // namespace

bool appendHeaderLine(std::string& out, std::string_view name, std::string_view value) {
  if (isFramingHeader(name)) return false;
  if (!isToken(name) || !safeHeaderValue(value)) {
    spdlog::warn("http: dropping invalid response header {:?}", name.substr(0, 64));
    return false;
  }
  out.append(name);
  out.append(": ");
  out.append(value);
  out.append("\r\n");
  return true;
}

const std::string* findHeader(const HttpHeaders& headers, std::string_view name) {
  for (const HttpHeader& h : headers) {
    if (equalsIgnoreCase(h.name, name)) return &h.value;
  }
  return nullptr;
}

}  // namespace wfp
