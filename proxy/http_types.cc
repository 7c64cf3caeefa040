#include "proxy/http_types.h"

#include <cstring>

#include <spdlog/spdlog.h>

#include "proxy/headers.h"  // isSafeHeaderValue

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

}  // namespace

bool appendHeaderLine(std::string& out, std::string_view name, std::string_view value) {
  if (isFramingHeader(name)) return false;
  if (!isToken(name) || !isSafeHeaderValue(value)) {
    spdlog::warn("http: dropping invalid response header {:?}", name.substr(0, 64));
    return false;
  }
  // One growth and three copies, not four appends (eight lines per response).
  const size_t at = out.size();
  out.resize(at + name.size() + value.size() + 4);
  char* p = out.data() + at;
  std::memcpy(p, name.data(), name.size());
  p += name.size();
  *p++ = ':';
  *p++ = ' ';
  std::memcpy(p, value.data(), value.size());
  p += value.size();
  *p++ = '\r';
  *p = '\n';
  return true;
}

const std::string* findHeader(const HttpHeaders& headers, std::string_view name) {
  for (const HttpHeader& h : headers) {
    if (equalsIgnoreCase(h.name, name)) return &h.value;
  }
  return nullptr;
}

}  // namespace wfp
