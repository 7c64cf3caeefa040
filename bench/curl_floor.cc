// curl_floor: the least a libcurl-multi client on libevent can spend per upstream transfer, to set the
// proxy's miss cost against (bench/profile-miss --floor, docs/performance.md).
//
//   g++ -std=c++20 -O2 -o curl_floor bench/curl_floor.cc $(pkg-config --cflags --libs libcurl libevent)
//   curl_floor --url http://127.0.0.1:PORT/api/v1/run/wf_x --auth "Bearer KEY" --count N [--conns C]
//
// The shape of curl's docs/examples/hiperfifo.c, trimmed to what a proxy cannot do without: C transfers
// at a time on keep-alive connections, each a POST of a different small JSON body with two request
// headers, the response head and body collected. Easy handles are made once and reused, their options
// set once (only the body changes per transfer); the socket events are kept and modified in place. It
// prints transfers, failures and the process CPU (utime + stime) per transfer. Under callgrind the
// instructions per transfer are the floor of any design that keeps libcurl (and libevent) per transfer.
#include <curl/curl.h>
#include <event2/event.h>
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Options {
  std::string url, auth;
  long count = 1000;
  int conns = 8;
} opt;

struct Sock {
  event* ev = nullptr;
  int what = 0;
};

struct Slot {
  CURL* easy = nullptr;
  std::string body, response;
  size_t header_bytes = 0;
};

event_base* base = nullptr;
CURLM* multi = nullptr;
event* timer = nullptr;
std::vector<Slot> slots;
long started = 0, finished = 0, failed = 0;

void action(curl_socket_t fd, int flags);

void onEvent(evutil_socket_t fd, short kind, void*) {
  action(fd, ((kind & EV_READ) ? CURL_CSELECT_IN : 0) | ((kind & EV_WRITE) ? CURL_CSELECT_OUT : 0));
}
void onTimer(evutil_socket_t, short, void*) { action(CURL_SOCKET_TIMEOUT, 0); }

int onSocket(CURL*, curl_socket_t fd, int what, void*, void* sockp) {
  auto* s = static_cast<Sock*>(sockp);
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      event_free(s->ev);
      delete s;
    }
    return 0;
  }
  short kind = static_cast<short>(((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0) |
                                  EV_PERSIST);
  if (!s) {
    s = new Sock;
    s->ev = event_new(base, fd, kind, onEvent, nullptr);
    curl_multi_assign(multi, fd, s);
  } else if (s->what == what) {
    return 0;
  } else {
    event_del(s->ev);
    event_assign(s->ev, base, fd, kind, onEvent, nullptr);
  }
  s->what = what;
  event_add(s->ev, nullptr);
  return 0;
}

int onTimerChange(CURLM*, long ms, void*) {
  if (ms < 0) {
    evtimer_del(timer);
  } else {
    timeval tv{ms / 1000, static_cast<suseconds_t>((ms % 1000) * 1000)};
    evtimer_add(timer, &tv);
  }
  return 0;
}

size_t onHeader(char*, size_t size, size_t n, void* arg) {
  static_cast<Slot*>(arg)->header_bytes += size * n;
  return size * n;
}
size_t onBody(char* data, size_t size, size_t n, void* arg) {
  static_cast<Slot*>(arg)->response.append(data, size * n);
  return size * n;
}

void launch(Slot& s) {
  s.body = "{\"floor\":" + std::to_string(started++) + "}";
  s.response.clear();
  s.header_bytes = 0;
  curl_easy_setopt(s.easy, CURLOPT_POSTFIELDS, s.body.data());
  curl_easy_setopt(s.easy, CURLOPT_POSTFIELDSIZE, static_cast<long>(s.body.size()));
  curl_multi_add_handle(multi, s.easy);
}

void action(curl_socket_t fd, int flags) {
  int running = 0;
  curl_multi_socket_action(multi, fd, flags, &running);
  int left = 0;
  while (CURLMsg* m = curl_multi_info_read(multi, &left)) {
    if (m->msg != CURLMSG_DONE) continue;
    CURL* e = m->easy_handle;
    long code = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    if (m->data.result != CURLE_OK || code != 200) ++failed;
    ++finished;
    Slot* s = nullptr;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, reinterpret_cast<char**>(&s));
    curl_multi_remove_handle(multi, e);
    if (started < opt.count) launch(*s);
  }
  if (finished >= opt.count) event_base_loopbreak(base);
}

double cpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i], v = argv[i + 1];
    if (a == "--url") opt.url = v;
    else if (a == "--auth") opt.auth = v;
    else if (a == "--count") opt.count = std::atol(v.c_str());
    else if (a == "--conns") opt.conns = std::atoi(v.c_str());
    else { std::fprintf(stderr, "curl_floor: unknown option %s\n", a.c_str()); return 2; }
  }
  if (opt.url.empty() || opt.count <= 0 || opt.conns <= 0) {
    std::fprintf(stderr, "usage: curl_floor --url URL [--auth VALUE] --count N [--conns C]\n");
    return 2;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  base = event_base_new();
  multi = curl_multi_init();
  timer = evtimer_new(base, onTimer, nullptr);
  curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, onSocket);
  curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, onTimerChange);
  curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, static_cast<long>(opt.conns));
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, "Content-Type: application/json");
  if (!opt.auth.empty()) headers = curl_slist_append(headers, ("Authorization: " + opt.auth).c_str());
  headers = curl_slist_append(headers, "Accept:");
  headers = curl_slist_append(headers, "Expect:");
  slots.resize(static_cast<size_t>(opt.conns));
  for (Slot& s : slots) {
    s.easy = curl_easy_init();
    curl_easy_setopt(s.easy, CURLOPT_URL, opt.url.c_str());
    curl_easy_setopt(s.easy, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(s.easy, CURLOPT_PRIVATE, &s);
    curl_easy_setopt(s.easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(s.easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(s.easy, CURLOPT_PROXY, "");
    curl_easy_setopt(s.easy, CURLOPT_HEADERFUNCTION, onHeader);
    curl_easy_setopt(s.easy, CURLOPT_HEADERDATA, &s);
    curl_easy_setopt(s.easy, CURLOPT_WRITEFUNCTION, onBody);
    curl_easy_setopt(s.easy, CURLOPT_WRITEDATA, &s);
  }
  double cpu0 = cpuSeconds();
  for (Slot& s : slots) {
    if (started < opt.count) launch(s);
  }
  event_base_dispatch(base);
  double cpu = cpuSeconds() - cpu0;
  std::printf("transfers=%ld failed=%ld cpu_us_per_transfer=%.2f\n", finished, failed, cpu * 1e6 / finished);
  for (Slot& s : slots) curl_easy_cleanup(s.easy);
  curl_slist_free_all(headers);
  curl_multi_cleanup(multi);
  event_free(timer);
  event_base_free(base);
  return failed == 0 ? 0 : 1;
}
