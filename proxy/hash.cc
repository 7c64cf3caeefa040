#include "proxy/hash.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <xxhash.h>

#include <array>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace wfp {

namespace {
// Fetched once: EVP_sha256() makes EVP_Digest look the implementation up on
// every call (OpenSSL 3), which was a tenth of a cache hit's instructions.
const EVP_MD* sha256Md() {
  static EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  return md ? md : EVP_sha256();
}
}  // namespace

Sha256 sha256(std::string_view data) {
  // One context per thread, reused: EVP_Digest makes and frees one per call
  // (a sixth of hashing a request's input).
  struct CtxFree {
    void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
  };
  thread_local std::unique_ptr<EVP_MD_CTX, CtxFree> ctx(EVP_MD_CTX_new());
  Sha256 digest{};
  unsigned int size = 0;
  if (!ctx || EVP_DigestInit_ex(ctx.get(), sha256Md(), nullptr) != 1 ||
      EVP_DigestUpdate(ctx.get(), data.data(), data.size()) != 1 ||
      EVP_DigestFinal_ex(ctx.get(), digest.data(), &size) != 1 || size != digest.size()) {
    throw std::runtime_error("EVP_Digest(sha256) failed");  // broken libcrypto: not recoverable
  }
  return digest;
}

std::string toHex(const uint8_t* data, size_t size) {
  // Both digits of a byte at once, from a table of the 256 pairs.
  static constexpr std::array<char, 512> kPairs = [] {
    constexpr char kDigits[] = "0123456789abcdef";
    std::array<char, 512> t{};
    for (size_t b = 0; b < 256; ++b) {
      t[2 * b] = kDigits[b >> 4];
      t[2 * b + 1] = kDigits[b & 0x0f];
    }
    return t;
  }();
  std::string out(size * 2, '\0');
  char* p = out.data();
  for (size_t i = 0; i < size; ++i, p += 2) std::memcpy(p, &kPairs[2 * size_t{data[i]}], 2);
  return out;
}

std::string sha256Hex(std::string_view data) { return toHex(sha256(data)); }

bool constantTimeEqual(const Sha256& a, const Sha256& b) {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

// Debian's libxxhash (the reference implementation): the same values as the
// hand-written XXH64 it replaces, so Redis values written by either still
// read (tests/unit/hash_test.cc, CacheEntry.TheFormatIsPinned).
uint64_t xxh64(std::string_view data) { return XXH64(data.data(), data.size(), 0); }

}  // namespace wfp
