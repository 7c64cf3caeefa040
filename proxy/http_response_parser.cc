#include "proxy/http_response_parser.h"

#include <algorithm>
#include <charconv>

#include "proxy/text.h"

namespace wfp {

namespace {

// A chunk-size line (with extensions) longer than this is an error.
constexpr size_t kMaxChunkLine = 4096;

bool hasToken(std::string_view list, std::string_view token) {
  while (!list.empty()) {
    size_t comma = list.find(',');
    if (equalsIgnoreCase(trimOws(list.substr(0, comma)), token)) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

}  // namespace

void HttpResponseParser::begin(bool head_request) {
  state_ = State::Head;
  head_request_ = head_request;
  seen_interim_ = false;
  keep_alive_ = false;
  head_ = UpstreamHead{};
  error_.clear();
  head_scan_ = 0;
  body_remaining_ = 0;
  trailer_bytes_ = 0;
}

HttpResponseParser::Result HttpResponseParser::fail(std::string why) {
  state_ = State::Failed;
  keep_alive_ = false;
  error_ = std::move(why);
  return {Event::Error, 0, {}};
}

size_t HttpResponseParser::nextLine(std::string_view input, size_t bound, std::string_view& line) {
  size_t nl = input.substr(0, bound).find('\n');
  if (nl == std::string_view::npos) return input.size() >= bound ? SIZE_MAX : 0;
  line = input.substr(0, nl);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return nl + 1;
}

HttpResponseParser::Result HttpResponseParser::parse(std::string_view input) {
  switch (state_) {
    case State::Head: {
      // Not an HTTP/1.x answer at all (a banner of another protocol, an
      // HTTP/2 preface): refused at once, not after 100 KiB or the timeout.
      if (head_scan_ < 7 && !input.empty()) {
        static constexpr std::string_view kPrefix = "HTTP/1.";
        size_t n = std::min(input.size(), kPrefix.size());
        if (input.substr(0, n) != kPrefix.substr(0, n)) return fail("malformed status line");
      }
      // The head ends at the first empty line ("\r\n" or "\n").
      size_t from = head_scan_;
      size_t end = 0;
      while (end == 0) {
        size_t nl = input.find('\n', from);
        if (nl == std::string_view::npos || nl + 1 >= input.size()) {
          head_scan_ = nl == std::string_view::npos ? input.size() : nl;
          if (input.size() > max_head_bytes_) return fail("response head too large");
          return {Event::NeedMore, 0, {}};
        }
        if (nl == 0) return fail("malformed status line");
        if (input[nl + 1] == '\n') {
          end = nl + 2;
        } else if (input[nl + 1] == '\r') {
          if (nl + 2 >= input.size()) {
            head_scan_ = nl;
            if (input.size() > max_head_bytes_) return fail("response head too large");
            return {Event::NeedMore, 0, {}};
          }
          if (input[nl + 2] == '\n') end = nl + 3;
          else from = nl + 1;  // a bare CR: parseHead rejects it
        } else {
          from = nl + 1;
        }
      }
      if (end > max_head_bytes_) return fail("response head too large");
      head_scan_ = 0;
      if (!parseHead(input.substr(0, end))) return fail(std::move(error_));
      if (head_.status < 200) {
        if (head_.status == 101) return fail("unexpected 101 Switching Protocols");
        // An interim response: dropped, the final one follows.
        seen_interim_ = true;
        head_ = UpstreamHead{};
        return {Event::NeedMore, end, {}};
      }
      if (!decideFraming()) return fail(std::move(error_));
      return {Event::Head, end, {}};
    }
    case State::Length: {
      if (input.empty()) return {Event::NeedMore, 0, {}};
      size_t n = input.size() < body_remaining_ ? input.size() : static_cast<size_t>(body_remaining_);
      body_remaining_ -= n;
      if (body_remaining_ == 0) state_ = State::Done;
      return {Event::Body, n, input.substr(0, n)};
    }
    case State::UntilClose:
      if (input.empty()) return {Event::NeedMore, 0, {}};
      return {Event::Body, input.size(), input};
    case State::ChunkSize: {
      std::string_view line;
      size_t used = nextLine(input, kMaxChunkLine, line);
      if (used == SIZE_MAX) return fail("invalid chunk size");
      if (used == 0) return {Event::NeedMore, 0, {}};
      uint64_t size = 0;
      size_t i = 0;
      for (; i < line.size() && isHexDigit(line[i]); ++i) {
        if (i >= 15) return fail("invalid chunk size");  // > 2^60: no body is that big
        char c = line[i];
        size = size * 16 + static_cast<uint64_t>(isDigit(c) ? c - '0' : (asciiLower(c) - 'a' + 10));
      }
      if (i == 0) return fail("invalid chunk size");
      std::string_view ext = line.substr(i);
      while (!ext.empty() && isOws(ext.front())) ext.remove_prefix(1);
      if (!ext.empty() && ext.front() != ';') return fail("invalid chunk size");
      if (size == 0) {
        state_ = State::Trailer;
        return {Event::NeedMore, used, {}};
      }
      body_remaining_ = size;
      state_ = State::ChunkData;
      return {Event::NeedMore, used, {}};
    }
    case State::ChunkData: {
      if (input.empty()) return {Event::NeedMore, 0, {}};
      size_t n = input.size() < body_remaining_ ? input.size() : static_cast<size_t>(body_remaining_);
      body_remaining_ -= n;
      if (body_remaining_ == 0) state_ = State::ChunkDataEnd;
      return {Event::Body, n, input.substr(0, n)};
    }
    case State::ChunkDataEnd: {
      if (input.empty()) return {Event::NeedMore, 0, {}};
      if (input[0] == '\n') {
        state_ = State::ChunkSize;
        return {Event::NeedMore, 1, {}};
      }
      if (input[0] != '\r') return fail("invalid chunk terminator");
      if (input.size() < 2) return {Event::NeedMore, 0, {}};
      if (input[1] != '\n') return fail("invalid chunk terminator");
      state_ = State::ChunkSize;
      return {Event::NeedMore, 2, {}};
    }
    case State::Trailer: {
      // Trailer fields are read and dropped: the head was relayed already.
      std::string_view line;
      size_t bound = max_head_bytes_ - trailer_bytes_;
      size_t used = nextLine(input, bound, line);
      if (used == SIZE_MAX) return fail("response trailers too large");
      if (used == 0) return {Event::NeedMore, 0, {}};
      trailer_bytes_ += used;
      if (line.empty()) {
        state_ = State::Done;
        return {Event::Complete, used, {}};
      }
      return {Event::NeedMore, used, {}};
    }
    case State::Done:
      return {Event::Complete, 0, {}};
    case State::Failed:
      return {Event::Error, 0, {}};
  }
  return {Event::Error, 0, {}};
}

HttpResponseParser::Result HttpResponseParser::finish() {
  switch (state_) {
    case State::UntilClose:
    case State::Done:
      state_ = State::Done;
      return {Event::Complete, 0, {}};
    case State::Failed:
      return {Event::Error, 0, {}};
    case State::Head:
      return fail(untouched() ? "empty reply from server" : "connection closed inside the response head");
    default:
      return fail("transfer closed with outstanding read data remaining");
  }
}

bool HttpResponseParser::parseHead(std::string_view text) {
  bool first = true;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find('\r') != std::string_view::npos || line.find('\0') != std::string_view::npos) {
      error_ = "bare CR or NUL in the response head";
      return false;
    }
    if (first) {
      if (!parseStatusLine(line)) return false;
      first = false;
      continue;
    }
    if (line.empty()) break;  // the end of the head
    if (isOws(line.front())) {
      // obs-fold: a continuation of the previous field, joined by a space.
      if (head_.headers.empty()) {
        error_ = "malformed header line";
        return false;
      }
      std::string_view more = trimOws(line);
      std::string& value = head_.headers.back().value;
      if (!more.empty()) {
        if (!value.empty()) value += ' ';
        value.append(more);
      }
      continue;
    }
    if (!addField(line)) return false;
  }
  return true;
}

bool HttpResponseParser::parseStatusLine(std::string_view line) {
  // HTTP/1.x SP 3DIGIT [SP reason]
  if (line.size() < 12 || line.substr(0, 7) != "HTTP/1." || (line[7] != '0' && line[7] != '1') || line[8] != ' ' ||
      !isDigit(line[9]) || !isDigit(line[10]) || !isDigit(line[11]) || (line.size() > 12 && line[12] != ' ')) {
    error_ = "malformed status line";
    return false;
  }
  int status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
  if (status < 100 || status > 599) {
    error_ = "malformed status line";
    return false;
  }
  head_.status = status;
  keep_alive_ = line[7] == '1';  // the version's default; Connection may change it
  head_.reason = line.size() > 12 ? std::string(trimOws(line.substr(13))) : std::string();
  head_.headers.reserve(16);  // one allocation for a usual head, not a doubling vector
  return true;
}

bool HttpResponseParser::addField(std::string_view line) {
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) {
    error_ = "malformed header line";
    return false;
  }
  std::string_view name = line.substr(0, colon);
  while (!name.empty() && isOws(name.back())) name.remove_suffix(1);  // RFC 9112 §5.1: removed
  if (!isToken(name)) {
    error_ = "malformed header line";
    return false;
  }
  head_.headers.push_back(HttpHeader{std::string(name), std::string(trimOws(line.substr(colon + 1)))});
  return true;
}

bool HttpResponseParser::decideFraming() {
  bool version_11 = keep_alive_;
  // RFC 9112 §9.3: "close" in any Connection field decides; keep-alive only
  // matters to HTTP/1.0.
  bool close = false;
  bool keep_alive = false;
  bool chunked = false;
  bool has_te = false;
  bool has_length = false;
  uint64_t length = 0;
  for (const auto& h : head_.headers) {
    if (equalsIgnoreCase(h.name, "connection")) {
      close |= hasToken(h.value, "close");
      keep_alive |= hasToken(h.value, "keep-alive");
    } else if (equalsIgnoreCase(h.name, "transfer-encoding")) {
      has_te = true;
      std::string_view list = h.value;
      while (!list.empty()) {
        size_t comma = list.find(',');
        std::string_view coding = trimOws(list.substr(0, comma));
        list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
        if (coding.empty()) continue;
        if (chunked) {
          error_ = "chunked is not the last transfer coding";
          return false;
        }
        chunked = equalsIgnoreCase(coding, "chunked");
      }
    } else if (equalsIgnoreCase(h.name, "content-length")) {
      std::string_view list = h.value;
      do {
        size_t comma = list.find(',');
        std::string_view v = trimOws(list.substr(0, comma));
        list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
        uint64_t n = 0;
        if (v.empty() || v.size() > 18 || std::from_chars(v.data(), v.data() + v.size(), n).ptr != v.data() + v.size() ||
            (has_length && n != length)) {
          error_ = "invalid Content-Length";
          return false;
        }
        has_length = true;
        length = n;
      } while (!list.empty());
    }
  }
  keep_alive_ = !close && (version_11 || keep_alive);
  // RFC 9112 §6.3: Transfer-Encoding with Content-Length may be an attempt at
  // smuggling: the connection is not reused, body or not.
  if (has_te && has_length) keep_alive_ = false;
  // §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
  if (has_te && !version_11) keep_alive_ = false;
  if (head_request_ || head_.status == 204 || head_.status == 304) {
    state_ = State::Done;  // no body, whatever the fields say
  } else if (has_te) {
    // Transfer-Encoding overrides Content-Length (§6.3).
    if (chunked) {
      state_ = State::ChunkSize;  // also "gzip, chunked": the other codings are relayed as they are
    } else {
      state_ = State::UntilClose;
      keep_alive_ = false;
    }
  } else if (has_length) {
    body_remaining_ = length;
    state_ = length == 0 ? State::Done : State::Length;
  } else {
    state_ = State::UntilClose;
    keep_alive_ = false;
  }
  return true;
}

}  // namespace wfp
