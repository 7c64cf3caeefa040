// Redis client over hiredis 0.14's async API, on our libevent loop.
//
// hiredis 0.14 facts this file is built around (async.c):
// * Every reply callback runs exactly once: with the reply, or with NULL when
//   the context is freed (disconnect, error, redisAsyncFree).
// * A failed connect calls onConnect(REDIS_ERR) and then frees the context
//   itself; a lost connection calls onDisconnect and frees it itself. Those
//   are the only two ways hiredis frees a context on its own.
// * redisAsyncFree must not run inside one of the context's own callbacks
//   (onConnect in particular is not guarded by REDIS_IN_CALLBACK), so when we
//   drop a connection we detach it ("zombie") and free it on the next pass.
// * 0.14 has no command or connect timeouts: we keep our own deadlines.
// * In subscribed mode a PING reply cannot be routed (0.14 looks "pong" up as
//   a pattern), so the pub/sub connection is never probed; it is dropped
//   together with the command connection when the server stops answering.
//
// State of the command connection:
//
//   Idle --connect--> Connecting --TCP up--> Handshaking --PONG--> Ready
//     ^                   |   (AUTH, SELECT, PING pipelined)    |   ^
//     |                   | fail / connect deadline             |   | probe PONG
//     +---- backoff <-----+-------------------------------------+   |
//     ^                                          command timeout v   |
//     +---------------- no reply for stall_limit --------------- Stalled
//
// Only Ready sends commands; everything else fails them on the next pass.
// Pending commands live in one map id -> callback; hiredis' privdata carries
// the id (never a pointer), so a late reply or a NULL reply for a command we
// already answered finds nothing and is ignored. ac->data points to the Impl,
// which outlives every context it owns (the destructor frees them first,
// after clearing ac->data so their final NULL callbacks are ignored).
#include "proxy/redis_client.h"
#include "proxy/redis_commands.h"

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <limits>
#include <unordered_map>
#include <utility>

#include <spdlog/spdlog.h>

namespace wfp {

// ---------------------------------------------------------------------------
// The client

namespace {

using SteadyClock = std::chrono::steady_clock;
using std::chrono::duration_cast;
using std::chrono::microseconds;
using std::chrono::milliseconds;

constexpr milliseconds kBackoffMin{100};
constexpr milliseconds kBackoffMax{5000};
constexpr milliseconds kProbeInterval{200};
constexpr size_t kMaxPending = 10000;

RedisReply copyReply(const redisReply* r) {
  RedisReply out;
  switch (r->type) {
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::Type::Status;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = RedisReply::Type::Error;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::String;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::Integer;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::Type::Array;
      out.elements.reserve(r->elements);
      for (size_t i = 0; i < r->elements; ++i) out.elements.push_back(copyReply(r->element[i]));
      break;
    case REDIS_REPLY_NIL:
    default:
      out.type = RedisReply::Type::Nil;
      break;
  }
  return out;
}

// Internal (non-user) replies carry (generation, link, kind) in privdata.
enum class Kind : uintptr_t { Auth = 1, Select = 2, Handshake = 3, Probe = 4, SubAuth = 5, Subscribe = 6 };

void* packInternal(uint64_t gen, bool sub, Kind kind) {
  return reinterpret_cast<void*>(static_cast<uintptr_t>((gen << 4) | (sub ? 8u : 0u) | static_cast<uintptr_t>(kind)));
}

struct Internal {
  uint64_t gen;
  bool sub;
  Kind kind;
};

Internal unpackInternal(void* p) {
  auto v = reinterpret_cast<uintptr_t>(p);
  return Internal{v >> 4, (v & 8u) != 0, static_cast<Kind>(v & 7u)};
}

bool isAuthError(std::string_view msg) {
  return msg.starts_with("NOAUTH") || msg.starts_with("WRONGPASS") || msg.starts_with("ERR invalid password") ||
         msg.starts_with("ERR invalid username-password");
}

std::string contextError(const redisAsyncContext* ac) {
  if (ac->c.err != 0 && ac->c.errstr[0] != '\0') return ac->c.errstr;
  if (ac->errstr != nullptr && ac->errstr[0] != '\0') return ac->errstr;
  return "connection closed";
}

template <typename Fn>
void guarded(const char* what, Fn&& fn) noexcept {
  try {
    fn();
  } catch (const std::exception& e) {
    spdlog::error("redis: uncaught exception in {}: {}", what, e.what());
  } catch (...) {
    spdlog::error("redis: uncaught exception in {}", what);
  }
}

// State of a connection (see the diagram at the top).
enum class State { Idle, Connecting, Handshaking, Ready, Stalled };

// One of the two connections (commands, pub/sub).
struct Link {
  bool sub = false;
  redisAsyncContext* ac = nullptr;
  uint64_t gen = 0;  // bumped on every connect and close: stale replies don't match
  State state = State::Idle;
  milliseconds backoff = kBackoffMin;
  std::unique_ptr<Timer> reconnect_timer;
  std::unique_ptr<Timer> connect_timer;  // deadline for connect + handshake
  int outstanding = 0;                   // replies hiredis still owes us on `ac`
  SteadyClock::time_point last_progress;       // last reply, or first send after silence
  bool probe_in_flight = false;
};

// host:port or unix:path, for logs (never the password).
std::string endpointName(const RedisUrl& url) {
  if (!url.unix_path.empty()) return "unix:" + url.unix_path;
  if (url.host.find(':') != std::string::npos) return "[" + url.host + "]:" + std::to_string(url.port);
  return url.host + ":" + std::to_string(url.port);
}

}  // namespace

struct RedisClient::Impl {
  EventLoop& loop;
  RedisOptions opts;
  std::string where;  // host:port or unix:path, for logs (never the password)
  milliseconds timeout;
  milliseconds connect_timeout;
  milliseconds stall_limit;

  Link cmd;
  Link sub;
  std::vector<redisAsyncContext*> zombies;  // detached, freed on the next pass

  RedisCommands commands;  // in hand: sent, or failing on the next pass

  std::unordered_map<std::string, std::shared_ptr<MessageCallback>> channels;
  std::function<void()> on_connect;

  // False once the destructor started: code that ran a user callback checks
  // it before touching members again (a callback may destroy the client).
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);

  bool up = false;
  bool outage_logged = false;
  bool auth_logged = false;
  bool nopass_logged = false;

  Timer reap_timer;
  Timer probe_timer;

  Impl(EventLoop& l, RedisOptions o)
      : loop(l),
        opts(std::move(o)),
        where(endpointName(opts.url)),
        timeout(std::max(1, opts.timeout_ms)),
        connect_timeout(std::max<milliseconds::rep>(1000, 4 * timeout.count())),
        stall_limit(std::max<milliseconds::rep>(2000, 5 * timeout.count())),
        commands(l, timeout, [this] { stall(); }),
        reap_timer(l, [this] { reapZombies(); }),
        probe_timer(l, [this] { probeTick(); }) {
    sub.sub = true;
    for (Link* link : {&cmd, &sub}) {
      link->reconnect_timer = std::make_unique<Timer>(loop, [this, link] { connect(*link); });
      link->connect_timer = std::make_unique<Timer>(loop, [this, link] { connectTimedOut(*link); });
    }
    connect(cmd);
  }

  ~Impl() {
    *alive = false;
    // Pending callbacks are dropped. Clearing ac->data first makes the NULL
    // callbacks redisAsyncFree runs (and onDisconnect) no-ops.
    for (Link* link : {&cmd, &sub}) {
      if (link->ac) {
        link->ac->data = nullptr;
        redisAsyncFree(link->ac);
        link->ac = nullptr;
      }
    }
    reapZombies();
    commands.clear();
  }

  // --- connections ---------------------------------------------------------

  void connect(Link& link) {
    if (link.ac) return;
    if (link.sub && channels.empty()) {
      link.state = State::Idle;  // connected lazily by the next subscribe()
      return;
    }
    ++link.gen;
    redisAsyncContext* ac = opts.url.unix_path.empty() ? redisAsyncConnect(opts.url.host.c_str(), opts.url.port)
                                                      : redisAsyncConnectUnix(opts.url.unix_path.c_str());
    if (ac == nullptr) {
      linkFailed(link, "cannot allocate a connection");
      return;
    }
    if (ac->err) {
      std::string err = contextError(ac);
      redisAsyncFree(ac);  // never attached: no callbacks run
      linkFailed(link, "connect to " + where + " failed: " + err);
      return;
    }
    ac->data = this;
    if (redisLibeventAttach(ac, loop.base()) != REDIS_OK) {
      redisAsyncFree(ac);
      linkFailed(link, "cannot attach to the event loop");
      return;
    }
    redisAsyncSetConnectCallback(ac, &Impl::onConnectC);
    redisAsyncSetDisconnectCallback(ac, &Impl::onDisconnectC);
    link.ac = ac;
    link.state = State::Connecting;
    link.outstanding = 0;
    link.probe_in_flight = false;
    link.connect_timer->start(connect_timeout);
  }

  // Detach a live context (it may be inside one of its own callbacks) and
  // free it on the next loop pass.
  void detach(Link& link) {
    if (!link.ac) return;
    zombies.push_back(link.ac);
    link.ac = nullptr;
    if (!reap_timer.pending()) reap_timer.start(microseconds(0));
  }

  void reapZombies() {
    auto batch = std::move(zombies);
    zombies.clear();
    for (redisAsyncContext* ac : batch) {
      ac->data = nullptr;
      redisAsyncFree(ac);
    }
  }

  bool forgetZombie(const redisAsyncContext* ac) {
    auto it = std::find(zombies.begin(), zombies.end(), ac);
    if (it == zombies.end()) return false;
    zombies.erase(it);
    return true;
  }

  Link* linkOf(const redisAsyncContext* ac) {
    if (ac == nullptr) return nullptr;
    if (ac == cmd.ac) return &cmd;
    if (ac == sub.ac) return &sub;
    return nullptr;
  }

  // We give up on a connection that is still open (timeouts, AUTH failure).
  void closeLink(Link& link, const std::string& reason) {
    detach(link);
    linkFailed(link, reason);
  }

  // The link has no context any more (hiredis freed it, or we detached it):
  // fail what was sent on it and try again after the backoff.
  void linkFailed(Link& link, const std::string& reason) {
    ++link.gen;
    link.state = State::Idle;
    link.outstanding = 0;
    link.probe_in_flight = false;
    link.connect_timer->cancel();
    link.reconnect_timer->start(link.backoff);
    auto delay = link.backoff;
    link.backoff = std::min(kBackoffMax, link.backoff * 2);
    if (link.sub) {
      spdlog::debug("redis: pub/sub retry in {} ms ({})", delay.count(), reason);
      return;
    }
    probe_timer.cancel();
    spdlog::debug("redis: retry in {} ms ({})", delay.count(), reason);
    auto guard = alive;
    markDown(reason);
    if (*guard) commands.failSent();
  }

  void connectTimedOut(Link& link) {
    if (link.state != State::Connecting && link.state != State::Handshaking) return;
    closeLink(link, "no answer from " + where + " within " + std::to_string(connect_timeout.count()) +
                        " ms of connecting");
  }

  void onConnect(redisAsyncContext* ac, int status) {
    Link* link = linkOf(ac);
    if (!link) {
      if (status != REDIS_OK) forgetZombie(ac);  // hiredis frees it now
      return;
    }
    if (status != REDIS_OK) {
      std::string err = contextError(ac);
      link->ac = nullptr;  // hiredis frees it when we return
      linkFailed(*link, "connect to " + where + " failed: " + err);
      return;
    }
    link->state = State::Handshaking;
    // Pipelined: AUTH, SELECT, then PING whose PONG means all of it is done.
    // On the pub/sub connection: AUTH, then SUBSCRIBE (sent from its reply).
    if (!opts.url.password.empty()) {
      const char* argv[] = {"AUTH", opts.url.password.data()};
      size_t lens[] = {4, opts.url.password.size()};
      sendInternal(*link, link->sub ? Kind::SubAuth : Kind::Auth, 2, argv, lens);
    } else if (link->sub) {
      subReady(*link);
      return;
    }
    if (link->sub) return;
    if (opts.url.db != 0) {
      std::string db = std::to_string(opts.url.db);
      const char* argv[] = {"SELECT", db.c_str()};
      size_t lens[] = {6, db.size()};
      sendInternal(*link, Kind::Select, 2, argv, lens);
    }
    const char* argv[] = {"PING"};
    size_t lens[] = {4};
    sendInternal(*link, Kind::Handshake, 1, argv, lens);
  }

  void onDisconnect(const redisAsyncContext* ac) {
    Link* link = linkOf(ac);
    if (!link) {
      forgetZombie(ac);
      return;
    }
    std::string err = contextError(ac);
    link->ac = nullptr;  // hiredis frees it when we return
    linkFailed(*link, "connection to " + where + " lost: " + err);
  }

  void sendInternal(Link& link, Kind kind, int argc, const char** argv, const size_t* lens) {
    if (redisAsyncCommandArgv(link.ac, &Impl::onInternalReplyC, packInternal(link.gen, link.sub, kind), argc, argv,
                              lens) == REDIS_OK) {
      noteSent(link);
    }
  }

  void noteSent(Link& link) {
    if (link.outstanding++ == 0) link.last_progress = SteadyClock::now();
  }

  void noteReply(Link& link) {
    if (link.outstanding > 0) --link.outstanding;
    link.last_progress = SteadyClock::now();
  }

  void onInternalReply(redisAsyncContext* ac, redisReply* r, void* privdata) {
    Internal in = unpackInternal(privdata);
    Link& link = in.sub ? sub : cmd;
    if (ac != link.ac || in.gen != link.gen || r == nullptr) return;  // stale, or being freed
    noteReply(link);
    std::string_view err = r->type == REDIS_REPLY_ERROR ? std::string_view(r->str, r->len) : std::string_view();
    bool is_error = r->type == REDIS_REPLY_ERROR;
    switch (in.kind) {
      case Kind::Auth:
      case Kind::SubAuth:
        if (is_error && (err.find("without any password configured") != std::string_view::npos ||
                         err.find("no password is set") != std::string_view::npos)) {
          // A password is configured but the server has none: harmless.
          if (!nopass_logged) {
            nopass_logged = true;
            spdlog::warn("redis: a password is configured but {} requires none", where);
          }
        } else if (is_error) {
          authFailed(link, err);
          return;
        }
        if (in.kind == Kind::SubAuth) subReady(link);
        return;
      case Kind::Select:
        if (is_error) {
          if (isAuthError(err)) {
            authFailed(link, err);
          } else {
            closeLink(link, "SELECT " + std::to_string(opts.url.db) + " failed: " + std::string(err));
          }
        }
        return;
      case Kind::Handshake:
        if (is_error) {
          if (isAuthError(err)) {
            authFailed(link, err);
          } else {
            closeLink(link, "PING failed: " + std::string(err));
          }
          return;
        }
        commandReady();
        return;
      case Kind::Probe:
        link.probe_in_flight = false;
        if (!is_error && cmd.state == State::Stalled) {
          cmd.state = State::Ready;
          probe_timer.cancel();
          markUp(where + " answering again", false);
        }
        return;
      case Kind::Subscribe:
        return;
    }
  }

  void authFailed(Link& link, std::string_view server_message) {
    if (!link.sub && !auth_logged) {
      auth_logged = true;
      outage_logged = true;  // this is the outage's warning
      spdlog::error(
          "redis: authentication failed at {} ({}): check the password in redis.url; requests continue "
          "without Redis",
          where, server_message.substr(0, 200));
    }
    closeLink(link, "authentication failed");
  }

  void commandReady() {
    cmd.state = State::Ready;
    cmd.connect_timer->cancel();
    cmd.backoff = kBackoffMin;
    auth_logged = false;
    markUp("connected to " + where + (opts.url.db != 0 ? " db " + std::to_string(opts.url.db) : std::string()), true);
  }

  // `reconnected`: a new connection (runs the on_connect hook), rather than
  // a stalled one answering again.
  void markUp(const std::string& what, bool reconnected) {
    if (up) return;
    up = true;
    outage_logged = false;
    spdlog::info("redis: up ({})", what);
    auto guard = alive;
    if (reconnected && on_connect) guarded("redis on_connect hook", on_connect);
    if (*guard && opts.on_state) guarded("redis on_state", [&] { opts.on_state(true); });
  }

  void markDown(const std::string& reason) {
    bool was_up = up;
    up = false;
    if (!outage_logged) {
      outage_logged = true;
      spdlog::warn("redis: down ({}), requests continue without it", reason);
    }
    if (was_up && opts.on_state) guarded("redis on_state", [&] { opts.on_state(false); });
  }

  // --- the pub/sub connection ---------------------------------------------

  void subReady(Link& link) {
    link.state = State::Ready;
    link.connect_timer->cancel();
    link.backoff = kBackoffMin;
    spdlog::debug("redis: pub/sub connected to {}", where);
    if (channels.empty()) return;
    std::vector<const char*> argv{"SUBSCRIBE"};
    std::vector<size_t> lens{9};
    for (const auto& [channel, cb] : channels) {
      argv.push_back(channel.data());
      lens.push_back(channel.size());
    }
    redisAsyncCommandArgv(link.ac, &Impl::onSubReplyC, packInternal(link.gen, true, Kind::Subscribe),
                          static_cast<int>(argv.size()), argv.data(), lens.data());
  }

  void sendSub(const char* verb, const std::string& channel) {
    if (sub.state != State::Ready || !sub.ac) return;
    const char* argv[] = {verb, channel.data()};
    size_t lens[] = {std::char_traits<char>::length(verb), channel.size()};
    // UNSUBSCRIBE registers no callback in hiredis 0.14; its confirmation is
    // routed to the channel's SUBSCRIBE callback (ignored there).
    redisAsyncCommandArgv(sub.ac, &Impl::onSubReplyC, packInternal(sub.gen, true, Kind::Subscribe), 2, argv, lens);
  }

  void onSubReply(redisAsyncContext* ac, redisReply* r) {
    if (ac != sub.ac || r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements < 3) return;
    const redisReply* kind = r->element[0];
    const redisReply* ch = r->element[1];
    const redisReply* msg = r->element[2];
    if (kind->type != REDIS_REPLY_STRING || ch->type != REDIS_REPLY_STRING || msg->type != REDIS_REPLY_STRING) return;
    if (std::string_view(kind->str, kind->len) != "message") return;
    std::string channel(ch->str, ch->len);
    auto it = channels.find(channel);
    if (it == channels.end()) return;  // unsubscribed while the message was on its way
    std::shared_ptr<MessageCallback> cb = it->second;  // survives an unsubscribe from inside
    std::string message(msg->str, msg->len);
    guarded("redis message callback", [&] { (*cb)(channel, message); });
  }

  // --- commands ------------------------------------------------------------

  uint64_t command(std::vector<std::string> argv, Callback callback) {
    uint64_t id = commands.nextId();
    if (cmd.state != State::Ready || !cmd.ac || argv.empty() || commands.size() >= kMaxPending) {
      commands.failSoon(id, std::move(callback));
      return id;
    }
    std::vector<const char*> args;
    std::vector<size_t> lens;
    args.reserve(argv.size());
    lens.reserve(argv.size());
    for (const auto& a : argv) {
      args.push_back(a.data());
      lens.push_back(a.size());
    }
    if (redisAsyncCommandArgv(cmd.ac, &Impl::onCommandReplyC, reinterpret_cast<void*>(static_cast<uintptr_t>(id)),
                              static_cast<int>(args.size()), args.data(), lens.data()) != REDIS_OK) {
      commands.failSoon(id, std::move(callback));
      return id;
    }
    noteSent(cmd);
    commands.sent(id, std::move(callback));
    return id;
  }

  void onCommandReply(redisAsyncContext* ac, redisReply* r, uint64_t id) {
    // NULL: the context is being freed; its onDisconnect fails what is left,
    // once our state says down. A reply on a zombie was already answered.
    if (ac != cmd.ac || r == nullptr) return;
    noteReply(cmd);
    if (!commands.waiting(id)) return;  // timed out or cancelled: a late reply
    commands.complete(id, copyReply(r));
  }

  // A command timed out: the server may be paused with the TCP connection
  // open. Stop sending; probe with PING; give up on the connection after
  // stall_limit without any reply.
  void stall() {
    if (cmd.state != State::Ready) return;
    cmd.state = State::Stalled;
    probe_timer.start(kProbeInterval);
    markDown("no reply from " + where + " within " + std::to_string(timeout.count()) + " ms");
  }

  void probeTick() {
    if (cmd.state != State::Stalled || !cmd.ac) return;
    if (cmd.outstanding > 0 && SteadyClock::now() - cmd.last_progress > stall_limit) {
      std::string reason = "no reply from " + where + " for " + std::to_string(stall_limit.count()) + " ms";
      auto guard = alive;
      closeLink(cmd, reason + ", reconnecting");
      if (!*guard) return;
      // The pub/sub connection cannot be probed (see the top): a server that
      // stopped answering commands is not delivering messages either.
      if (sub.ac) closeLink(sub, reason);
      return;
    }
    if (!cmd.probe_in_flight) {
      const char* argv[] = {"PING"};
      size_t lens[] = {4};
      sendInternal(cmd, Kind::Probe, 1, argv, lens);
      cmd.probe_in_flight = true;
    }
    probe_timer.start(kProbeInterval);
  }

  // --- pub/sub API ---------------------------------------------------------

  void subscribe(const std::string& channel, MessageCallback callback) {
    bool inserted = channels.insert_or_assign(channel, std::make_shared<MessageCallback>(std::move(callback))).second;
    if (!inserted) return;  // new callback, same subscription
    if (sub.state == State::Ready) {
      sendSub("SUBSCRIBE", channel);
    } else if (sub.state == State::Idle && !sub.ac && !sub.reconnect_timer->pending()) {
      connect(sub);
    }
  }

  void unsubscribe(const std::string& channel) {
    if (channels.erase(channel) == 0) return;
    sendSub("UNSUBSCRIBE", channel);
  }

  // --- C trampolines: capture-less, noexcept ---------------------------------

  static Impl* self(const redisAsyncContext* ac) { return ac ? static_cast<Impl*>(ac->data) : nullptr; }

  static void onConnectC(const redisAsyncContext* ac, int status) noexcept {
    if (Impl* impl = self(ac)) {
      guarded("redis connect callback", [&] { impl->onConnect(const_cast<redisAsyncContext*>(ac), status); });
    }
  }

  static void onDisconnectC(const redisAsyncContext* ac, int) noexcept {
    if (Impl* impl = self(ac)) guarded("redis disconnect callback", [&] { impl->onDisconnect(ac); });
  }

  static void onCommandReplyC(redisAsyncContext* ac, void* reply, void* privdata) noexcept {
    if (Impl* impl = self(ac)) {
      guarded("redis reply callback", [&] {
        impl->onCommandReply(ac, static_cast<redisReply*>(reply), reinterpret_cast<uintptr_t>(privdata));
      });
    }
  }

  static void onInternalReplyC(redisAsyncContext* ac, void* reply, void* privdata) noexcept {
    if (Impl* impl = self(ac)) {
      guarded("redis reply callback", [&] { impl->onInternalReply(ac, static_cast<redisReply*>(reply), privdata); });
    }
  }

  static void onSubReplyC(redisAsyncContext* ac, void* reply, void*) noexcept {
    if (Impl* impl = self(ac)) {
      guarded("redis message callback", [&] { impl->onSubReply(ac, static_cast<redisReply*>(reply)); });
    }
  }
};

RedisClient::RedisClient(EventLoop& loop, RedisOptions options)
    : impl_(std::make_unique<Impl>(loop, std::move(options))) {}

RedisClient::~RedisClient() = default;

bool RedisClient::up() const { return impl_->up; }
size_t RedisClient::pendingCommands() const { return impl_->commands.size(); }
void RedisClient::flush() {
  if (impl_->cmd.state != State::Ready || !impl_->cmd.ac) return;
  int done = 0;
  // A plain non-blocking write of hiredis's output buffer: no callback runs
  // here; an error stays in the context and hiredis's write event handles it.
  (void)redisBufferWrite(&impl_->cmd.ac->c, &done);
}

uint64_t RedisClient::command(std::vector<std::string> argv, Callback callback) {
  return impl_->command(std::move(argv), std::move(callback));
}

void RedisClient::cancel(uint64_t id) { impl_->commands.cancel(id); }

void RedisClient::subscribe(const std::string& channel, MessageCallback callback) {
  impl_->subscribe(channel, std::move(callback));
}

void RedisClient::unsubscribe(const std::string& channel) { impl_->unsubscribe(channel); }

void RedisClient::setOnConnect(std::function<void()> fn) { impl_->on_connect = std::move(fn); }

}  // namespace wfp
