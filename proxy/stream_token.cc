#include "proxy/stream_token.h"

#include <nlohmann/json.hpp>

namespace wfp {

namespace {

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// application/x-www-form-urlencoded decoding of a name, as the WHATWG URL
// standard does it: '+' is a space; "%XY" with two hex digits is that byte;
// any other '%' stays as it is.
std::string formDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '+') {
      out.push_back(' ');
    } else if (c == '%' && i + 2 < s.size() && hexValue(s[i + 1]) >= 0 && hexValue(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hexValue(s[i + 1]) * 16 + hexValue(s[i + 2])));
      i += 2;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// Not the HTTP token (text.h): only what needs no escaping in a URL query.
bool isStreamTokenChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

}  // namespace

bool queryHasToken(std::string_view query) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view param = query.substr(0, amp);
    std::string_view name = param.substr(0, param.find('='));
    // Cheap filter first: a name that decodes to "token" has 5 to 15 bytes.
    if (name.size() >= 5 && name.size() <= 15 && formDecode(name) == "token") return true;
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return false;
}

std::string tokenFromAnswer(int status, std::string_view body) {
  if (status != 200) return {};
  auto j = nlohmann::json::parse(body, nullptr, false);
  if (!j.is_object()) return {};
  auto it = j.find("token");
  if (it == j.end() || !it->is_string()) return {};
  std::string token = it->get<std::string>();
  if (token.empty() || token.size() > 256) return {};
  for (char c : token) {
    if (!isStreamTokenChar(c)) return {};
  }
  return token;
}

std::string withToken(std::string url, std::string_view token) {
  url += url.find('?') == std::string::npos ? "?token=" : "&token=";
  url += token;
  return url;
}

}  // namespace wfp
