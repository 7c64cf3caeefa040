// SHA-256 and constant-time comparison (OpenSSL libcrypto); XXH64 (libxxhash).
#pragma once

#include <string>
#include <string_view>

#include "proxy/config.h"

namespace wfp {

Sha256 sha256(std::string_view data);
std::string toHex(const uint8_t* data, size_t size);
inline std::string toHex(const Sha256& digest) { return toHex(digest.data(), digest.size()); }
std::string sha256Hex(std::string_view data);
// Compares without data-dependent early exit (CRYPTO_memcmp).
bool constantTimeEqual(const Sha256& a, const Sha256& b);

// XXH64 (seed 0): a fast checksum against damaged or foreign bytes, not
// against tampering (cache values in Redis; ~20x cheaper than SHA-256).
uint64_t xxh64(std::string_view data);

}  // namespace wfp
