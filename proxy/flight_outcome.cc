#include "proxy/flight_outcome.h"

#include <cstdlib>
#include <memory>

namespace wfp {

std::string encodeOutcome(const FlightOutcome& o) {
  if (o.rejected == FlightOutcome::Rejected::RateLimited) return "Q" + std::to_string(o.retry_after_s);
  if (!o.response) return o.failure == UpstreamFailure::Timeout ? "T" : "U";
  std::string out = o.stored ? "RS" : "R-";
  out += encodeCachedResponse(*o.response);
  return out;
}

std::optional<FlightOutcome> decodeOutcome(std::string_view m) {
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
  if (m.size() >= 2 && m[0] == 'Q') {
    o.rejected = FlightOutcome::Rejected::RateLimited;
    o.retry_after_s = std::atoi(std::string(m.substr(1)).c_str());
    return o;
  }
  if (m.size() < 2 || m[0] != 'R') return std::nullopt;
  auto entry = decodeCachedResponse(m.substr(2));
  if (!entry) return std::nullopt;
  o.stored = m[1] == 'S';
  o.response = std::make_shared<const CachedResponse>(std::move(*entry));
  return o;
}

}  // namespace wfp
