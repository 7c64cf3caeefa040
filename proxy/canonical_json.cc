// Canonical JSON (docs/http.md). See canonical_json.h for the canonical form.
//
// One pass over the input, writing the canonical form straight into the
// output string:
//
//   * The parser is iterative (an explicit stack of open containers), so
//     nesting costs no native stack and is bounded only by max_depth.
//   * Object members are written in input order. Each member's span in the
//     output is recorded; when an object closes and its keys were not already
//     strictly increasing (the common case for small request bodies is that
//     they are), the members are sorted, duplicates dropped keeping the last
//     (JSON.parse semantics), and the object's span is rewritten in place.
//   * Working memory (member spans, the container stack, sort buffers) lives
//     in a per-thread scratch area reused across calls, so a typical call
//     allocates only its output string.
//
// Number format (a function of the exact decimal value only, never of its
// spelling): write the value as ±D × 10^E where D is a digit string with no
// leading or trailing zeros (n digits) and let P = n + E (the position of the
// decimal point relative to D's first digit). Then
//   * zero (0, -0, 0.000, 0e99, ...)        → "0"
//   * 0 <= E <= 20                          → D followed by E zeros   (integer)
//   * E < 0 and P > 0                       → D with a '.' after P digits
//   * E < 0 and -6 < P <= 0                 → "0." then -P zeros then D
//   * otherwise                             → d[.ddd]e±X, X = P - 1   (scientific)
// with a leading '-' for negative values. Integers written out in full keep
// every digit (E only counts trailing zeros), so 2^53 + 1 stays exact. For
// the short numbers a double can hold this matches JavaScript's
// Number.prototype.toString except that integers with up to 20 trailing zeros
// stay in integer form. Appending at most 20 zeros bounds how much larger the
// output can be than the input. Values whose scientific exponent X exceeds
// 10^9 in magnitude are rejected ("number out of range"); RFC 8259 §9 allows
// an implementation to limit the range of numbers.
//
// Errors are one short sentence ending "at offset N" (docs/http.md: the 400 says
// where parsing failed). N is the offending byte; for an unterminated string,
// the string's opening quote; for a number out of range, the number's start.
// At most one byte of the input is quoted (printable ASCII as 'x', anything
// else as byte 0xNN), since the message reaches clients and logs.
#include "proxy/canonical_json.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace wfp {
namespace {

// ---------------------------------------------------------------------------
// Byte classes

// Bytes that end a run of plain string content: '"', '\\', C0 controls and
// every non-ASCII byte (which goes through UTF-8 validation).
constexpr bool isStringStop(unsigned char c) { return c == '"' || c == '\\' || c < 0x20 || c >= 0x80; }

struct StopTable {
  bool stop[256];
  constexpr StopTable() : stop() {
    for (int c = 0; c < 256; ++c) stop[c] = isStringStop(static_cast<unsigned char>(c));
  }
};
constexpr StopTable kStop;

uint64_t load8(const unsigned char* p) {
  uint64_t x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

// Whether any of eight bytes is a string stop byte (SWAR; false positives
// are harmless, the caller then looks byte by byte).
bool anyStringStop(uint64_t x) {
  constexpr uint64_t k01 = 0x0101010101010101u, k80 = 0x8080808080808080u;
  auto hasZero = [](uint64_t v) { return (v - k01) & ~v & k80; };
  return ((x & k80) | ((x - k01 * 0x20) & ~x & k80) | hasZero(x ^ (k01 * '"')) | hasZero(x ^ (k01 * '\\'))) != 0;
}

constexpr bool isWs(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
constexpr bool isDigit(unsigned char c) { return c >= '0' && c <= '9'; }

int hexValue(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

constexpr char kHex[] = "0123456789abcdef";

// Length of the well-formed UTF-8 sequence starting at s[0] (RFC 3629 §4:
// no overlongs, no encoded surrogates, nothing above U+10FFFF), 0 if it is
// ill-formed, or -1 if the input ends before the sequence does.
int utf8Length(const unsigned char* s, size_t avail) {
  const unsigned char c = s[0];
  int len;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;       // overlong
    else if (c == 0xED) hi = 0x9F;  // U+D800..U+DFFF
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;       // overlong
    else if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return 0;
  }
  if (avail < 2) return -1;
  if (s[1] < lo || s[1] > hi) return 0;
  for (int i = 2; i < len; ++i) {
    if (static_cast<size_t>(i) >= avail) return -1;
    if ((s[i] & 0xC0) != 0x80) return 0;
  }
  return len;
}

// The canonical content for one code point, written to `buf` (at most 6
// bytes); returns how many. The one escaping rule: '"', '\\' and C0
// controls escaped (short forms where JSON has them, else \u00xx), lone
// surrogates as \udxxx, everything else as raw UTF-8.
size_t encodeCodePoint(uint32_t cp, char* buf) {
  if (cp < 0x80) {
    const char c = static_cast<char>(cp);
    if (cp >= 0x20 && c != '"' && c != '\\') {
      buf[0] = c;
      return 1;
    }
    buf[0] = '\\';
    switch (c) {
      case '"': buf[1] = '"'; return 2;
      case '\\': buf[1] = '\\'; return 2;
      case '\b': buf[1] = 'b'; return 2;
      case '\f': buf[1] = 'f'; return 2;
      case '\n': buf[1] = 'n'; return 2;
      case '\r': buf[1] = 'r'; return 2;
      case '\t': buf[1] = 't'; return 2;
      default:
        buf[1] = 'u';
        buf[2] = '0';
        buf[3] = '0';
        buf[4] = kHex[cp >> 4];
        buf[5] = kHex[cp & 0xF];
        return 6;
    }
  }
  if (cp < 0x800) {
    buf[0] = static_cast<char>(0xC0 | (cp >> 6));
    buf[1] = static_cast<char>(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp >= 0xD800 && cp <= 0xDFFF) {  // lone surrogate: stays an escape
    buf[0] = '\\';
    buf[1] = 'u';
    buf[2] = 'd';
    buf[3] = kHex[(cp >> 8) & 0xF];
    buf[4] = kHex[(cp >> 4) & 0xF];
    buf[5] = kHex[cp & 0xF];
    return 6;
  }
  if (cp < 0x10000) {
    buf[0] = static_cast<char>(0xE0 | (cp >> 12));
    buf[1] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    buf[2] = static_cast<char>(0x80 | (cp & 0x3F));
    return 3;
  }
  buf[0] = static_cast<char>(0xF0 | (cp >> 18));
  buf[1] = static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
  buf[2] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
  buf[3] = static_cast<char>(0x80 | (cp & 0x3F));
  return 4;
}

// Generalized UTF-8 (WTF-8): UTF-8 that also encodes surrogates, as 3 bytes.
void appendWtf8(std::string& to, uint32_t cp) {
  if (cp < 0x80) {
    to.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    to.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    to.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    to.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    to.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    to.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    to.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    to.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    to.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    to.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// ---------------------------------------------------------------------------
// Working memory

struct Member {
  size_t begin;      // output offset of the key's opening quote
  size_t key_len;    // canonical key bytes between the quotes
  size_t end;        // output offset just past the value
  bool key_escaped;  // the canonical key contains a backslash escape
};

struct Frame {
  size_t content_start;  // output offset just past '{' or '['
  size_t member_base;    // index in Scratch::members of this object's first member
  bool is_object;
  bool in_order;  // keys so far strictly increasing: nothing to sort
};

struct SortEntry {
  std::string_view key;  // the key's decoded bytes
  size_t index;          // input order, the tie-break that makes the last duplicate win
};

struct Scratch {
  std::vector<Member> members;
  std::vector<Frame> frames;
  std::vector<SortEntry> entries;
  std::vector<size_t> decoded_spans;  // (offset, length) pairs into `decoded`
  std::string decoded;                // decoded bytes of escaped keys, during a sort
  std::string rebuilt;                // an object's sorted members, during a sort

  // Called after each use: keep the buffers a typical body needs, give back
  // what an unusually large one grew.
  void trim() {
    constexpr size_t kKeepBytes = 64 * 1024;
    if (members.capacity() * sizeof(Member) > kKeepBytes) std::vector<Member>().swap(members);
    if (frames.capacity() * sizeof(Frame) > kKeepBytes) std::vector<Frame>().swap(frames);
    if (entries.capacity() * sizeof(SortEntry) > kKeepBytes) std::vector<SortEntry>().swap(entries);
    if (decoded_spans.capacity() * sizeof(size_t) > kKeepBytes) std::vector<size_t>().swap(decoded_spans);
    if (decoded.capacity() > kKeepBytes) std::string().swap(decoded);
    if (rebuilt.capacity() > kKeepBytes) std::string().swap(rebuilt);
  }
};

// Maps the canonical encoding of a key back to the bytes it stands for, so
// that keys sort by their decoded UTF-8. A lone surrogate maps to its
// generalized UTF-8 (WTF-8) form, which places it between U+D7FF and U+E000;
// the mapping is injective, so equal decoded bytes mean equal keys.
void decodeCanonicalKey(std::string_view key, std::string& to) {
  size_t i = 0;
  while (i < key.size()) {
    if (key[i] != '\\') {
      to.push_back(key[i++]);  // raw bytes are their own UTF-8
    } else {
      appendWtf8(to, nextCanonicalCodePoint(key, i));
    }
  }
}

// memcmp order of the bytes, a prefix first.
int compareKeys(std::string_view a, std::string_view b) {
  const size_t n = std::min(a.size(), b.size());
  const int c = n == 0 ? 0 : std::memcmp(a.data(), b.data(), n);
  if (c != 0) return c;
  return a.size() < b.size() ? -1 : a.size() > b.size() ? 1 : 0;
}

// ---------------------------------------------------------------------------
// The parser

class Canonicalizer {
 public:
  Canonicalizer(std::string_view in, size_t max_depth, Scratch& scratch, CanonicalJson& result)
      : s_(reinterpret_cast<const unsigned char*>(in.data())),
        n_(in.size()),
        max_depth_(max_depth),
        scratch_(scratch),
        result_(result),
        out_(result.canonical) {}

  bool run();

 private:
  bool parseValue(bool& opened);
  bool parseMemberKey();    // '"key"' ws ':' in an object
  bool afterValue(bool& done);
  bool parseString(bool* escaped);
  bool parseEscape(size_t quote, bool* escaped);
  bool parseNumber();
  bool parseLiteral(const char* word, size_t len);
  void finishObject(const Frame& frame);

  void appendCodePoint(uint32_t cp, bool* escaped);
  void appendDigits(size_t from, size_t to, size_t int_begin, size_t int_len, size_t frac_begin);

  // Output: written through w_ into out_, whose size is the capacity in use
  // (trimmed at the end); offsets into it stay valid when it grows.
  size_t size() const { return static_cast<size_t>(w_ - out_.data()); }
  void ensure(size_t k) {
    if (static_cast<size_t>(wend_ - w_) < k) grow(k);
  }
  [[gnu::noinline]] void grow(size_t k) {
    const size_t used = size();
    out_.resize(std::max(out_.size() * 2, used + k));
    w_ = out_.data() + used;
    wend_ = out_.data() + out_.size();
  }
  void put(char c) {
    ensure(1);
    *w_++ = c;
  }
  void put(const char* p, size_t k) {
    ensure(k);
    std::memcpy(w_, p, k);
    w_ += k;
  }
  void fill(size_t k, char c) {
    ensure(k);
    std::memset(w_, c, k);
    w_ += k;
  }
  void truncate(size_t offset) { w_ = out_.data() + offset; }

  void skipWs() {
    while (pos_ < n_ && isWs(s_[pos_])) ++pos_;
  }
  bool fail(size_t offset, std::string what);
  bool unexpected(size_t offset);  // "unexpected character 'x'" / "unexpected end of input"
  static std::string describeByte(unsigned char c);

  const unsigned char* s_;
  size_t n_;
  size_t pos_ = 0;
  size_t max_depth_;
  Scratch& scratch_;
  CanonicalJson& result_;
  std::string& out_;
  char* w_ = nullptr;
  char* wend_ = nullptr;
};

std::string Canonicalizer::describeByte(unsigned char c) {
  if (c >= 0x20 && c < 0x7F) return std::string("character '") + static_cast<char>(c) + "'";
  std::string s = "byte 0x";
  s.push_back(kHex[c >> 4]);
  s.push_back(kHex[c & 0xF]);
  return s;
}

bool Canonicalizer::fail(size_t offset, std::string what) {
  result_.ok = false;
  result_.error_offset = offset;
  what += " at offset ";
  what += std::to_string(offset);
  result_.error = std::move(what);
  return false;
}

bool Canonicalizer::unexpected(size_t offset) {
  if (offset >= n_) return fail(n_, "unexpected end of input");
  return fail(offset, "unexpected " + describeByte(s_[offset]));
}

bool Canonicalizer::run() {
  skipWs();
  if (pos_ == n_) {  // empty or whitespace-only body: the input {} (docs/http.md)
    out_ = "{}";
    return true;
  }
  if (s_[pos_] != '{') return fail(pos_, "expected a JSON object");
  // The output is rarely longer than the input (only numbers can grow).
  out_.resize(n_ + 32);
  w_ = out_.data();
  wend_ = w_ + out_.size();

  for (;;) {
    bool opened = false;
    if (!parseValue(opened)) return false;
    if (opened) continue;  // a container's first value comes next
    bool done = false;
    if (!afterValue(done)) return false;
    if (done) break;
  }
  skipWs();
  if (pos_ != n_) return unexpected(pos_);
  out_.resize(size());
  // Don't let a body padded with whitespace pin its size for the request's life.
  if (out_.capacity() > 2 * out_.size() + 4096) out_.shrink_to_fit();
  return true;
}

// Parses one value. A non-empty container is only opened (for an object,
// up to its first ':'), setting `opened`: its contents are the following
// parseValue() calls, so nesting never recurses.
bool Canonicalizer::parseValue(bool& opened) {
  skipWs();
  if (pos_ >= n_) return unexpected(pos_);
  const unsigned char c = s_[pos_];
  switch (c) {
    case '{':
    case '[': {
      auto& frames = scratch_.frames;
      if (frames.size() >= max_depth_) return fail(pos_, "nesting deeper than " + std::to_string(max_depth_));
      ++pos_;
      put(static_cast<char>(c));
      frames.push_back(Frame{size(), scratch_.members.size(), c == '{', true});
      skipWs();
      if (pos_ < n_ && s_[pos_] == (c == '{' ? '}' : ']')) {
        // Empty container: complete; afterValue() continues with its parent.
        ++pos_;
        put(c == '{' ? '}' : ']');
        frames.pop_back();
        return true;
      }
      opened = true;
      return c == '{' ? parseMemberKey() : true;
    }
    case '"': return parseString(nullptr);
    case 't': return parseLiteral("true", 4);
    case 'f': return parseLiteral("false", 5);
    case 'n': return parseLiteral("null", 4);
    default:
      if (c == '-' || isDigit(c)) return parseNumber();
      return unexpected(pos_);
  }
}

bool Canonicalizer::parseMemberKey() {
  skipWs();
  if (pos_ >= n_ || s_[pos_] != '"') return unexpected(pos_);
  Frame& frame = scratch_.frames.back();
  auto& members = scratch_.members;
  const size_t begin = size();
  bool escaped = false;
  if (!parseString(&escaped)) return false;
  const size_t key_len = size() - begin - 2;
  if (frame.in_order && members.size() > frame.member_base) {
    const Member& prev = members.back();
    if (prev.key_escaped || escaped) {
      frame.in_order = false;  // escapes change the byte order: let the sort decide
    } else {
      const std::string_view a(out_.data() + prev.begin + 1, prev.key_len);
      const std::string_view b(out_.data() + begin + 1, key_len);
      if (compareKeys(a, b) >= 0) frame.in_order = false;
    }
  }
  members.push_back(Member{begin, key_len, 0, escaped});
  skipWs();
  if (pos_ >= n_ || s_[pos_] != ':') return unexpected(pos_);
  ++pos_;
  put(':');
  return true;
}

// After a complete value: close every container that ends here, then either
// position for the next value (after a ',') or report that the top-level
// object is complete.
bool Canonicalizer::afterValue(bool& done) {
  auto& frames = scratch_.frames;
  for (;;) {
    if (frames.empty()) {
      done = true;
      return true;
    }
    Frame& frame = frames.back();
    if (frame.is_object) scratch_.members.back().end = size();
    skipWs();
    if (pos_ >= n_) return unexpected(pos_);
    const unsigned char c = s_[pos_];
    if (c == ',') {
      ++pos_;
      put(',');
      return frame.is_object ? parseMemberKey() : true;
    }
    if (c == (frame.is_object ? '}' : ']')) {
      ++pos_;
      if (frame.is_object) finishObject(frame);
      put(static_cast<char>(c));
      frames.pop_back();
      continue;
    }
    return unexpected(pos_);
  }
}

// Sorts an object's members by decoded key, keeps the last of each run of
// equal keys, and rewrites the object's content in the output.
void Canonicalizer::finishObject(const Frame& frame) {
  auto& members = scratch_.members;
  if (frame.in_order) {
    members.resize(frame.member_base);
    return;
  }
  const size_t count = members.size() - frame.member_base;
  const Member* m = members.data() + frame.member_base;

  // Decoded bytes of escaped keys go to a side buffer; the others are their
  // own decoded bytes. Views are taken only once the buffer stops growing.
  auto& decoded = scratch_.decoded;
  auto& spans = scratch_.decoded_spans;
  decoded.clear();
  spans.clear();
  for (size_t i = 0; i < count; ++i) {
    if (!m[i].key_escaped) continue;
    const size_t off = decoded.size();
    decodeCanonicalKey(std::string_view(out_.data() + m[i].begin + 1, m[i].key_len), decoded);
    spans.push_back(off);
    spans.push_back(decoded.size() - off);
  }
  auto& entries = scratch_.entries;
  entries.clear();
  size_t next_span = 0;
  for (size_t i = 0; i < count; ++i) {
    std::string_view key;
    if (m[i].key_escaped) {
      key = std::string_view(decoded.data() + spans[next_span], spans[next_span + 1]);
      next_span += 2;
    } else {
      key = std::string_view(out_.data() + m[i].begin + 1, m[i].key_len);
    }
    entries.push_back(SortEntry{key, i});
  }
  std::sort(entries.begin(), entries.end(), [](const SortEntry& a, const SortEntry& b) {
    const int c = compareKeys(a.key, b.key);
    return c != 0 ? c < 0 : a.index < b.index;
  });

  auto& rebuilt = scratch_.rebuilt;
  rebuilt.clear();
  for (size_t i = 0; i < count; ++i) {
    if (i + 1 < count && entries[i + 1].key == entries[i].key) continue;  // a later duplicate wins
    const Member& member = m[entries[i].index];
    if (!rebuilt.empty()) rebuilt.push_back(',');
    rebuilt.append(out_.data() + member.begin, member.end - member.begin);
  }
  truncate(frame.content_start);
  put(rebuilt.data(), rebuilt.size());
  members.resize(frame.member_base);
}

// A string at pos_ (on its opening quote), re-encoded into the output.
// *escaped (if given) is set when the canonical form contains an escape.
bool Canonicalizer::parseString(bool* escaped) {
  const size_t quote = pos_;
  ++pos_;
  put('"');
  for (;;) {
    // A run of bytes that are copied as they are: printable ASCII and
    // well-formed UTF-8.
    const size_t run = pos_;
    size_t i = pos_;
    for (;;) {
      while (i + 8 <= n_ && !anyStringStop(load8(s_ + i))) i += 8;
      while (i < n_ && !kStop.stop[s_[i]]) ++i;
      if (i >= n_ || s_[i] < 0x80) break;
      const int len = utf8Length(s_ + i, n_ - i);
      if (len < 0) return fail(quote, "unterminated string");
      if (len == 0) return fail(i, "invalid UTF-8");
      i += static_cast<size_t>(len);
    }
    pos_ = i;
    put(reinterpret_cast<const char*>(s_) + run, pos_ - run);
    if (pos_ >= n_) return fail(quote, "unterminated string");
    const unsigned char c = s_[pos_];
    if (c == '"') {
      ++pos_;
      put('"');
      return true;
    }
    if (c == '\\') {
      if (!parseEscape(quote, escaped)) return false;
      continue;
    }
    return fail(pos_, "unescaped control " + describeByte(c) + " in string");
  }
}

bool Canonicalizer::parseEscape(size_t quote, bool* escaped) {
  if (pos_ + 1 >= n_) return fail(quote, "unterminated string");
  const unsigned char e = s_[pos_ + 1];
  uint32_t simple;  // the character a two-byte escape stands for
  switch (e) {
    case '"': simple = '"'; break;
    case '\\': simple = '\\'; break;
    case '/': simple = '/'; break;
    case 'b': simple = '\b'; break;
    case 'f': simple = '\f'; break;
    case 'n': simple = '\n'; break;
    case 'r': simple = '\r'; break;
    case 't': simple = '\t'; break;
    case 'u': simple = 0; break;
    default: return fail(pos_ + 1, "invalid escape " + describeByte(e));
  }
  if (e != 'u') {
    appendCodePoint(simple, escaped);  // re-encoded by the one rule ("\/" is "/")
    pos_ += 2;
    return true;
  }
  // \uXXXX
  auto hex4 = [this](size_t at, uint32_t& cp) -> int {  // 1 ok, 0 bad digit at `at+k`, -1 truncated
    cp = 0;
    for (size_t k = 0; k < 4; ++k) {
      if (at + k >= n_) return -1;
      const int v = hexValue(s_[at + k]);
      if (v < 0) return 0;
      cp = cp * 16 + static_cast<uint32_t>(v);
    }
    return 1;
  };
  uint32_t cp;
  const int r = hex4(pos_ + 2, cp);
  if (r < 0) return fail(quote, "unterminated string");
  if (r == 0) {
    size_t bad = pos_ + 2;
    while (hexValue(s_[bad]) >= 0) ++bad;
    return fail(bad, "invalid " + describeByte(s_[bad]) + " in \\u escape");
  }
  pos_ += 6;
  if (cp >= 0xD800 && cp <= 0xDBFF && pos_ + 1 < n_ && s_[pos_] == '\\' && s_[pos_ + 1] == 'u') {
    uint32_t low;
    if (hex4(pos_ + 2, low) == 1 && low >= 0xDC00 && low <= 0xDFFF) {
      cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
      pos_ += 6;
    }
    // Otherwise the high surrogate is lone; the next escape is read on its own.
  }
  appendCodePoint(cp, escaped);
  return true;
}

void Canonicalizer::appendCodePoint(uint32_t cp, bool* escaped) {
  char buf[6];
  const size_t k = encodeCodePoint(cp, buf);
  if (buf[0] == '\\' && escaped != nullptr) *escaped = true;
  put(buf, k);
}

bool Canonicalizer::parseLiteral(const char* word, size_t len) {
  for (size_t i = 0; i < len; ++i) {
    if (pos_ + i >= n_ || s_[pos_ + i] != static_cast<unsigned char>(word[i])) return unexpected(pos_ + i);
  }
  put(word, len);
  pos_ += len;
  return true;
}

// Appends digits [from, to) of the concatenation of the integer digits
// (s_[int_begin], int_len of them) and the fraction digits (from frac_begin).
void Canonicalizer::appendDigits(size_t from, size_t to, size_t int_begin, size_t int_len, size_t frac_begin) {
  const char* s = reinterpret_cast<const char*>(s_);
  if (from < int_len) {
    const size_t end = std::min(to, int_len);
    put(s + int_begin + from, end - from);
    from = end;
  }
  if (from < to) put(s + frac_begin + (from - int_len), to - from);
}

bool Canonicalizer::parseNumber() {
  const size_t start = pos_;
  const bool negative = s_[pos_] == '-';
  if (negative) ++pos_;
  // Integer part: "0" or a non-zero digit followed by digits.
  if (pos_ >= n_ || !isDigit(s_[pos_])) return unexpected(pos_);
  const size_t int_begin = pos_;
  if (s_[pos_] == '0') {
    ++pos_;
  } else {
    while (pos_ < n_ && isDigit(s_[pos_])) ++pos_;
  }
  const size_t int_len = pos_ - int_begin;
  size_t frac_begin = pos_, frac_len = 0;
  if (pos_ < n_ && s_[pos_] == '.') {
    ++pos_;
    if (pos_ >= n_ || !isDigit(s_[pos_])) return unexpected(pos_);
    frac_begin = pos_;
    while (pos_ < n_ && isDigit(s_[pos_])) ++pos_;
    frac_len = pos_ - frac_begin;
  }
  // Exponent, saturated well beyond the accepted range (no overflow).
  int64_t written_exp = 0;
  if (pos_ < n_ && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
    ++pos_;
    bool exp_negative = false;
    if (pos_ < n_ && (s_[pos_] == '+' || s_[pos_] == '-')) exp_negative = s_[pos_++] == '-';
    if (pos_ >= n_ || !isDigit(s_[pos_])) return unexpected(pos_);
    constexpr int64_t kSaturate = 100000000000000000;  // 1e17
    while (pos_ < n_ && isDigit(s_[pos_])) {
      if (written_exp < kSaturate) written_exp = written_exp * 10 + (s_[pos_] - '0');
      ++pos_;
    }
    if (exp_negative) written_exp = -written_exp;
  }

  // Significant digits: the concatenation int ++ frac without leading and
  // trailing zeros, positions [first, last] of total.
  const size_t total = int_len + frac_len;
  auto digit = [&](size_t i) { return i < int_len ? s_[int_begin + i] : s_[frac_begin + (i - int_len)]; };
  size_t first = 0;
  while (first < total && digit(first) == '0') ++first;
  if (first == total) {
    put('0');  // zero in any spelling, including -0
    return true;
  }
  size_t last = total - 1;
  while (digit(last) == '0') --last;

  // value = D × 10^exp, D = digits [first, last] (n of them); point = n + exp.
  const int64_t n = static_cast<int64_t>(last - first + 1);
  const int64_t exp = written_exp - static_cast<int64_t>(frac_len) + static_cast<int64_t>(total - 1 - last);
  const int64_t point = n + exp;
  const int64_t sci_exp = point - 1;
  constexpr int64_t kMaxExponent = 1000000000;  // 1e9
  if (sci_exp > kMaxExponent || sci_exp < -kMaxExponent) return fail(start, "number out of range");

  if (negative) put('-');
  const size_t digits_end = last + 1;
  if (exp >= 0 && exp <= 20) {
    appendDigits(first, digits_end, int_begin, int_len, frac_begin);
    fill(static_cast<size_t>(exp), '0');
  } else if (exp < 0 && point > 0) {
    const size_t split = first + static_cast<size_t>(point);
    appendDigits(first, split, int_begin, int_len, frac_begin);
    put('.');
    appendDigits(split, digits_end, int_begin, int_len, frac_begin);
  } else if (exp < 0 && point > -6) {
    put("0.", 2);
    fill(static_cast<size_t>(-point), '0');
    appendDigits(first, digits_end, int_begin, int_len, frac_begin);
  } else {
    appendDigits(first, first + 1, int_begin, int_len, frac_begin);
    if (n > 1) {
      put('.');
      appendDigits(first + 1, digits_end, int_begin, int_len, frac_begin);
    }
    put('e');
    put(sci_exp < 0 ? '-' : '+');
    char buf[24];
    char* end = buf + sizeof buf;
    char* d = end;
    for (uint64_t v = static_cast<uint64_t>(sci_exp < 0 ? -sci_exp : sci_exp); v != 0 || d == end; v /= 10) {
      *--d = static_cast<char>('0' + v % 10);
    }
    put(d, static_cast<size_t>(end - d));
  }
  return true;
}

}  // namespace

CanonicalJson canonicalizeJson(std::string_view body, size_t max_depth) {
  // Per-thread working memory, reused across calls (several event loops may
  // canonicalise at once; each thread has its own).
  thread_local Scratch scratch;
  CanonicalJson result;
  Canonicalizer parser(body, max_depth, scratch, result);
  result.ok = parser.run();
  if (!result.ok) result.canonical.clear();
  scratch.members.clear();
  scratch.frames.clear();
  scratch.trim();
  return result;
}

size_t canonicalStringEnd(std::string_view s, size_t quote) {
  for (size_t i = quote + 1; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
    } else if (s[i] == '"') {
      return i + 1;
    }
  }
  return std::string_view::npos;
}

size_t canonicalValueEnd(std::string_view s, size_t i) {
  size_t depth = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (c == '"') {
      i = canonicalStringEnd(s, i);
      if (i == std::string_view::npos) return i;
      continue;
    }
    if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (depth == 0) return i;
      --depth;
    } else if (c == ',' && depth == 0) {
      return i;
    }
    ++i;
  }
  return depth == 0 ? s.size() : std::string_view::npos;
}

std::optional<std::string_view> canonicalMember(std::string_view canonical, std::string_view name) {
  if (canonical.size() < 2 || canonical.front() != '{') return std::nullopt;
  size_t i = 1;
  while (i < canonical.size() && canonical[i] == '"') {
    size_t key_end = canonicalStringEnd(canonical, i);
    if (key_end == std::string_view::npos || key_end >= canonical.size() || canonical[key_end] != ':') break;
    std::string_view key = canonical.substr(i + 1, key_end - i - 2);
    size_t value = key_end + 1;
    size_t end = canonicalValueEnd(canonical, value);
    if (end == std::string_view::npos || end >= canonical.size()) break;
    if (key == name) return canonical.substr(value, end - value);
    if (canonical[end] != ',') break;
    i = end + 1;
  }
  return std::nullopt;
}

void appendCanonicalCodePoint(std::string& out, uint32_t cp) {
  char buf[6];
  out.append(buf, encodeCodePoint(cp, buf));
}

bool appendCanonicalString(std::string& out, std::string_view utf8) {
  const auto* s = reinterpret_cast<const unsigned char*>(utf8.data());
  size_t i = 0;
  while (i < utf8.size()) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      appendCanonicalCodePoint(out, c);
      ++i;
      continue;
    }
    const int len = utf8Length(s + i, utf8.size() - i);
    if (len <= 0) return false;
    out.append(utf8.data() + i, static_cast<size_t>(len));  // well-formed UTF-8 is its own canonical form
    i += static_cast<size_t>(len);
  }
  return true;
}

uint32_t nextCanonicalCodePoint(std::string_view content, size_t& i) {
  const auto* s = reinterpret_cast<const unsigned char*>(content.data());
  const unsigned char c = s[i];
  if (c == '\\') {
    const char e = static_cast<char>(s[i + 1]);
    i += 2;
    switch (e) {
      case 'b': return '\b';
      case 'f': return '\f';
      case 'n': return '\n';
      case 'r': return '\r';
      case 't': return '\t';
      case 'u': {
        uint32_t cp = 0;
        for (int k = 0; k < 4; ++k) cp = cp * 16 + static_cast<uint32_t>(hexValue(s[i + k]));
        i += 4;
        return cp;
      }
      default: return static_cast<unsigned char>(e);  // '"' and '\\'
    }
  }
  // Raw bytes: ASCII or well-formed UTF-8 (canonical text holds nothing else).
  if (c < 0x80) {
    ++i;
    return c;
  }
  if (c < 0xE0) {
    const uint32_t cp = (static_cast<uint32_t>(c & 0x1F) << 6) | (s[i + 1] & 0x3F);
    i += 2;
    return cp;
  }
  if (c < 0xF0) {
    const uint32_t cp = (static_cast<uint32_t>(c & 0x0F) << 12) | (static_cast<uint32_t>(s[i + 1] & 0x3F) << 6) |
                        (s[i + 2] & 0x3F);
    i += 3;
    return cp;
  }
  const uint32_t cp = (static_cast<uint32_t>(c & 0x07) << 18) | (static_cast<uint32_t>(s[i + 1] & 0x3F) << 12) |
                      (static_cast<uint32_t>(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
  i += 4;
  return cp;
}

}  // namespace wfp
