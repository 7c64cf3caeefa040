#include "proxy/text.h"

#include <array>
#include <cstddef>

namespace wfp {

namespace {

// A table: isToken() runs over every header name of every request.
constexpr std::array<bool, 256> makeTokenTable() {
  std::array<bool, 256> t{};
  for (int c = 0; c < 256; ++c) t[static_cast<size_t>(c)] = isAlnum(static_cast<char>(c));
  for (char c : std::string_view("!#$%&'*+-.^_`|~")) t[static_cast<unsigned char>(c)] = true;
  return t;
}
constexpr std::array<bool, 256> kTokenChar = makeTokenTable();

constexpr size_t kMaxWorkflowId = 128;

}  // namespace

bool startsWithIgnoreCase(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && equalsIgnoreCase(s.substr(0, prefix.size()), prefix);
}

std::string_view trimOws(std::string_view s) {
  while (!s.empty() && isOws(s.front())) s.remove_prefix(1);
  while (!s.empty() && isOws(s.back())) s.remove_suffix(1);
  return s;
}

std::string_view trimSpace(std::string_view s) {
  while (!s.empty() && isSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && isSpace(s.back())) s.remove_suffix(1);
  return s;
}

bool isTokenChar(char c) { return kTokenChar[static_cast<unsigned char>(c)]; }

bool isToken(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!kTokenChar[static_cast<unsigned char>(c)]) return false;
  }
  return true;
}

bool isVisibleAscii(std::string_view s) {
  for (char c : s) {
    if (c <= 0x20 || c >= 0x7f) return false;  // char may be signed: bytes >= 0x80 are negative
  }
  return true;
}

bool isValidWorkflowId(std::string_view id) {
  if (id.empty() || id.size() > kMaxWorkflowId) return false;
  for (char c : id) {
    if (!isAlnum(c) && c != '_' && c != '-') return false;
  }
  return true;
}

}  // namespace wfp
