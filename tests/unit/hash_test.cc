#include "proxy/hash.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace wfp {
namespace {

// FIPS 180-2's examples; the same again on a second call (the context is
// reused per thread).
TEST(Sha256, KnownVectorsEveryCall) {
  for (int round = 0; round < 2; ++round) {
    EXPECT_EQ(sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_EQ(sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_EQ(sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  }
}

TEST(Hex, EveryByteValue) {
  uint8_t bytes[256];
  std::string expected;
  for (int b = 0; b < 256; ++b) {
    bytes[b] = static_cast<uint8_t>(b);
    expected += "0123456789abcdef"[b >> 4];
    expected += "0123456789abcdef"[b & 0x0f];
  }
  EXPECT_EQ(toHex(bytes, sizeof bytes), expected);
  EXPECT_EQ(toHex(bytes, 0), "");
}

// XXH64 with seed 0. The first four are xxHash's and python-xxhash's published
// examples; the rest were computed with libxxhash 0.8.1 and with the
// hand-written XXH64 the proxy had before it, which agreed on every one (and
// on 90,000 random inputs of 0-600 bytes at unaligned offsets). Checksums
// stored in Redis by either must keep reading.
TEST(Xxh64, KnownVectors) {
  EXPECT_EQ(xxh64(""), 0xEF46DB3751D8E999ull);
  EXPECT_EQ(xxh64("a"), 0xD24EC4F1A98C6E5Bull);
  EXPECT_EQ(xxh64("abc"), 0x44BC2CF5AD770999ull);
  EXPECT_EQ(xxh64("Nobody inspects the spammish repetition"), 0xFBCEA83C8A378BF1ull);
  EXPECT_EQ(xxh64("The quick brown fox jumps over the lazy dog"), 0x0B242D361FDA71BCull);
  EXPECT_EQ(xxh64(std::string_view()), 0xEF46DB3751D8E999ull);  // a null, empty view
}

// Lengths around each of XXH64's paths: the 1-byte, 4-byte and 8-byte tails,
// and the 32-byte stripes.
TEST(Xxh64, EveryPathOfTheAlgorithm) {
  std::string bytes(256, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7 + 1);
  const struct {
    size_t size;
    uint64_t sum;
  } kVectors[] = {
      {4, 0x22EDA2CF6AF4C124ull},   {7, 0x34084D91A233A751ull},   {8, 0xC6F1803A5E0B3222ull},
      {12, 0x9178B724DCE384C0ull},  {31, 0x6AB1C40E29F50073ull},  {32, 0x5A0756FBE9ECD3D1ull},
      {33, 0xDC50CDC37BB9C183ull},  {63, 0x10DD94885C71894Aull},  {64, 0x90083DA9CDB9D795ull},
      {100, 0xD248BFC5208B0B16ull}, {255, 0x5DA8139D7ACF3995ull},
  };
  for (const auto& v : kVectors) {
    EXPECT_EQ(xxh64(std::string_view(bytes).substr(0, v.size)), v.sum) << v.size << " bytes";
  }
}

TEST(Xxh64, DependsOnTheBytesNotTheirAddress) {
  std::string a = "x0123456789abcdef0123456789abcdef0123456789";
  std::string b = a.substr(1);
  EXPECT_EQ(xxh64(std::string_view(a).substr(1)), xxh64(b));  // unaligned view, same bytes
}

}  // namespace
}  // namespace wfp
