#include "proxy/http_parser.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "proxy/text.h"

namespace wfp {

namespace {

// A chunk-size line (with extensions) longer than this is rejected.
constexpr size_t kMaxChunkLine = 4096;

// RFC 9112 §3.2.3: uri-host ":" port, the host a reg-name or an IP literal
// (RFC 3986 §3.2.2).
bool isAuthorityForm(std::string_view s) {
  size_t colon = s.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  std::string_view host = s.substr(0, colon);
  std::string_view port = s.substr(colon + 1);
  if (port.empty() || port.size() > 5) return false;
  for (char c : port) {
    if (!isDigit(c)) return false;
  }
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') return false;
    for (char c : host.substr(1, host.size() - 2)) {
      if (!isHexDigit(c) && c != ':' && c != '.') return false;
    }
    return true;
  }
  for (char c : host) {
    if (!isAlnum(c) && std::string_view("-._~%!$&'()*+,;=").find(c) == std::string_view::npos) return false;
  }
  return true;
}

// Calls fn on each comma-separated, OWS-trimmed, non-empty element.
template <typename Fn>
void forEachListElement(std::string_view value, Fn&& fn) {
  while (!value.empty()) {
    size_t comma = value.find(',');
    std::string_view item = trimOws(value.substr(0, comma));
    if (!item.empty()) fn(item);
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
}

// Offset just past the empty line that ends the head, or 0 if not found in
// p[0, n). `scan` remembers where to resume, so a head that trickles in is
// scanned once overall.
size_t findHeadEnd(const char* p, size_t n, size_t& scan) {
  size_t i = scan;
  while (i < n) {
    const void* nl = std::memchr(p + i, '\n', n - i);
    if (!nl) break;
    size_t k = static_cast<size_t>(static_cast<const char*>(nl) - p);
    if (k + 1 >= n) {
      scan = k;
      return 0;
    }
    if (p[k + 1] == '\n') return k + 2;
    if (p[k + 1] == '\r') {
      if (k + 2 >= n) {
        scan = k;
        return 0;
      }
      if (p[k + 2] == '\n') return k + 3;
    }
    i = k + 1;
  }
  scan = n;
  return 0;
}

}  // namespace

size_t HttpParser::lookahead() const {
  switch (state_) {
    case State::Start:
    case State::Head:
      return std::max<size_t>(limits_.max_header_bytes, 64);
    case State::ChunkSize:
      return kMaxChunkLine;
    case State::ChunkDataEnd:
      return 2;
    case State::Trailer: {
      size_t budget = limits_.max_header_bytes > trailer_bytes_ ? limits_.max_header_bytes - trailer_bytes_ : 0;
      return std::max<size_t>(budget, 2);
    }
    default:
      return 1;
  }
}

void HttpParser::beginMessage() {
  state_ = State::Head;
  head_.version_minor = 1;
  head_.framing = HttpBodyFraming::None;
  head_.content_length = 0;
  head_.keep_alive = true;
  head_.expect_continue = false;
  head_scan_ = 0;
  line_scan_ = 0;
  body_remaining_ = 0;
  body_bytes_ = 0;
  trailer_bytes_ = 0;
  trailer_count_ = 0;
  message_bytes_ = 0;
}

HttpParser::Result HttpParser::complete(size_t consumed) {
  state_ = State::Start;
  return {Event::Complete, consumed, {}};
}

HttpParser::Result HttpParser::fail(size_t consumed, int status, std::string message) {
  state_ = State::Failed;
  error_status_ = status;
  error_message_ = std::move(message);
  return {Event::Error, consumed, {}};
}

HttpParser::Result HttpParser::badRequest(size_t consumed, std::string_view why) {
  return fail(consumed, 400, std::string("Bad request: ").append(why));
}

HttpParser::Result HttpParser::parse(std::string_view input) {
  head_.method = {};
  head_.target = {};
  head_.headers.clear();
  size_t pos = 0;  // input[0, pos) is consumed
  for (;;) {
    const std::string_view rest = input.substr(pos);
    switch (state_) {
      case State::Start: {
        // Empty lines before a request line are skipped (RFC 9112 §2.2).
        size_t skip = 0;
        while (skip < rest.size()) {
          if (rest[skip] == '\n') {
            ++skip;
          } else if (rest[skip] == '\r' && skip + 1 < rest.size() && rest[skip + 1] == '\n') {
            skip += 2;
          } else {
            break;
          }
        }
        pos += skip;
        if (skip == rest.size()) return needMore(pos);
        if (skip + 1 == rest.size() && rest[skip] == '\r') return needMore(pos);  // wait for its LF
        beginMessage();
        break;
      }
      case State::Head: {
        const size_t max_head = std::max<size_t>(limits_.max_header_bytes, 64);
        size_t head_len = findHeadEnd(rest.data(), std::min(rest.size(), max_head), head_scan_);
        if (!head_len) {
          if (rest.size() >= max_head) return fail(pos, 431, "Request header too large");
          return needMore(pos);
        }
        if (!parseHead(rest.substr(0, head_len))) {
          state_ = State::Failed;
          return {Event::Error, pos, {}};
        }
        pos += head_len;
        message_bytes_ = head_len;
        switch (head_.framing) {
          case HttpBodyFraming::None:
            state_ = State::Done;
            break;
          case HttpBodyFraming::Length:
            if (head_.content_length > limits_.max_body_bytes) return fail(pos, 413, "Request body too large");
            body_remaining_ = head_.content_length;
            state_ = State::Length;
            break;
          case HttpBodyFraming::Chunked:
            state_ = State::ChunkSize;
            break;
        }
        return {Event::Head, pos, {}};
      }
      case State::Done:
        return complete(pos);
      case State::Length: {
        if (body_remaining_ == 0) return complete(pos);
        size_t n = static_cast<size_t>(std::min<uint64_t>(rest.size(), body_remaining_));
        if (n == 0) return needMore(pos);
        body_remaining_ -= n;
        body_bytes_ += n;
        message_bytes_ += n;
        return body(pos + n, rest.substr(0, n));
      }
      case State::ChunkSize: {
        std::string_view line;
        size_t used = nextLine(rest, kMaxChunkLine, line);
        if (used == 0) return needMore(pos);
        if (used == SIZE_MAX) return badRequest(pos, "invalid chunk size");
        uint64_t size = 0;
        size_t i = 0;
        for (; i < line.size(); ++i) {
          char c = line[i];
          int d;
          if (c >= '0' && c <= '9') {
            d = c - '0';
          } else if (c >= 'a' && c <= 'f') {
            d = c - 'a' + 10;
          } else if (c >= 'A' && c <= 'F') {
            d = c - 'A' + 10;
          } else {
            break;
          }
          if (i >= 15) return badRequest(pos, "invalid chunk size");  // > 2^60: no body is that big
          size = size * 16 + static_cast<uint64_t>(d);
        }
        if (i == 0) return badRequest(pos, "invalid chunk size");
        std::string_view ext = line.substr(i);
        while (!ext.empty() && isOws(ext.front())) ext.remove_prefix(1);
        if (!ext.empty() && ext.front() != ';') return badRequest(pos, "invalid chunk size");
        // Extensions are ignored, but a CR or NUL in them is an attack.
        if (ext.find('\r') != std::string_view::npos || ext.find('\0') != std::string_view::npos) {
          return badRequest(pos, "invalid chunk extension");
        }
        pos += used;
        message_bytes_ += used;
        if (size == 0) {
          state_ = State::Trailer;
          break;
        }
        if (size > limits_.max_body_bytes || body_bytes_ + size > limits_.max_body_bytes) {
          return fail(pos, 413, "Request body too large");
        }
        body_remaining_ = size;
        state_ = State::ChunkData;
        break;
      }
      case State::ChunkData: {
        size_t n = static_cast<size_t>(std::min<uint64_t>(rest.size(), body_remaining_));
        if (n == 0) return needMore(pos);
        body_remaining_ -= n;
        body_bytes_ += n;
        message_bytes_ += n;
        if (body_remaining_ == 0) state_ = State::ChunkDataEnd;
        return body(pos + n, rest.substr(0, n));
      }
      case State::ChunkDataEnd: {
        if (rest.empty()) return needMore(pos);
        size_t used = 0;
        if (rest[0] == '\n') {
          used = 1;
        } else if (rest[0] == '\r') {
          if (rest.size() < 2) return needMore(pos);
          if (rest[1] != '\n') return badRequest(pos, "invalid chunk terminator");
          used = 2;
        } else {
          return badRequest(pos, "invalid chunk terminator");
        }
        pos += used;
        message_bytes_ += used;
        state_ = State::ChunkSize;
        break;
      }
      case State::Trailer: {
        // Trailer fields are read and discarded, within the head limits.
        std::string_view line;
        size_t used = nextLine(rest, lookahead(), line);
        if (used == 0) return needMore(pos);
        if (used == SIZE_MAX || ++trailer_count_ > limits_.max_headers + 1) {
          return fail(pos, 431, "Request header too large");
        }
        bool last = line.empty();
        if (!last && (line.find('\r') != std::string_view::npos || line.find('\0') != std::string_view::npos)) {
          return badRequest(pos, "invalid trailer");
        }
        trailer_bytes_ += used;
        pos += used;
        message_bytes_ += used;
        if (last) return complete(pos);
        break;
      }
      case State::Failed:
        return {Event::Error, pos, {}};
    }
  }
}

// Finds the line at the start of `input` (a chunk-size or trailer line),
// scanning at most `bound` bytes. Returns the line without its terminator,
// through `line`, and its length with the terminator; 0 when more input is
// needed; SIZE_MAX when no line ends within `bound`.
size_t HttpParser::nextLine(std::string_view input, size_t bound, std::string_view& line) {
  size_t limit = std::min(input.size(), bound);
  if (limit == 0) return 0;
  const char* p = input.data();
  size_t from = std::min(line_scan_, limit);
  const void* nl = std::memchr(p + from, '\n', limit - from);
  if (!nl) {
    line_scan_ = limit;
    return limit >= bound ? SIZE_MAX : 0;
  }
  size_t k = static_cast<size_t>(static_cast<const char*>(nl) - p);
  line_scan_ = 0;
  size_t content = (k > 0 && p[k - 1] == '\r') ? k - 1 : k;
  line = std::string_view(p, content);
  return k + 1;
}

bool HttpParser::headError(int status, std::string message) {
  error_status_ = status;
  error_message_ = std::move(message);
  return false;
}

bool HttpParser::badHead(std::string_view why) { return headError(400, std::string("Bad request: ").append(why)); }

bool HttpParser::parseHead(std::string_view text) {
  const char* p = text.data();
  const size_t n = text.size();
  const char* end = p + n;
  const char* nl = static_cast<const char*>(std::memchr(p, '\n', n));
  const char* le = (nl > p && nl[-1] == '\r') ? nl - 1 : nl;
  std::string_view line(p, static_cast<size_t>(le - p));
  if (std::memchr(line.data(), '\r', line.size())) return badHead("invalid line ending");

  size_t sp1 = line.find(' ');
  size_t sp2 = line.rfind(' ');
  if (sp1 == std::string_view::npos || sp1 == 0 || sp2 == sp1) return badHead("invalid request line");
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (!isToken(method)) return badHead("invalid method");
  if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || !isDigit(version[5]) || version[6] != '.' ||
      !isDigit(version[7])) {
    return badHead("invalid HTTP version");
  }
  if (version[5] != '1' || (version[7] != '0' && version[7] != '1')) {
    return headError(505, "HTTP version not supported");
  }
  if (target.empty()) return badHead("invalid request target");
  for (char c : target) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7F) return badHead("invalid request target");
  }
  if (target[0] != '/') {
    if (target == "*" && method == "OPTIONS") {
      // asterisk-form
    } else if (method == "CONNECT" && isAuthorityForm(target)) {
      // authority-form, CONNECT's only form (RFC 9112 §3.2.3): handed on
      // so that routing refuses it like any CONNECT (405, docs/http.md).
    } else if (target.find("://") != std::string_view::npos) {
      return badHead("absolute-form request target not supported");
    } else {
      return badHead("invalid request target");
    }
  }
  head_.method = method;
  head_.target = target;
  head_.version_minor = version[7] - '0';

  std::vector<HttpHeaderView>& headers = head_.headers;
  // One allocation for a usual head, not one per doubling (the views are
  // released once the head is copied out: releaseHeadViews).
  if (headers.capacity() == 0) headers.reserve(std::min<size_t>(16, limits_.max_headers));
  bool seen_host = false;
  bool seen_cl = false;
  int64_t content_length = -1;
  int te_count = 0;
  std::string_view te;
  bool conn_close = false;
  bool conn_keep_alive = false;
  bool expect_continue = false;
  const size_t max_headers = limits_.max_headers;
  const char* q = nl + 1;
  while (q < end) {
    const char* e = static_cast<const char*>(std::memchr(q, '\n', static_cast<size_t>(end - q)));
    if (!e) break;  // cannot happen: the head ends with an empty line
    const char* lend = (e > q && e[-1] == '\r') ? e - 1 : e;
    if (lend == q) break;  // the empty line
    if (*q == ' ' || *q == '\t') return badHead("obsolete line folding");
    std::string_view field(q, static_cast<size_t>(lend - q));
    q = e + 1;
    if (std::memchr(field.data(), '\r', field.size())) return badHead("invalid header");
    size_t colon = field.find(':');
    if (colon == std::string_view::npos || colon == 0) return badHead("invalid header");
    std::string_view name = field.substr(0, colon);
    if (!isToken(name)) return badHead("invalid header name");
    std::string_view value = trimOws(field.substr(colon + 1));
    if (std::memchr(value.data(), '\0', value.size())) return badHead("invalid header value");
    if (headers.size() + 1 > max_headers) return headError(431, "Request header too large");
    headers.push_back(HttpHeaderView{name, value});
    switch (name.size()) {
      case 4:
        if (equalsIgnoreCase(name, "host")) {
          if (seen_host) return badHead("multiple Host headers");
          seen_host = true;
        }
        break;
      case 6:
        if (equalsIgnoreCase(name, "expect") && equalsIgnoreCase(value, "100-continue")) expect_continue = true;
        break;
      case 10:
        if (equalsIgnoreCase(name, "connection")) {
          forEachListElement(value, [&](std::string_view token) {
            if (equalsIgnoreCase(token, "close")) conn_close = true;
            if (equalsIgnoreCase(token, "keep-alive")) conn_keep_alive = true;
          });
        }
        break;
      case 14:
        if (equalsIgnoreCase(name, "content-length")) {
          if (value.empty()) return badHead("invalid Content-Length");
          int64_t v = 0;
          for (char c : value) {
            if (!isDigit(c)) return badHead("invalid Content-Length");
            if (v > (std::numeric_limits<int64_t>::max() - 9) / 10) return badHead("invalid Content-Length");
            v = v * 10 + (c - '0');
          }
          if (seen_cl && v != content_length) return badHead("conflicting Content-Length");
          seen_cl = true;
          content_length = v;
        }
        break;
      case 17:
        if (equalsIgnoreCase(name, "transfer-encoding")) {
          ++te_count;
          te = value;
        }
        break;
      default:
        break;
    }
  }
  const int minor = head_.version_minor;
  // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400 (HTTP/1.0
  // predates the header).
  if (!seen_host && minor == 1) return badHead("missing Host header");

  head_.framing = content_length > 0 ? HttpBodyFraming::Length : HttpBodyFraming::None;
  head_.content_length = content_length > 0 ? static_cast<uint64_t>(content_length) : 0;
  if (te_count > 0) {
    // Request smuggling defences (RFC 9112 §6.1, §6.3).
    if (seen_cl) return badHead("Content-Length with Transfer-Encoding");
    if (minor == 0) return badHead("Transfer-Encoding in an HTTP/1.0 request");
    if (te_count > 1) return badHead("multiple Transfer-Encoding headers");
    if (!equalsIgnoreCase(te, "chunked")) {
      bool codings = !te.empty();
      forEachListElement(te, [&](std::string_view coding) { codings = codings && isToken(coding); });
      if (!codings) return badHead("invalid Transfer-Encoding");
      return headError(501, "Not implemented: Transfer-Encoding other than chunked");
    }
    head_.framing = HttpBodyFraming::Chunked;
  }
  head_.keep_alive = minor == 1 ? !conn_close : (conn_keep_alive && !conn_close);
  // What follows a CONNECT is tunnel data sent ahead of the answer, not a
  // request: the connection ends with the (refusing) response.
  if (method == "CONNECT") head_.keep_alive = false;
  head_.expect_continue = expect_continue && minor == 1;
  return true;
}

}  // namespace wfp
