#include "proxy/flight_outcome.h"

#include <algorithm>
#include <memory>

namespace wfp {

namespace {

// "T", "U", "Q<retry-after seconds>", or "R" + ('S' stored | '-' not) + an
// encoded entry (encodeCachedResponse).
template <class DecodeEntry>
std::optional<FlightOutcome> decode(std::string_view m, DecodeEntry&& decode_entry) {
  FlightOutcome o;
  o.remote = true;
  if (m == "T") {
    o.failure = UpstreamFailure::Timeout;
    return o;
  }
  if (m == "U") {
    o.failure = UpstreamFailure::Unavailable;
    return o;
  }
  if (!m.empty() && m[0] == 'Q') {
    // Digits only, 1 to 5 of them, at most kMaxOutcomeRetryAfterS: no sign,
    // no space, no overflow.
    std::string_view digits = m.substr(1);
    if (digits.empty() || digits.size() > 5) return std::nullopt;
    int value = 0;
    for (char c : digits) {
      if (c < '0' || c > '9') return std::nullopt;
      value = value * 10 + (c - '0');
    }
    if (value > kMaxOutcomeRetryAfterS) return std::nullopt;
    o.rejected = FlightOutcome::Rejected::RateLimited;
    o.retry_after_s = value;
    return o;
  }
  if (m.size() < 2 || m[0] != 'R' || (m[1] != 'S' && m[1] != '-')) return std::nullopt;
  auto entry = decode_entry(m.substr(2));
  if (!entry) return std::nullopt;
  o.stored = m[1] == 'S';
  o.response = std::make_shared<const CachedResponse>(std::move(*entry));
  return o;
}

}  // namespace

std::string encodeOutcome(const FlightOutcome& o) {
  if (o.rejected == FlightOutcome::Rejected::RateLimited) {
    std::string out(1, 'Q');  // appended, not "Q" + …: GCC 12 -O2 warns falsely (-Wrestrict) on that form
    out += std::to_string(std::clamp(o.retry_after_s, 0, kMaxOutcomeRetryAfterS));
    return out;
  }
  if (!o.response) return o.failure == UpstreamFailure::Timeout ? "T" : "U";
  std::string out = o.stored ? "RS" : "R-";
  out += encodeCachedResponse(*o.response);
  return out;
}

std::optional<FlightOutcome> decodeOutcome(std::string_view m, int64_t now_ms) {
  return decode(m, [now_ms](std::string_view b) { return decodeCachedResponse(b, now_ms); });
}

std::optional<FlightOutcome> decodeOutcome(std::string_view m) {
  return decode(m, [](std::string_view b) { return decodeCachedResponse(b); });
}

}  // namespace wfp
