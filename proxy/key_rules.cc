// Cache keys that ignore noise (docs/http.md). See key_rules.h for what the
// rules mean; this file is how they are applied.
//
// The input is canonical text, so it needs no validation and has no
// insignificant whitespace: it is walked once, left to right, copying what
// stays. An explicit stack of open containers holds, for each object on a
// chain of objects from the top, the ignore paths still alive there (their
// first names matched the members leading to it); arrays and everything
// inside them have none, since paths do not descend into arrays. A member
// whose name ends a live path is skipped whole; a value with no live path
// below it and no normaliser to apply is copied in one piece.
//
// Strings are rewritten through canonical_json.h's decoder and encoder, so the
// output is canonical by the same rule as the input: names are unchanged
// (member order stays sorted), numbers and literals are copied byte for byte.
#include "proxy/key_rules.h"

#include <locale.h>
#include <wctype.h>

#include <algorithm>

#include "proxy/canonical_json.h"
#include "proxy/hash.h"

namespace wfp {

bool isKeyWhitespace(uint32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  switch (cp) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000: return true;
    default: return cp >= 0x2000 && cp <= 0x200A;
  }
}

namespace {

// C.UTF-8 is built into glibc since 2.35 (Debian 12 has 2.36): its LC_CTYPE
// carries Unicode's simple case mappings, so no ICU is needed. Made once,
// never freed; towlower_l only reads it, from any thread.
locale_t lowercaseLocale() {
  static const locale_t locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(nullptr));
  return locale;
}

}  // namespace

uint32_t keyLowercase(uint32_t cp) {
  if (cp < 0x80) return cp >= 'A' && cp <= 'Z' ? cp + ('a' - 'A') : cp;
  if (cp >= 0xD800 && cp <= 0xDFFF) return cp;
  const locale_t locale = lowercaseLocale();
  if (locale == static_cast<locale_t>(nullptr)) return cp;
  const auto lower = static_cast<uint32_t>(towlower_l(static_cast<wint_t>(cp), locale));
  // Never trust a mapping out of the Unicode scalar range.
  if (lower > 0x10FFFF || (lower >= 0xD800 && lower <= 0xDFFF)) return cp;
  return lower;
}

namespace {

class Shaper {
 public:
  Shaper(std::string_view in, const KeyRules& rules, std::string& out)
      : in_(in),
        out_(out),
        trim_(rules.normalize & KeyRules::Trim),
        collapse_(rules.normalize & KeyRules::CollapseWhitespace),
        lower_(rules.normalize & KeyRules::Lowercase),
        normalize_(rules.normalize != 0) {
    // Names as they stand in canonical text, so they compare byte for byte
    // with the members there (the canonical form of a string is unique).
    for (const auto& path : rules.ignore) {
      if (path.empty()) continue;
      std::vector<std::string> names;
      bool ok = true;
      for (const auto& name : path) {
        std::string encoded;
        ok &= appendCanonicalString(encoded, name);
        names.push_back(std::move(encoded));
      }
      if (ok) paths_.push_back(std::move(names));  // an ill-formed name matches nothing
    }
  }

  void run() {
    for (uint32_t p = 0; p < paths_.size(); ++p) live_.push_back(p);
    pending_ = {0, live_.size()};  // every path is alive at the top level
    for (;;) {
      if (openValue()) continue;
      if (closeValues()) return;
    }
  }

 private:
  struct Frame {
    bool is_object;
    bool wrote_member;  // a member was written: the next one needs a ','
    size_t live_begin;  // this object's live paths: live_[live_begin, live_end)
    size_t live_end;
  };
  struct Span {
    size_t begin, end;
  };

  // At in_[i_] a value starts. Returns true when it opened a container and
  // the next thing is that container's first value; false when it is done
  // with the value (or the container is open but ends at once).
  bool openValue() {
    const char c = in_[i_];
    const Span child = pending_;  // non-empty only right after nextMember(): then the tail of live_
    const bool has_paths = child.end > child.begin;
    const bool paths_below = c == '{' && has_paths;
    if (has_paths && !paths_below) live_.resize(child.begin);  // a path through a non-object stops here
    pending_ = {live_.size(), live_.size()};
    if (!normalize_ && !paths_below) {
      copyValue();
      return false;
    }
    if (c == '{') {
      frames_.push_back(Frame{true, false, child.begin, child.end});
      out_.push_back('{');
      ++i_;
      return nextMember();
    }
    if (c == '[') {
      frames_.push_back(Frame{false, false, live_.size(), live_.size()});
      out_.push_back('[');
      ++i_;
      return in_[i_] != ']';
    }
    if (c == '"') {
      normalizeString();
    } else {
      copyValue();
    }
    return false;
  }

  // At in_[i_] a member's name or the object's '}'. Skips members an ignore
  // path ends at; writes the next kept member's name and returns true, or
  // returns false at the '}'.
  bool nextMember() {
    Frame& frame = frames_.back();
    const size_t depth = frames_.size() - 1;  // objects all the way up while a path is alive
    while (in_[i_] == '"') {
      const size_t name_begin = i_;
      const size_t name_end = canonicalStringEnd(in_, i_);
      const std::string_view name = in_.substr(name_begin + 1, name_end - name_begin - 2);
      const size_t child_begin = live_.size();
      bool drop = false;
      for (size_t k = frame.live_begin; k < frame.live_end; ++k) {
        const uint32_t p = live_[k];
        const auto& path = paths_[p];
        if (path[depth] != name) continue;
        if (path.size() == depth + 1) {
          drop = true;
        } else {
          live_.push_back(p);  // alive in this member's value, if it is an object
        }
      }
      i_ = name_end + 1;  // past the ':'
      if (drop) {
        live_.resize(child_begin);
        i_ = canonicalValueEnd(in_, i_);
        if (in_[i_] != ',') return false;
        ++i_;
        continue;
      }
      if (frame.wrote_member) out_.push_back(',');
      frame.wrote_member = true;
      out_.append(in_.data() + name_begin, name_end - name_begin + 1);  // "name":
      pending_ = {child_begin, live_.size()};
      return true;
    }
    return false;
  }

  // After a value: closes the containers that end here. Returns true when the
  // top-level object is closed; false when the next thing is a value.
  bool closeValues() {
    for (;;) {
      if (frames_.empty()) return true;
      const Frame& frame = frames_.back();
      const char c = in_[i_++];
      if (c == ',') {
        if (!frame.is_object) {
          out_.push_back(',');
          return false;
        }
        if (nextMember()) return false;
        continue;  // the rest of the object was ignored: at its '}'
      }
      out_.push_back(c);  // '}' or ']'
      live_.resize(frame.live_begin);
      frames_.pop_back();
    }
  }

  void copyValue() {
    const size_t end = canonicalValueEnd(in_, i_);
    out_.append(in_.data() + i_, end - i_);
    i_ = end;
  }

  // The string at in_[i_] with the normalisers applied.
  void normalizeString() {
    const size_t end = canonicalStringEnd(in_, i_);
    const std::string_view content = in_.substr(i_ + 1, end - i_ - 2);
    i_ = end;
    out_.push_back('"');
    bool seen_other = false;  // a non-whitespace character was written
    bool in_run = false;      // the last character read was whitespace
    size_t run_at = 0;        // where that run of whitespace starts in out_
    size_t j = 0;
    while (j < content.size()) {
      const auto b = static_cast<unsigned char>(content[j]);
      uint32_t cp;
      if (b >= 0x20 && b < 0x80 && b != '\\') {
        cp = b;
        ++j;
      } else {
        cp = nextCanonicalCodePoint(content, j);
      }
      if (isKeyWhitespace(cp)) {
        if (trim_ && !seen_other) continue;  // leading
        if (!in_run) {
          in_run = true;
          run_at = out_.size();
          if (collapse_) out_.push_back(' ');
        }
        if (!collapse_) appendCanonicalCodePoint(out_, cp);
        continue;
      }
      in_run = false;
      seen_other = true;
      if (lower_) cp = keyLowercase(cp);
      if (cp >= 0x20 && cp < 0x80 && cp != '"' && cp != '\\') {
        out_.push_back(static_cast<char>(cp));
      } else {
        appendCanonicalCodePoint(out_, cp);
      }
    }
    if (trim_ && in_run) out_.resize(run_at);  // trailing
    out_.push_back('"');
  }

  std::string_view in_;
  std::string& out_;
  size_t i_ = 0;
  const bool trim_, collapse_, lower_, normalize_;
  std::vector<std::vector<std::string>> paths_;  // canonical names
  std::vector<uint32_t> live_;                   // indices into paths_, a stack of per-object spans
  std::vector<Frame> frames_;
  Span pending_{0, 0};  // paths alive in the value about to be read, if it is an object
};

void appendShaped(std::string& out, std::string_view canonical, const KeyRules& rules) {
  out.reserve(out.size() + canonical.size());
  Shaper(canonical, rules, out).run();
}

}  // namespace

std::string shapeKeyText(std::string_view canonical, const KeyRules& rules) {
  if (rules.empty()) return std::string(canonical);
  std::string out;
  appendShaped(out, canonical, rules);
  return out;
}

std::string keyRulesFingerprint(const KeyRules& rules) {
  std::vector<std::string> paths;
  for (const auto& path : rules.ignore) {
    std::string p = "[";
    for (const auto& name : path) {
      if (p.size() > 1) p.push_back(',');
      p.push_back('"');
      appendCanonicalString(p, name);
      p.push_back('"');
    }
    p.push_back(']');
    paths.push_back(std::move(p));
  }
  std::sort(paths.begin(), paths.end());
  paths.erase(std::unique(paths.begin(), paths.end()), paths.end());
  std::string out = "{\"ignore\":[";
  for (size_t i = 0; i < paths.size(); ++i) {
    if (i > 0) out.push_back(',');
    out += paths[i];
  }
  out += "],\"normalize\":[";
  // Fixed (alphabetical) order, whatever the configuration's.
  bool first = true;
  auto add = [&](unsigned bit, const char* name) {
    if ((rules.normalize & bit) == 0) return;
    if (!first) out.push_back(',');
    first = false;
    out += name;
  };
  add(KeyRules::CollapseWhitespace, "\"collapse_whitespace\"");
  add(KeyRules::Lowercase, "\"lowercase\"");
  add(KeyRules::Trim, "\"trim\"");
  out += "]}";
  return out;
}

std::string inputDigest(std::string_view canonical, const KeyRules* rules) {
  if (rules == nullptr || rules->empty()) return sha256Hex(canonical);
  std::string text = "rules:v1:";
  text += keyRulesFingerprint(*rules);
  text.push_back('\n');  // canonical JSON holds no raw newline: the fingerprint ends here
  appendShaped(text, canonical, *rules);
  return sha256Hex(text);
}

}  // namespace wfp
