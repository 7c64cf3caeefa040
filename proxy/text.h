// Small text rules that several modules need, each written once: ASCII case,
// whitespace, the HTTP token, visible-ASCII credentials, the workflow id.
//
// Pure and locale-free (<cctype> depends on the C locale; a header name must
// not): bytes >= 0x80 are never letters, digits, space or token characters.
// Where two rules look alike but differ, both are here, named apart:
//   trimOws() (SP, HTAB: HTTP)      vs  trimSpace() (any ASCII whitespace)
//   isToken() (RFC 9110 tchar)      vs  isVisibleAscii() (0x21-0x7e)
#pragma once

#include <string_view>

namespace wfp {

constexpr bool isDigit(char c) { return c >= '0' && c <= '9'; }
constexpr bool isAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
constexpr bool isAlnum(char c) { return isDigit(c) || isAlpha(c); }
constexpr bool isHexDigit(char c) { return isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
constexpr char asciiLower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

// Equal ignoring ASCII case: header names, directives, keywords, schemes.
// Inline: header look-ups call it a hundred times per request, and most
// calls are refused on the length alone.
constexpr bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    const char x = a[i], y = b[i];
    // Equal bytes, or the same letter in the other case (only letters
    // differ from their other case by 0x20 alone).
    if (x != y && ((x ^ y) != 0x20 || !isAlpha(x))) return false;
  }
  return true;
}
bool startsWithIgnoreCase(std::string_view s, std::string_view prefix);

// HTTP optional whitespace (RFC 9110 §5.6.3): SP and HTAB only.
constexpr bool isOws(char c) { return c == ' ' || c == '\t'; }
// Without leading and trailing OWS: header field values, list elements.
std::string_view trimOws(std::string_view s);

// ASCII whitespace: SP, HT, LF, VT, FF, CR.
constexpr bool isSpace(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
// Without leading and trailing ASCII whitespace: a secret read from a file
// (its trailing newline), a size written as " 1 MiB ".
std::string_view trimSpace(std::string_view s);

// RFC 9110 §5.6.2 tchar: ALPHA, DIGIT and !#$%&'*+-.^_`|~
bool isTokenChar(char c);
// A non-empty run of tchar: header names, methods, transfer codings.
bool isToken(std::string_view s);

// Every byte visible ASCII (0x21-0x7e); true for "". What may travel as a
// bearer credential in an Authorization header (an api_key, a client key):
// wider than a token ('/', '=', ':' are common in keys), but no space,
// control character or non-ASCII byte.
bool isVisibleAscii(std::string_view s);

// A workflow id, docs/http.md: [A-Za-z0-9_-]{1,128}. The one rule for the route
// (/api/v1/run/{id}), the purge request and cache.workflows in the config.
bool isValidWorkflowId(std::string_view id);

}  // namespace wfp
