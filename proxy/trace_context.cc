#include "proxy/trace_context.h"

#include "proxy/text.h"

namespace wfp {

namespace {

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // upper case is not allowed in traceparent
}

bool lowerHex(std::string_view s) {
  for (char c : s) {
    if (hexValue(c) < 0) return false;
  }
  return true;
}

bool allZero(std::string_view s) { return s.find_first_not_of('0') == std::string_view::npos; }

}  // namespace

bool TraceId::valid() const {
  for (uint8_t b : bytes) {
    if (b != 0) return true;
  }
  return false;
}

std::string TraceId::hex() const {
  if (!valid()) return {};
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(32, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 0xf];
  }
  return out;
}

TraceId parseTraceparent(std::string_view v) {
  // Surrounding optional whitespace is the header's, not the value's.
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  constexpr size_t kLength = 55;  // 2 + 1 + 32 + 1 + 16 + 1 + 2
  if (v.size() < kLength || v[2] != '-' || v[35] != '-' || v[52] != '-') return {};
  std::string_view version = v.substr(0, 2), trace = v.substr(3, 32), parent = v.substr(36, 16),
                   flags = v.substr(53, 2);
  if (!lowerHex(version) || version == "ff" || !lowerHex(trace) || !lowerHex(parent) || !lowerHex(flags)) return {};
  if (version == "00" ? v.size() != kLength : (v.size() > kLength && v[kLength] != '-')) return {};
  if (allZero(trace) || allZero(parent)) return {};
  TraceId id;
  for (size_t i = 0; i < id.bytes.size(); ++i) {
    id.bytes[i] = static_cast<uint8_t>(hexValue(trace[2 * i]) << 4 | hexValue(trace[2 * i + 1]));
  }
  return id;
}

TraceId traceIdOf(const HttpHeaders& headers) {
  const std::string* found = nullptr;
  for (const auto& [name, value] : headers) {
    if (!equalsIgnoreCase(name, "traceparent")) continue;
    if (found) return {};
    found = &value;
  }
  return found ? parseTraceparent(*found) : TraceId{};
}

}  // namespace wfp
