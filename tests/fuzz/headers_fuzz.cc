// libFuzzer harness for the header mapping (proxy/headers.h; scripts/fuzz runs it).
//
// Input layout: byte 0 holds option bits, the rest is a header block, one
// field per line ("name: value", split at the first ':'; a line without a
// colon is a name with an empty value). Lines end at '\n' only, so values may
// hold CR and NUL bytes: the mapping must stay safe even for values the HTTP
// server would have refused.
//
// Checks on upstreamRequestHeaders(client, options):
//   * no hop-by-hop field, none named in the client's Connection header, no
//     Host, Content-Length or Expect;
//   * with options.authorization: exactly one Authorization, with that value;
//     without: at most one, and only when the client sent one (its first);
//   * exactly one X-Request-Id (the given id) when one is given;
//   * with identity_encoding: exactly one Accept-Encoding, "identity";
//   * every output field comes from the input or from the options, and no
//     output value has a CR, LF or NUL that the input value did not have.
// Checks on clientResponseHeaders(upstream): no hop-by-hop, Content-Length,
// Transfer-Encoding or Connection-listed field; every field is an input field,
// in input order.
// isSafeHeaderValue(v) is exactly "v has no CR, LF, NUL".
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <string_view>

#include "proxy/headers.h"
#include "proxy/http_types.h"

namespace {

[[noreturn]] void die(const char* what, std::string_view detail) {
  std::fprintf(stderr, "headers_fuzz: %s: %.*s\n", what, static_cast<int>(detail.size()), detail.data());
  std::abort();
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

std::string_view trimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Lower-cased tokens of every Connection field.
std::set<std::string> connectionTokens(const wfp::HttpHeaders& headers) {
  std::set<std::string> out;
  for (const auto& h : headers) {
    if (lower(h.name) != "connection") continue;
    std::string_view rest = h.value;
    for (;;) {
      size_t comma = rest.find(',');
      std::string token = lower(trimOws(rest.substr(0, comma)));
      // An empty element ("a, , b" or a trailing comma) names nothing.
      if (!token.empty()) out.insert(token);
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return out;
}

bool hasCtl(std::string_view v) {
  return v.find('\r') != std::string_view::npos || v.find('\n') != std::string_view::npos ||
         v.find('\0') != std::string_view::npos;
}

bool containsField(const wfp::HttpHeaders& headers, const wfp::HttpHeader& field) {
  for (const auto& h : headers) {
    if (h.name == field.name && h.value == field.value) return true;
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t bits = data[0];
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);

  wfp::HttpHeaders input;
  while (!text.empty() && input.size() < 64) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) {
      input.push_back({std::string(line), ""});
    } else {
      input.push_back({std::string(line.substr(0, colon)), std::string(trimOws(line.substr(colon + 1)))});
    }
  }

  // isSafeHeaderValue is exactly "no CR, LF, NUL".
  for (const auto& h : input) {
    if (wfp::isSafeHeaderValue(h.value) == hasCtl(h.value)) die("isSafeHeaderValue disagrees", h.value);
  }

  wfp::UpstreamHeaderOptions options;
  if (bits & 1) options.authorization = "Bearer sk_fuzz_org_key";
  options.request_id = (bits & 2) ? "0123456789abcdef0123456789abcdef" : "";
  options.identity_encoding = (bits & 4) != 0;

  const std::set<std::string> listed = connectionTokens(input);
  const wfp::HttpHeaders up = wfp::upstreamRequestHeaders(input, options);

  size_t authorizations = 0, request_ids = 0, encodings = 0;
  for (const auto& h : up) {
    const std::string name = lower(h.name);
    if (wfp::isHopByHop(h.name)) die("hop-by-hop field sent upstream", h.name);
    if (name == "host" || name == "content-length" || name == "expect") die("framing field sent upstream", h.name);
    if (listed.count(name)) die("field named in Connection sent upstream", h.name);
    if (name == "authorization") {
      ++authorizations;
      if (options.authorization && h.value != *options.authorization) die("wrong Authorization", h.value);
      continue;
    }
    if (name == "x-request-id") {
      ++request_ids;
      if (h.value != options.request_id) die("X-Request-Id not replaced", h.value);
      continue;
    }
    if (name == "accept-encoding" && options.identity_encoding) {
      ++encodings;
      if (h.value != "identity") die("Accept-Encoding not identity", h.value);
      continue;
    }
    // Any other field is the client's, unchanged: no CR/LF/NUL was added.
    if (!containsField(input, h)) die("a field that was not in the input", h.name + ": " + h.value);
  }
  if (options.authorization && authorizations != 1) die("not exactly one Authorization", std::to_string(authorizations));
  if (!options.authorization) {
    bool client_had = false;
    for (const auto& h : input) {
      if (lower(h.name) == "authorization" && !listed.count("authorization")) client_had = true;
    }
    if (authorizations > (client_had ? 1u : 0u)) die("Authorization without one given", std::to_string(authorizations));
    // Forwarded as the client sent it: its first Authorization.
    for (const auto& h : up) {
      if (lower(h.name) != "authorization") continue;
      const std::string* first = wfp::findHeader(input, "authorization");
      if (!first || *first != h.value) die("Authorization is not the client's first", h.value);
    }
  }
  if (!options.request_id.empty() && request_ids != 1) die("not exactly one X-Request-Id", std::to_string(request_ids));
  if (options.identity_encoding && encodings != 1) die("not exactly one Accept-Encoding", std::to_string(encodings));
  for (const auto& h : up) {
    if (hasCtl(h.value) && !containsField(input, h)) die("CR/LF/NUL introduced in a value", h.name);
  }

  // The response direction.
  const wfp::HttpHeaders down = wfp::clientResponseHeaders(input);
  size_t next = 0;
  for (const auto& h : down) {
    const std::string name = lower(h.name);
    if (wfp::isHopByHop(h.name) || name == "content-length" || name == "transfer-encoding") {
      die("hop-by-hop or framing field sent to the client", h.name);
    }
    if (listed.count(name)) die("field named in Connection sent to the client", h.name);
    // In input order, unchanged.
    while (next < input.size() && !(input[next].name == h.name && input[next].value == h.value)) ++next;
    if (next == input.size()) die("response field reordered or changed", h.name);
    ++next;
  }

  // removeHeader leaves no field of that name.
  if (!input.empty()) {
    wfp::HttpHeaders copy = input;
    const std::string victim = input[bits % input.size()].name;
    wfp::removeHeader(copy, victim);
    for (const auto& h : copy) {
      if (lower(h.name) == lower(victim)) die("removeHeader left a field", h.name);
    }
  }
  return 0;
}
