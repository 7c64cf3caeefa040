// RedisClient against a real redis-server: each test starts its own on a
// free loopback port in a temp dir and kills it by PID at the end.
#include "proxy/redis_client.h"
#include "tests/unit/redis_server.h"
#include "tests/unit/run_loop.h"

#include <gtest/gtest.h>

#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <sstream>
#include <thread>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

extern char** environ;

namespace wfp {
namespace {

using test_redis::canConnect;
using test_redis::freePort;
using test_redis::RedisServer;
using test_redis::redisServerInstalled;

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

using test_loop::runUntil;

using test_loop::runFor;

// Captures everything logged through spdlog's default logger.
class LogCapture {
 public:
  LogCapture() : previous_(spdlog::default_logger()) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    auto logger = std::make_shared<spdlog::logger>("test", sink);
    logger->set_level(spdlog::level::trace);
    spdlog::set_default_logger(logger);
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  std::string text() const { return out_.str(); }

 private:
  std::shared_ptr<spdlog::logger> previous_;
  std::ostringstream out_;
};

// --- URL parsing -------------------------------------------------------------
// parseRedisUrl() lives in config.cc, the one grammar of redis.url: the
// loader parses the URL and the client is given RedisConfig::endpoint.

TEST(ParseRedisUrl, AcceptsTheDocumentedForms) {
  struct Case {
    const char* url;
    std::string host;
    int port;
    std::string unix_path;
    std::string password;
    int db;
  };
  const Case cases[] = {
      {"redis://127.0.0.1:6379/0", "127.0.0.1", 6379, "", "", 0},
      {"redis://localhost", "localhost", 6379, "", "", 0},
      {"redis://localhost/", "localhost", 6379, "", "", 0},
      {"redis://redis.internal:6380/3", "redis.internal", 6380, "", "", 3},
      {"REDIS://h:1/15", "h", 1, "", "", 15},
      {"redis://[::1]:7000/2", "::1", 7000, "", "", 2},
      {"redis://[::1]", "::1", 6379, "", "", 0},
      {"redis://:s3cret@h:6379/1", "h", 6379, "", "s3cret", 1},
      {"redis://:p%40ss%20w%3Ard@h", "h", 6379, "", "p@ss w:rd", 0},
      {"redis://:a@b@h", "h", 6379, "", "a@b", 0},
      {"redis://default:pw@h", "h", 6379, "", "pw", 0},
      {"redis://h/1048576", "h", 6379, "", "", 1048576},
      {"unix:/run/re%20dis.sock", "", 6379, "/run/re dis.sock", "", 0},
      {"unix:/run/redis/redis.sock", "", 6379, "/run/redis/redis.sock", "", 0},
      {"unix:///run/redis.sock", "", 6379, "/run/redis.sock", "", 0},
      {"unix:/run/redis.sock?db=4&password=x%26y", "", 6379, "/run/redis.sock", "x&y", 4},
      {"unix:relative.sock?password=pw", "", 6379, "relative.sock", "pw", 0},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.url);
    std::string error;
    auto url = parseRedisUrl(c.url, &error);
    ASSERT_TRUE(url.has_value()) << error;
    EXPECT_EQ(url->host, c.host);
    EXPECT_EQ(url->port, c.port);
    EXPECT_EQ(url->unix_path, c.unix_path);
    EXPECT_EQ(url->password, c.password);
    EXPECT_EQ(url->db, c.db);
  }
}

TEST(ParseRedisUrl, RejectsMalformedWithoutLeakingThePassword) {
  const char* bad[] = {
      "",
      "127.0.0.1:6379",
      "http://h:6379",
      "rediss://:TopSecret1@h:6380",
      "redis://",
      "redis://:TopSecret1@",
      "redis://user:TopSecret1@h",
      "redis://TopSecret1@h",
      "redis://:TopSecret1@h:0",
      "redis://:TopSecret1@h:65536",
      "redis://:TopSecret1@h:12ab",
      "redis://:TopSecret1@h:",
      "redis://:TopSecret1@h:-1",
      "redis://:TopSecret1@h/x",
      "redis://:TopSecret1@h/-1",
      "redis://:TopSecret1@h/1/2",
      "redis://:TopSecret1@h/99999999999",
      "redis://:TopSecret1@h/2000000",
      "redis://:@h",
      "redis://:TopSecret1@h?db=1",
      "redis://:Top%zzSecret1@h",
      "redis://:TopSecret1%4@h",
      "redis://:TopSecret1@[::1",
      "redis://:TopSecret1@[::1]x",
      "redis://:TopSecret1@[zz]:1",
      "redis://:TopSecret1@bad host",
      "unix:",
      "unix:?db=1",
      "unix:/s?db=x&password=TopSecret1",
      "unix:/s?password=TopSecret1&color=red",
      "unix:/s?password=Top%GGSecret1",
      "unix:/s?password=TopSecret1&db=2000000",
      "unix:/s?password=TopSecret1&",
      "unix:/s?password=TopSecret1&password=TopSecret1",
  };
  for (const char* u : bad) {
    SCOPED_TRACE(u);
    std::string error;
    EXPECT_FALSE(parseRedisUrl(u, &error).has_value());
    EXPECT_FALSE(error.empty());
    EXPECT_EQ(error.find("TopSecret"), std::string::npos) << error;
    EXPECT_EQ(error.find("Top%"), std::string::npos) << error;
  }
  std::string error;
  parseRedisUrl("rediss://h", &error);
  EXPECT_NE(error.find("TLS"), std::string::npos) << error;
  parseRedisUrl("redis://alice:pw@h", &error);
  EXPECT_NE(error.find("user"), std::string::npos) << error;
  EXPECT_FALSE(parseRedisUrl("redis://h:99999").has_value());  // no error pointer: fine
}

// --- against a real server ----------------------------------------------------------

class RedisClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!redisServerInstalled()) GTEST_SKIP() << "redis-server is not installed";
    server_ = std::make_unique<RedisServer>(serverArgs());
    ASSERT_TRUE(server_->start(withUnixSocket())) << "redis-server did not start";
  }

  virtual std::vector<std::string> serverArgs() { return {}; }
  virtual bool withUnixSocket() { return false; }

  RedisOptions options(int timeout_ms = 250) {
    RedisOptions o;
    o.url.host = "127.0.0.1";
    o.url.port = server_->port();
    o.timeout_ms = timeout_ms;
    o.on_state = [this](bool up) { (up ? ups_ : downs_)++; };
    return o;
  }

  std::unique_ptr<RedisClient> connected(RedisOptions o) {
    auto client = std::make_unique<RedisClient>(loop_, std::move(o));
    EXPECT_TRUE(runUntil(loop_, [&] { return client->up(); }, 2s)) << "never connected";
    return client;
  }

  // One command, waited for; nullopt also when it did not complete in time.
  std::optional<RedisReply> call(RedisClient& c, std::vector<std::string> argv,
                                 std::chrono::milliseconds limit = 2s) {
    bool done = false;
    std::optional<RedisReply> out;
    uint64_t id = c.command(std::move(argv), [&](std::optional<RedisReply> r) {
      EXPECT_FALSE(done) << "callback ran twice";
      done = true;
      out = std::move(r);
    });
    if (!runUntil(loop_, [&] { return done; }, limit)) {
      ADD_FAILURE() << "command did not complete";
      c.cancel(id);
    }
    return out;
  }

  // Repeats `attempt` (which may run the loop itself) until it returns true.
  bool eventually(const std::function<bool()>& attempt, std::chrono::milliseconds limit = 3s) {
    auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
      if (attempt()) return true;
      runFor(loop_, 20ms);
    }
    return false;
  }

  bool subscribers(RedisClient& c, const std::string& channel, long long n) {
    return eventually([&] {
      auto r = call(c, {"PUBSUB", "NUMSUB", channel});
      return r && r->elements.size() == 2 && r->elements[1].integer == n;
    });
  }

  // PUBLISH until someone receives it (the subscription may still be on its way).
  bool publishDelivered(RedisClient& c, const std::string& channel, const std::string& message) {
    return eventually([&] {
      auto r = call(c, {"PUBLISH", channel, message});
      return r && r->integer >= 1;
    });
  }

  EventLoop loop_;
  std::unique_ptr<RedisServer> server_;
  int ups_ = 0;
  int downs_ = 0;
};

TEST_F(RedisClientTest, RoundTrips) {
  auto c = connected(options());
  EXPECT_EQ(ups_, 1);
  auto r = call(*c, {"SET", "k", "v"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, RedisReply::Type::Status);
  EXPECT_EQ(r->str, "OK");

  r = call(*c, {"GET", "k"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, RedisReply::Type::String);
  EXPECT_EQ(r->str, "v");

  const std::string binary("a\0b\r\n\xff\x00z", 8);
  const std::string binary_key("k\0ey", 4);
  ASSERT_TRUE(call(*c, {"SET", binary_key, binary}));
  r = call(*c, {"GET", binary_key});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->str, binary);
  EXPECT_EQ(r->str.size(), 8u);

  r = call(*c, {"GET", "missing"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, RedisReply::Type::Nil);

  r = call(*c, {"INCR", "n"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, RedisReply::Type::Integer);
  EXPECT_EQ(r->integer, 1);
  r = call(*c, {"INCR", "n"});
  EXPECT_EQ(r->integer, 2);

  r = call(*c, {"INCR", "k"});  // not an integer
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->isError());
  EXPECT_NE(r->str.find("not an integer"), std::string::npos) << r->str;

  r = call(*c, {"NOSUCHCOMMAND"});
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->isError());

  r = call(*c, {"EXPIRE", "k", "100"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->integer, 1);
  r = call(*c, {"TTL", "k"});
  EXPECT_GT(r->integer, 90);

  r = call(*c, {"DEL", "k", "n", "missing"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->integer, 2);

  r = call(*c, {"RPUSH", "list", "a", "", "c"});
  r = call(*c, {"LRANGE", "list", "0", "-1"});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->type, RedisReply::Type::Array);
  ASSERT_EQ(r->elements.size(), 3u);
  EXPECT_EQ(r->elements[0].str, "a");
  EXPECT_EQ(r->elements[1].str, "");
  EXPECT_EQ(r->elements[1].type, RedisReply::Type::String);
  EXPECT_EQ(r->elements[2].str, "c");

  r = call(*c, {"LRANGE", "nolist", "0", "-1"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, RedisReply::Type::Array);
  EXPECT_TRUE(r->elements.empty());

  r = call(*c, {"EVAL", "return {1, 'two', {3, ARGV[1]}, redis.call('GET', KEYS[1])}", "1", "missing", "x\0y"});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->type, RedisReply::Type::Array);
  // GET of a missing key is false in Lua, a Nil element in the reply.
  ASSERT_EQ(r->elements.size(), 4u);
  EXPECT_EQ(r->elements[3].type, RedisReply::Type::Nil);
  EXPECT_EQ(r->elements[0].integer, 1);
  EXPECT_EQ(r->elements[1].str, "two");
  ASSERT_EQ(r->elements[2].elements.size(), 2u);
  EXPECT_EQ(r->elements[2].elements[0].integer, 3);
  EXPECT_EQ(r->elements[2].elements[1].str, "x");  // "x\0y" as a C string literal is "x"

  r = call(*c, {"EVAL", "return ARGV[1]", "0", std::string("x\0y", 3)});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->str, std::string("x\0y", 3));

  r = call(*c, {"EVAL", "return redis.call('GET', 'missing')", "0"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, RedisReply::Type::Nil);

  r = call(*c, {"EVAL", "return redis.error_reply('boom')", "0"});
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->isError());
  EXPECT_NE(r->str.find("boom"), std::string::npos) << r->str;

  EXPECT_EQ(downs_, 0);
}

TEST_F(RedisClientTest, CallbacksNeverRunInsideCommandAndKeepOrder) {
  auto c = connected(options());
  std::vector<int> order;
  bool inside = true;
  for (int i = 0; i < 100; ++i) {
    c->command({"INCR", "ordered"}, [&, i](std::optional<RedisReply> r) {
      EXPECT_FALSE(inside);
      ASSERT_TRUE(r);
      EXPECT_EQ(r->integer, i + 1);
      order.push_back(i);
    });
  }
  // Down path too: an empty command fails, but not synchronously.
  bool failed = false;
  c->command({}, [&](std::optional<RedisReply> r) {
    EXPECT_FALSE(inside);
    EXPECT_FALSE(r);
    failed = true;
  });
  inside = false;
  ASSERT_TRUE(runUntil(loop_, [&] { return order.size() == 100 && failed; }, 2s));
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
}

TEST_F(RedisClientTest, RunsOnConnectHookAfterEveryConnect) {
  auto o = options();
  std::unique_ptr<RedisClient> c = std::make_unique<RedisClient>(loop_, o);
  int hooks = 0;
  bool up_in_hook = false;
  c->setOnConnect([&] {
    ++hooks;
    up_in_hook = c->up();
  });
  ASSERT_TRUE(runUntil(loop_, [&] { return c->up(); }, 2s));
  EXPECT_EQ(hooks, 1);
  EXPECT_TRUE(up_in_hook);
}

TEST_F(RedisClientTest, BacklogIsBounded) {
  auto c = connected(options(2000));
  int ok = 0;
  int failed = 0;
  for (int i = 0; i < 10001; ++i) {
    c->command({"PING"}, [&](std::optional<RedisReply> r) { (r ? ok : failed)++; });
  }
  ASSERT_TRUE(runUntil(loop_, [&] { return ok + failed == 10001; }, 4s));
  EXPECT_EQ(ok, 10000);
  EXPECT_EQ(failed, 1);
}

TEST_F(RedisClientTest, SelectIsolatesDatabases) {
  auto o3 = options();
  o3.url.db = 3;
  auto c3 = connected(o3);
  auto c0 = connected(options());
  ASSERT_TRUE(call(*c3, {"SET", "iso", "three"}));
  auto r = call(*c0, {"GET", "iso"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, RedisReply::Type::Nil);
  r = call(*c3, {"GET", "iso"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->str, "three");
}

TEST_F(RedisClientTest, PubSubDeliversAndUnsubscribes) {
  auto c = connected(options());
  std::vector<std::pair<std::string, std::string>> got;
  c->subscribe("chan", [&](const std::string& ch, const std::string& msg) { got.emplace_back(ch, msg); });
  c->subscribe("other", [&](const std::string& ch, const std::string& msg) { got.emplace_back(ch, msg); });
  const std::string payload("p\0ayload", 8);
  // The subscription is in place once a PUBLISH reaches a receiver.
  ASSERT_TRUE(subscribers(*c, "chan", 1));
  auto r = call(*c, {"PUBLISH", "chan", payload});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->integer, 1);
  ASSERT_TRUE(runUntil(loop_, [&] { return !got.empty(); }, 1s));
  EXPECT_EQ(got[0].first, "chan");
  EXPECT_EQ(got[0].second, payload);

  c->unsubscribe("chan");
  ASSERT_TRUE(subscribers(*c, "chan", 0));
  call(*c, {"PUBLISH", "chan", "dropped"});
  call(*c, {"PUBLISH", "other", "kept"});
  ASSERT_TRUE(runUntil(loop_, [&] { return got.size() == 2; }, 1s));
  runFor(loop_, 50ms);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1].first, "other");
  EXPECT_EQ(got[1].second, "kept");
}

TEST_F(RedisClientTest, UnreachableServerFailsFastThenConnectsByItself) {
  server_->kill9();
  LogCapture logs;
  RedisClient c(loop_, options());
  runFor(loop_, 400ms);  // a few reconnect attempts
  EXPECT_FALSE(c.up());
  bool done = false;
  bool sync = true;
  auto started = Clock::now();
  c.command({"PING"}, [&](std::optional<RedisReply> r) {
    EXPECT_FALSE(sync);
    EXPECT_FALSE(r);
    done = true;
  });
  sync = false;
  ASSERT_TRUE(runUntil(loop_, [&] { return done; }, 1s));
  EXPECT_LT(Clock::now() - started, 100ms);
  EXPECT_EQ(ups_, 0);
  EXPECT_EQ(downs_, 0);  // never up: no transition

  ASSERT_TRUE(server_->start());  // same port
  ASSERT_TRUE(runUntil(loop_, [&] { return c.up(); }, 2s));
  EXPECT_EQ(ups_, 1);
  auto r = call(c, {"PING"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->str, "PONG");

  auto text = logs.text();
  EXPECT_NE(text.find("redis: down"), std::string::npos) << text;
  // One warning for the whole outage, however many reconnect attempts.
  EXPECT_EQ(text.find("redis: down"), text.rfind("redis: down")) << text;
  EXPECT_NE(text.find("redis: up"), std::string::npos) << text;
}

TEST_F(RedisClientTest, ServerKilledFailsPendingOnceAndReconnectsWithSubscriptions) {
  auto c = connected(options(3000));
  int messages = 0;
  std::string last;
  c->subscribe("events", [&](const std::string&, const std::string& msg) {
    ++messages;
    last = msg;
  });
  ASSERT_TRUE(publishDelivered(*c, "events", "before"));
  ASSERT_TRUE(runUntil(loop_, [&] { return messages == 1; }, 1s));

  // A command the server holds (BLPOP) while it is killed.
  int calls = 0;
  std::optional<RedisReply> reply{RedisReply{}};
  c->command({"BLPOP", "nothing", "0"}, [&](std::optional<RedisReply> r) {
    ++calls;
    reply = std::move(r);
  });
  runFor(loop_, 50ms);
  ASSERT_EQ(calls, 0);
  auto killed = Clock::now();
  server_->kill9();
  ASSERT_TRUE(runUntil(loop_, [&] { return calls > 0; }, 2s));
  EXPECT_LT(Clock::now() - killed, 1s);  // the disconnect, not the 3 s timeout
  EXPECT_FALSE(reply);
  EXPECT_FALSE(c->up());
  EXPECT_EQ(downs_, 1);
  runFor(loop_, 300ms);  // reconnect attempts fail meanwhile
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(downs_, 1);
  EXPECT_EQ(ups_, 1);

  ASSERT_TRUE(server_->start());
  ASSERT_TRUE(runUntil(loop_, [&] { return c->up(); }, 3s));
  EXPECT_EQ(ups_, 2);
  // The subscription comes back by itself.
  ASSERT_TRUE(publishDelivered(*c, "events", "after"));
  ASSERT_TRUE(runUntil(loop_, [&] { return last == "after"; }, 1s));
  EXPECT_EQ(calls, 1);
}

TEST_F(RedisClientTest, PausedServerTimesOutFailsFastAndRecoversViaProbe) {
  LogCapture logs;
  auto c = connected(options(200));
  int hooks = 0;
  c->setOnConnect([&] { ++hooks; });
  server_->pause();
  int calls = 0;
  std::optional<RedisReply> reply{RedisReply{}};
  auto sent = Clock::now();
  c->command({"GET", "k"}, [&](std::optional<RedisReply> r) {
    ++calls;
    reply = std::move(r);
  });
  ASSERT_TRUE(runUntil(loop_, [&] { return calls > 0; }, 2s));
  auto took = Clock::now() - sent;
  EXPECT_GE(took, 190ms);
  EXPECT_LT(took, 700ms);  // slack for a loaded machine
  EXPECT_FALSE(reply);
  EXPECT_FALSE(c->up());
  EXPECT_EQ(downs_, 1);

  // While down, commands fail on the next pass without waiting.
  for (int i = 0; i < 3; ++i) {
    auto t = Clock::now();
    bool done = false;
    c->command({"GET", "k"}, [&](std::optional<RedisReply> r) {
      EXPECT_FALSE(r);
      done = true;
    });
    EXPECT_FALSE(done);
    ASSERT_TRUE(runUntil(loop_, [&] { return done; }, 1s));
    EXPECT_LT(Clock::now() - t, 100ms);  // well under the 200 ms timeout
  }

  server_->resume();
  auto resumed = Clock::now();
  ASSERT_TRUE(runUntil(loop_, [&] { return c->up(); }, 1s));
  EXPECT_LT(Clock::now() - resumed, 900ms);  // next probe (every 200 ms)
  EXPECT_EQ(ups_, 2);
  EXPECT_EQ(downs_, 1);
  EXPECT_EQ(hooks, 0);  // same connection: not a reconnect
  auto r = call(*c, {"PING"});
  ASSERT_TRUE(r);
  EXPECT_EQ(calls, 1);  // the late reply to the timed-out GET was ignored

  auto text = logs.text();
  EXPECT_EQ(text.find("redis: down"), text.rfind("redis: down")) << text;
  EXPECT_NE(text.find("redis: up"), std::string::npos) << text;
}

TEST_F(RedisClientTest, ServerPausedBeyondStallLimitIsReconnected) {
  LogCapture logs;
  auto c = connected(options(100));  // stall limit: max(2 s, 5 x 100 ms)
  int hooks = 0;
  c->setOnConnect([&] { ++hooks; });
  int messages = 0;
  c->subscribe("s", [&](const std::string&, const std::string&) { ++messages; });
  ASSERT_TRUE(subscribers(*c, "s", 1));
  server_->pause();
  bool done = false;
  c->command({"PING"}, [&](std::optional<RedisReply> r) {
    EXPECT_FALSE(r);
    done = true;
  });
  ASSERT_TRUE(runUntil(loop_, [&] { return done; }, 1s));
  // The stall limit passes, and the client gives the connection up, while
  // the server is still paused (the probes tick every 200 ms: wait for the
  // give-up itself, not for a fixed time a busy machine may overrun).
  ASSERT_TRUE(runUntil(loop_, [&] { return logs.text().find("reconnecting") != std::string::npos; }, 6s))
      << logs.text();
  EXPECT_FALSE(c->up());
  server_->resume();
  ASSERT_TRUE(runUntil(loop_, [&] { return c->up(); }, 2s));
  EXPECT_EQ(hooks, 1);  // a new connection, not the probe on the old one
  ASSERT_TRUE(publishDelivered(*c, "s", "m"));
  ASSERT_TRUE(runUntil(loop_, [&] { return messages >= 1; }, 1s));
}

TEST_F(RedisClientTest, CancelledCallbacksNeverRun) {
  auto c = connected(options());
  bool ran = false;
  uint64_t id = c->command({"SET", "c", "1"}, [&](std::optional<RedisReply>) { ran = true; });
  c->cancel(id);
  // Cancelled while failing fast.
  uint64_t id2 = c->command({}, [&](std::optional<RedisReply>) { ran = true; });
  c->cancel(id2);
  // Cancelled from inside an earlier callback.
  uint64_t later = 0;
  bool first = false;
  c->command({"PING"}, [&](std::optional<RedisReply>) {
    first = true;
    c->cancel(later);
  });
  later = c->command({"PING"}, [&](std::optional<RedisReply>) { ran = true; });
  c->cancel(12345678);  // unknown: no-op
  ASSERT_TRUE(runUntil(loop_, [&] { return first; }, 1s));
  runFor(loop_, 100ms);
  EXPECT_FALSE(ran);
  // The cancelled SET still ran on the server; only the callback is gone.
  auto r = call(*c, {"GET", "c"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->str, "1");
}

TEST_F(RedisClientTest, CancelOnDisconnectFromAnotherCallback) {
  auto c = connected(options(3000));
  uint64_t second = 0;
  int first_calls = 0;
  bool second_ran = false;
  c->command({"BLPOP", "x", "0"}, [&](std::optional<RedisReply> r) {
    EXPECT_FALSE(r);
    ++first_calls;
    c->cancel(second);
  });
  second = c->command({"BLPOP", "y", "0"}, [&](std::optional<RedisReply>) { second_ran = true; });
  runFor(loop_, 50ms);
  server_->kill9();
  ASSERT_TRUE(runUntil(loop_, [&] { return first_calls > 0; }, 2s));
  runFor(loop_, 100ms);
  EXPECT_EQ(first_calls, 1);
  EXPECT_FALSE(second_ran);
}

TEST_F(RedisClientTest, DestroyingWithPendingCommandsDropsCallbacks) {
  bool ran = false;
  {
    auto c = connected(options(3000));
    c->subscribe("d", [&](const std::string&, const std::string&) { ran = true; });
    c->command({"BLPOP", "never", "0"}, [&](std::optional<RedisReply>) { ran = true; });
    c->command({"PING"}, [&](std::optional<RedisReply>) { ran = true; });
    runFor(loop_, 50ms);
    c->command({"PING"}, [&](std::optional<RedisReply>) { ran = true; });  // still in hiredis' buffer
    c->command({}, [&](std::optional<RedisReply>) { ran = true; });        // failing fast
  }
  {
    RedisClient connecting(loop_, options());  // destroyed before connecting
    connecting.command({"PING"}, [&](std::optional<RedisReply>) { ran = true; });
  }
  {
    auto c = connected(options(100));
    server_->pause();
    c->command({"PING"}, [&](std::optional<RedisReply>) {});
    runFor(loop_, 300ms);  // timed out, probing
    c->command({"PING"}, [&](std::optional<RedisReply>) { ran = true; });
  }
  server_->resume();
  runFor(loop_, 200ms);
  EXPECT_FALSE(ran);
}

// Not the recommended way (see the header), but it must not crash.
TEST_F(RedisClientTest, SurvivesDestructionFromItsOwnCallbacks) {
  int calls = 0;
  {  // from a reply, with more replies queued behind it
    auto c = connected(options());
    c->command({"PING"}, [&](std::optional<RedisReply>) {
      ++calls;
      c.reset();
    });
    c->command({"PING"}, [&](std::optional<RedisReply>) { ADD_FAILURE() << "dropped callback ran"; });
    ASSERT_TRUE(runUntil(loop_, [&] { return calls == 1; }, 1s));
    runFor(loop_, 50ms);
  }
  {  // from a message
    auto c = connected(options());
    c->subscribe("bye", [&](const std::string&, const std::string&) {
      ++calls;
      c.reset();
    });
    std::unique_ptr<RedisClient> publisher = connected(options());
    ASSERT_TRUE(publishDelivered(*publisher, "bye", "x"));
    ASSERT_TRUE(runUntil(loop_, [&] { return calls == 2; }, 1s));
    EXPECT_FALSE(c);
  }
  {  // from a timeout, with a second one due at the same moment
    auto c = connected(options(100));
    server_->pause();
    c->command({"PING"}, [&](std::optional<RedisReply>) {
      ++calls;
      c.reset();
    });
    c->command({"PING"}, [&](std::optional<RedisReply>) { ADD_FAILURE() << "dropped callback ran"; });
    ASSERT_TRUE(runUntil(loop_, [&] { return calls == 3; }, 1s));
    runFor(loop_, 50ms);
    server_->resume();
  }
  {  // from on_state(false) on a disconnect, with commands pending
    auto o = options(3000);
    std::unique_ptr<RedisClient> c;
    o.on_state = [&](bool up) {
      if (!up) {
        ++calls;
        c.reset();
      }
    };
    c = connected(o);
    c->command({"BLPOP", "z", "0"}, [&](std::optional<RedisReply>) { ADD_FAILURE() << "dropped callback ran"; });
    runFor(loop_, 50ms);
    server_->kill9();
    ASSERT_TRUE(runUntil(loop_, [&] { return calls == 4; }, 2s));
    runFor(loop_, 50ms);
  }
}

// --- AUTH ---------------------------------------------------------------------------

class RedisAuthTest : public RedisClientTest {
 protected:
  std::vector<std::string> serverArgs() override { return {"--requirepass", "p@ss word:1"}; }
};

TEST_F(RedisAuthTest, RightPasswordWorks) {
  LogCapture logs;
  std::string error;
  auto url = parseRedisUrl("redis://:p%40ss%20word%3A1@127.0.0.1:" + std::to_string(server_->port()) + "/2", &error);
  ASSERT_TRUE(url) << error;
  auto o = options();
  o.url = *url;
  auto c = connected(o);
  auto r = call(*c, {"SET", "a", "b"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->str, "OK");
  int got = 0;
  c->subscribe("authed", [&](const std::string&, const std::string&) { ++got; });
  ASSERT_TRUE(publishDelivered(*c, "authed", "x"));
  ASSERT_TRUE(runUntil(loop_, [&] { return got >= 1; }, 1s));
  EXPECT_EQ(logs.text().find("p@ss"), std::string::npos) << logs.text();
}

TEST_F(RedisAuthTest, WrongPasswordIsAClearErrorAndFailsFast) {
  LogCapture logs;
  auto o = options();
  o.url.password = "WrongSecret";
  RedisClient c(loop_, o);
  runFor(loop_, 600ms);  // several attempts
  EXPECT_FALSE(c.up());
  EXPECT_EQ(ups_, 0);
  bool done = false;
  c.command({"PING"}, [&](std::optional<RedisReply> r) {
    EXPECT_FALSE(r);
    done = true;
  });
  EXPECT_FALSE(done);
  ASSERT_TRUE(runUntil(loop_, [&] { return done; }, 100ms));
  auto text = logs.text();
  auto first = text.find("[error] redis: authentication failed");
  EXPECT_NE(first, std::string::npos) << text;
  EXPECT_EQ(first, text.rfind("[error] redis: authentication failed")) << text;  // once
  EXPECT_EQ(text.find("[warn]"), std::string::npos) << text;  // no second, vaguer warning
  EXPECT_EQ(text.find("WrongSecret"), std::string::npos) << text;
}

TEST_F(RedisAuthTest, MissingPasswordIsAnAuthenticationFailure) {
  LogCapture logs;
  RedisClient c(loop_, options());
  runFor(loop_, 300ms);
  EXPECT_FALSE(c.up());
  EXPECT_EQ(ups_, 0);
  EXPECT_NE(logs.text().find("redis: authentication failed"), std::string::npos) << logs.text();
}

// --- unix socket ------------------------------------------------------------------------

class RedisUnixTest : public RedisClientTest {
 protected:
  bool withUnixSocket() override { return true; }
};

TEST_F(RedisUnixTest, ConnectsOverUnixSocket) {
  std::string error;
  auto url = parseRedisUrl("unix:" + server_->unixPath() + "?db=5", &error);
  ASSERT_TRUE(url) << error;
  auto o = options();
  o.url = *url;
  auto c = connected(o);
  ASSERT_TRUE(call(*c, {"SET", "u", "1"}));
  auto tcp = connected(options());
  auto r = call(*tcp, {"SELECT", "5"});
  r = call(*tcp, {"GET", "u"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->str, "1");
}

}  // namespace
}  // namespace wfp
