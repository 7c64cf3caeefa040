// libcurl multi on libevent, in the shape of curl's docs/examples/hiperfifo.c:
// a socket callback that keeps one libevent event per curl socket, one timer
// for curl's timeouts, curl_multi_socket_action on every event, and a drain of
// curl_multi_info_read after each action. Easy handles are removed only
// outside libcurl callbacks (STYLE: never call curl from a curl callback).
//
// At most once: when a reused keep-alive connection dies before any response
// byte arrives, libcurl sends the request again on another connection by
// itself (Curl_retry_request in lib/transfer.c, "Connection died, retrying a
// fresh connect"), whatever the method, with or without a body, although the
// upstream may have received and run it: a run or a token fetch billed twice,
// a stream's single-use token replayed. So a request that is not
// UpstreamRequest::replayable refuses any second attempt from
// CURLOPT_PREREQFUNCTION, which libcurl calls before each attempt to send.
// A body from a read callback that cannot seek (CURL_SEEKFUNC_CANTSEEK) would
// not be enough: it fails the retry only once body bytes went out, so an empty
// POST or a GET would still go twice (measured with Debian 12's libcurl 7.88.1).
#include "proxy/upstream_curl.h"

#include <curl/curl.h>
#include <event2/event.h>

#if LIBCURL_VERSION_NUM < 0x075000
#error "libcurl 7.80.0 or later is needed (CURLOPT_PREREQFUNCTION)"
#endif

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include <spdlog/spdlog.h>

namespace wfp {

namespace {

struct Transfer {
  uint64_t id = 0;
  CURL* easy = nullptr;
  uint64_t easy_options = 0;  // the UpstreamOptions generation its easy handle was set up with
  // The request's header lines for CURLOPT_HTTPHEADER, in our own memory:
  // libcurl only reads the list, so one buffer and one array of nodes
  // replace a malloc'd node and a strdup'd line per header.
  std::string header_text;
  std::vector<curl_slist> header_nodes;
  UpstreamRequest request;
  UpstreamCallbacks callbacks;
  UpstreamHead head;
  bool head_delivered = false;
  bool cancelled = false;
  bool paused = false;
  int attempts = 0;             // times libcurl was about to send the request
  bool resend_refused = false;  // a second attempt was refused (not replayable)
  std::string first_error;      // why the first attempt's connection died
  std::chrono::steady_clock::time_point started;
  char error[CURL_ERROR_SIZE] = {};
};

long toMillis(double seconds) {
  if (!(seconds > 0)) return 0;
  return static_cast<long>(std::llround(seconds * 1000.0));
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return s;
}

UpstreamFailure classify(CURLcode code) {
  switch (code) {
    case CURLE_OK:
      return UpstreamFailure::None;
    case CURLE_OPERATION_TIMEDOUT:
      return UpstreamFailure::Timeout;
    default:
      return UpstreamFailure::Unavailable;
  }
}

}  // namespace

struct CurlUpstream::Impl {
  EventLoop& loop;
  UpstreamOptions options;
  CURLM* multi = nullptr;
  EventPtr timer;
  std::unordered_map<uint64_t, std::unique_ptr<Transfer>> transfers;
  uint64_t next_id = 1;
  int in_curl = 0;  // > 0 while inside curl_multi_socket_action (callbacks may run)
  // What it posts to the loop is dropped if the client goes first.
  Lifeline life{loop};

  struct SocketWatch {
    EventPtr ev;
    short what = 0;
  };

  Impl(EventLoop& l, UpstreamOptions o) : loop(l), options(o) {
    static const bool global_ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
    if (!global_ok) throw std::runtime_error("curl_global_init failed");
    multi = curl_multi_init();
    if (!multi) throw std::runtime_error("curl_multi_init failed");
    timer.reset(evtimer_new(loop.base(), &Impl::onTimer, this));
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, &Impl::onSocket);
    curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, this);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, &Impl::onTimerChange);
    curl_multi_setopt(multi, CURLMOPT_TIMERDATA, this);
    applyLimits();
  }

  ~Impl() {
    for (auto& [id, t] : transfers) {
      curl_multi_remove_handle(multi, t->easy);
      freeTransfer(*t);
    }
    transfers.clear();
    for (CURL* e : idle_easy) curl_easy_cleanup(e);
    idle_easy.clear();
    // curl_multi_cleanup may still call the socket callback: the events it
    // touches live in the loop, which outlives us.
    curl_multi_cleanup(multi);
    timer.reset();
  }

  void applyLimits() {
    curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, static_cast<long>(options.max_connections));
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, static_cast<long>(options.max_connections));
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, static_cast<long>(options.max_connections));
  }

  // The easy handle goes back to a small pool with its options as they are:
  // curl_easy_init() of a fresh one (a large zeroed struct and its buffers)
  // was a tenth of a miss, and curl_easy_reset() plus setting every option
  // again a further 5 %. What differs per transfer is set by start(); a
  // handle set up under older options (setOptions) is not pooled.
  void freeTransfer(Transfer& t) {
    if (t.easy) {
      if (idle_easy.size() < kMaxIdleEasy && t.easy_options == options_generation) {
        idle_easy.push_back(t.easy);  // connections stay with the multi
      } else {
        curl_easy_cleanup(t.easy);
      }
    }
    t.easy = nullptr;
  }
  static constexpr size_t kMaxIdleEasy = 64;
  std::vector<CURL*> idle_easy;
  uint64_t options_generation = 1;

  // What every transfer has in common, set once per easy handle.
  void setUp(CURL* e) const {
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    // The key goes to upstream.base_url only: no redirects, http(s) only,
    // the path exactly as the client wrote it (no dot-segment squashing).
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, options.tls_verify ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, options.tls_verify ? 2L : 0L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, toMillis(options.timeout_s));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, toMillis(options.connect_timeout_s));
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    // Bodies are relayed as they are: no transparent decoding.
    curl_easy_setopt(e, CURLOPT_HTTP_CONTENT_DECODING, 0L);
    curl_easy_setopt(e, CURLOPT_HTTP_TRANSFER_DECODING, 1L);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &Impl::onHeaderLine);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &Impl::onBody);
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, &Impl::onPrereq);
    if (no_proxy_env) curl_easy_setopt(e, CURLOPT_PROXY, "");
  }

  // CURLOPT_HTTPHEADER for r: exactly the headers we were given, and
  // libcurl's own defaults (Accept, Expect, a form Content-Type) suppressed
  // unless the request carries them. The list lives in t (see Transfer).
  static curl_slist* headerList(Transfer& t, const UpstreamRequest& r) {
    static char kNoAccept[] = "Accept:";
    static char kNoContentType[] = "Content-Type:";
    static char kNoExpect[] = "Expect:";
    bool has_accept = false, has_content_type = false;
    size_t bytes = 0;
    for (const auto& h : r.headers) {
      has_accept |= equalsIgnoreCase(h.name, "accept");
      has_content_type |= equalsIgnoreCase(h.name, "content-type");
      bytes += h.name.size() + 2 + h.value.size() + 1;
    }
    t.header_text.clear();
    t.header_text.reserve(bytes);  // no reallocation below: the nodes point into it
    t.header_nodes.clear();
    t.header_nodes.reserve(r.headers.size() + 3);
    for (const auto& h : r.headers) {
      size_t at = t.header_text.size();
      t.header_text += h.name;
      if (h.value.empty()) {
        t.header_text += ';';  // curl's syntax for a header with an empty value
      } else {
        t.header_text += ": ";
        t.header_text += h.value;
      }
      t.header_text += '\0';
      t.header_nodes.push_back(curl_slist{t.header_text.data() + at, nullptr});
    }
    if (!has_accept) t.header_nodes.push_back(curl_slist{kNoAccept, nullptr});
    if (!has_content_type) t.header_nodes.push_back(curl_slist{kNoContentType, nullptr});
    t.header_nodes.push_back(curl_slist{kNoExpect, nullptr});
    for (size_t i = 0; i + 1 < t.header_nodes.size(); ++i) t.header_nodes[i].next = &t.header_nodes[i + 1];
    return t.header_nodes.data();
  }
  // No proxy variable in the environment (read once): say so to libcurl,
  // which otherwise looks them all up again for every transfer.
  const bool no_proxy_env = !proxyInEnvironment();

  // --- libcurl → libevent ---------------------------------------------------

  static int onSocket(CURL*, curl_socket_t fd, int what, void* userp, void* socketp) noexcept {
    auto* self = static_cast<Impl*>(userp);
    auto* watch = static_cast<SocketWatch*>(socketp);
    if (what == CURL_POLL_REMOVE) {
      // May come for a socket never announced: a null watch is a no-op.
      delete watch;
      return 0;
    }
    short kind = static_cast<short>(((what & CURL_POLL_IN) ? EV_READ : 0) |
                                    ((what & CURL_POLL_OUT) ? EV_WRITE : 0) | EV_PERSIST);
    if (!watch) {
      watch = new SocketWatch;
      curl_multi_assign(self->multi, fd, watch);
    } else if (watch->what == kind) {
      return 0;
    }
    watch->ev.reset(event_new(self->loop.base(), fd, kind, &Impl::onSocketEvent, self));
    watch->what = kind;
    event_add(watch->ev.get(), nullptr);
    return 0;
  }

  static int onTimerChange(CURLM*, long timeout_ms, void* userp) noexcept {
    auto* self = static_cast<Impl*>(userp);
    if (timeout_ms < 0) {
      evtimer_del(self->timer.get());
      return 0;
    }
    timeval tv{timeout_ms / 1000, static_cast<suseconds_t>((timeout_ms % 1000) * 1000)};
    evtimer_add(self->timer.get(), &tv);
    return 0;
  }

  static void onSocketEvent(evutil_socket_t fd, short kind, void* arg) noexcept {
    auto* self = static_cast<Impl*>(arg);
    int action = ((kind & EV_READ) ? CURL_CSELECT_IN : 0) | ((kind & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    self->socketAction(fd, action);
  }

  static void onTimer(evutil_socket_t, short, void* arg) noexcept {
    static_cast<Impl*>(arg)->socketAction(CURL_SOCKET_TIMEOUT, 0);
  }

  void socketAction(curl_socket_t fd, int action) noexcept {
    int running = 0;
    ++in_curl;
    curl_multi_socket_action(multi, fd, action, &running);
    --in_curl;
    drainMessages();
  }

  void drainMessages() noexcept {
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
      if (msg->msg != CURLMSG_DONE) continue;
      CURL* easy = msg->easy_handle;
      CURLcode code = msg->data.result;  // msg dies with the handle: copy first
      Transfer* raw = nullptr;
      curl_easy_getinfo(easy, CURLINFO_PRIVATE, reinterpret_cast<char**>(&raw));
      if (!raw) continue;
      finish(raw->id, code);
    }
  }

  void finish(uint64_t id, CURLcode code) {
    auto it = transfers.find(id);
    if (it == transfers.end()) return;
    std::unique_ptr<Transfer> t = std::move(it->second);
    transfers.erase(it);
    curl_multi_remove_handle(multi, t->easy);
    UpstreamResult result;
    result.failure = classify(code);
    result.elapsed = std::chrono::steady_clock::now() - t->started;
    if (t->resend_refused) {
      result.failure = UpstreamFailure::Unavailable;
      result.detail = t->first_error + " on a reused connection after the request was sent; not sent again";
    }
    if (result.failure == UpstreamFailure::None && !t->head_delivered) {
      // A complete exchange always has a head; libcurl guarantees a status.
      deliverHead(*t);
    }
    result.head_received = t->head_delivered;
    if (code != CURLE_OK && result.detail.empty()) result.detail = t->error[0] ? t->error : curl_easy_strerror(code);
    auto callbacks = std::move(t->callbacks);
    freeTransfer(*t);
    if (!t->cancelled && callbacks.on_done) callbacks.on_done(result);
  }

  // --- per-transfer callbacks -----------------------------------------------

  static size_t onHeaderLine(char* data, size_t size, size_t n, void* arg) noexcept {
    auto* t = static_cast<Transfer*>(arg);
    size_t len = size * n;
    std::string_view line(data, len);
    if (line.rfind("HTTP/", 0) == 0) {
      // A new status line (also after 1xx): start the head again.
      t->head = UpstreamHead{};
      t->head.headers.reserve(16);  // one allocation for a usual head, not a doubling vector
      auto sp = line.find(' ');
      if (sp != std::string_view::npos) {
        std::string_view rest = line.substr(sp + 1);
        auto sp2 = rest.find(' ');
        std::string_view code = rest.substr(0, sp2);
        int status = 0;
        for (char c : code) {
          if (c < '0' || c > '9') break;
          status = status * 10 + (c - '0');
        }
        t->head.status = status;
        if (sp2 != std::string_view::npos) t->head.reason = std::string(trim(rest.substr(sp2 + 1)));
      }
      return len;
    }
    std::string_view trimmed = trim(line);
    if (trimmed.empty()) return len;  // end of a header block
    auto colon = trimmed.find(':');
    if (colon == std::string_view::npos || colon == 0) return len;
    t->head.headers.push_back(
        HttpHeader{std::string(trimmed.substr(0, colon)), std::string(trim(trimmed.substr(colon + 1)))});
    return len;
  }

  // Before each attempt to send the request, once the connection is made or
  // picked from the pool. A second call means libcurl is about to send it
  // again on a new connection because a reused one died (see the top).
  static int onPrereq(void* arg, char*, char*, int, int) noexcept {
    auto* t = static_cast<Transfer*>(arg);
    if (++t->attempts == 1 || t->request.replayable) {
      if (t->callbacks.on_sending && !t->cancelled) {
        try {
          t->callbacks.on_sending();
        } catch (const std::exception& e) {
          spdlog::error("upstream send hook failed: {}", e.what());
        } catch (...) {
          spdlog::error("upstream send hook failed");
        }
      }
      return CURL_PREREQFUNC_OK;
    }
    t->resend_refused = true;
    try {
      // libcurl keeps the first error in the buffer; an EOF leaves it empty.
      t->first_error = t->error[0] ? t->error : "connection closed";
    } catch (...) {
    }
    return CURL_PREREQFUNC_ABORT;  // the transfer ends with CURLE_ABORTED_BY_CALLBACK
  }

  static void deliverHead(Transfer& t) {
    if (t.head_delivered) return;
    t.head_delivered = true;
    if (t.head.status == 0) {
      long code = 0;
      curl_easy_getinfo(t.easy, CURLINFO_RESPONSE_CODE, &code);
      t.head.status = static_cast<int>(code);
    }
    if (!t.cancelled && t.callbacks.on_head) t.callbacks.on_head(t.head);
  }

  static size_t onBody(char* data, size_t size, size_t n, void* arg) noexcept {
    auto* t = static_cast<Transfer*>(arg);
    size_t len = size * n;
    if (t->cancelled) return 0;  // aborts the transfer; finish() cleans up
    try {
      deliverHead(*t);
      if (t->cancelled) return 0;
      if (len == 0 || !t->callbacks.on_data) return len;
      if (!t->callbacks.on_data(std::string_view(data, len))) {
        if (t->cancelled) return 0;
        t->paused = true;
        return CURL_WRITEFUNC_PAUSE;
      }
    } catch (const std::exception& e) {
      spdlog::error("upstream body callback failed: {}", e.what());
      return 0;
    }
    return t->cancelled ? 0 : len;
  }

  // --- API ------------------------------------------------------------------

  uint64_t start(UpstreamRequest request, UpstreamCallbacks callbacks) {
    auto t = std::make_unique<Transfer>();
    t->id = next_id++;
    t->request = std::move(request);
    t->callbacks = std::move(callbacks);
    t->started = std::chrono::steady_clock::now();
    CURL* e = nullptr;
    if (!idle_easy.empty()) {
      e = idle_easy.back();
      idle_easy.pop_back();
    } else {
      e = curl_easy_init();
      if (!e) throw std::runtime_error("curl_easy_init failed");
      setUp(e);
    }
    t->easy = e;
    t->easy_options = options_generation;
    const UpstreamRequest& r = t->request;
    curl_easy_setopt(e, CURLOPT_URL, r.url.c_str());
    curl_easy_setopt(e, CURLOPT_PRIVATE, t.get());
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->error);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t.get());
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t.get());
    curl_easy_setopt(e, CURLOPT_PREREQDATA, t.get());

    // The method, from a handle that may carry the previous transfer's:
    // HTTPGET and NOBODY 0 undo HEAD and a body, CUSTOMREQUEST is cleared.
    if (r.method == "HEAD") {
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, nullptr);
      curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (r.body.empty() && r.method != "POST" && r.method != "PUT" && r.method != "PATCH") {
      curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r.method == "GET" ? nullptr : r.method.c_str());
    } else {
      curl_easy_setopt(e, CURLOPT_NOBODY, 0L);
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, r.body.data());
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r.method == "POST" ? nullptr : r.method.c_str());
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headerList(*t, r));

    uint64_t id = t->id;
    Transfer* raw = t.get();
    transfers.emplace(id, std::move(t));
    if (CURLMcode rc = curl_multi_add_handle(multi, raw->easy); rc != CURLM_OK) {
      spdlog::error("upstream: cannot start a transfer: {}", curl_multi_strerror(rc));
      // Report asynchronously, like every other failure.
      life.post([this, id] { finish(id, CURLE_FAILED_INIT); });
    }
    return id;
  }

  void cancel(uint64_t id) {
    auto it = transfers.find(id);
    if (it == transfers.end()) return;
    // The callbacks stay alive until removal: cancel() may be running inside one.
    it->second->cancelled = true;
    if (in_curl > 0) {
      // Inside a libcurl callback: the write callback returns 0 next time, and
      // removal happens from the loop.
      life.post([this, id] { removeCancelled(id); });
    } else {
      removeCancelled(id);
    }
  }

  void removeCancelled(uint64_t id) {
    auto it = transfers.find(id);
    if (it == transfers.end()) return;
    std::unique_ptr<Transfer> t = std::move(it->second);
    transfers.erase(it);
    curl_multi_remove_handle(multi, t->easy);
    freeTransfer(*t);
  }

  void resume(uint64_t id) {
    auto it = transfers.find(id);
    if (it == transfers.end() || !it->second->paused) return;
    if (in_curl > 0) {
      life.post([this, id] { resume(id); });
      return;
    }
    Transfer& t = *it->second;
    t.paused = false;
    ++in_curl;
    // May deliver buffered data synchronously through onBody.
    curl_easy_pause(t.easy, CURLPAUSE_CONT);
    --in_curl;
    drainMessages();
  }
};

CurlUpstream::CurlUpstream(EventLoop& loop, UpstreamOptions options)
    : impl_(std::make_unique<Impl>(loop, options)) {}

CurlUpstream::~CurlUpstream() = default;

uint64_t CurlUpstream::start(UpstreamRequest request, UpstreamCallbacks callbacks) {
  return impl_->start(std::move(request), std::move(callbacks));
}

void CurlUpstream::cancel(uint64_t id) { impl_->cancel(id); }
void CurlUpstream::resume(uint64_t id) { impl_->resume(id); }
size_t CurlUpstream::active() const { return impl_->transfers.size(); }

void CurlUpstream::setOptions(const UpstreamOptions& options) {
  impl_->options = options;
  ++impl_->options_generation;  // pooled handles carry the old ones
  for (CURL* e : impl_->idle_easy) curl_easy_cleanup(e);
  impl_->idle_easy.clear();
  impl_->applyLimits();
}

bool proxyInEnvironment() {
  static const bool set = [] {
    for (const char* v : {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"}) {
      if (std::getenv(v)) return true;
    }
    return false;
  }();
  return set;
}

}  // namespace wfp
