// W3C Trace Context: the trace id of a request's `traceparent` header, for
// the access log. The header itself is forwarded unchanged (headers.cc); this
// only reads it.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "proxy/http_types.h"

namespace wfp {

// 16 bytes, held without allocating (a queued request keeps it). All zero:
// none (the format forbids an all-zero trace id, so nothing valid is lost).
struct TraceId {
  std::array<uint8_t, 16> bytes{};

  bool valid() const;
  std::string hex() const;  // 32 lowercase hex digits; "" when not valid()
};

// The trace id of one `traceparent` value: version (2 hex, not "ff"), '-',
// trace id (32 lowercase hex, not all zero), '-', parent id (16 lowercase
// hex, not all zero), '-', flags (2 hex). Version 00 is exactly that long; a
// later version may go on after another '-'. Anything else: no trace id.
TraceId parseTraceparent(std::string_view value);
// The trace id of the request's only `traceparent` header (two or more: none,
// as the format says a receiver must treat them).
TraceId traceIdOf(const HttpHeaders& headers);

}  // namespace wfp
