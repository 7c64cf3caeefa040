#include "proxy/redis_script.h"

#include <exception>
#include <utility>

#include <spdlog/spdlog.h>

namespace wfp {

namespace {

bool isNoScript(const std::optional<RedisReply>& reply) {
  return reply && reply->isError() && reply->str.starts_with("NOSCRIPT");
}

}  // namespace

RedisScriptRunner::RedisScriptRunner(RedisLink& redis, std::string what) : redis_(redis), what_(std::move(what)) {}

RedisScriptRunner::~RedisScriptRunner() {
  auto pending = std::move(pending_);
  pending_.clear();
  for (auto& [token, p] : pending) {
    redis_.cancel(p.redis_id);
    if (p.on_drop) p.on_drop();
  }
}

void RedisScriptRunner::send(std::vector<std::string> argv, Callback cb, std::function<void()> on_drop) {
  uint64_t token = next_token_++;
  uint64_t id = redis_.command(std::move(argv), [this, token, cb = std::move(cb)](std::optional<RedisReply> reply) {
    pending_.erase(token);
    try {
      cb(std::move(reply));  // may destroy us: nothing after this
    } catch (const std::exception& e) {
      spdlog::error("{}: uncaught exception in a reply callback: {}", what_, e.what());
    } catch (...) {
      spdlog::error("{}: uncaught exception in a reply callback", what_);
    }
  });
  pending_.emplace(token, Pending{id, std::move(on_drop)});
}

void RedisScriptRunner::run(Script& script, std::vector<std::string> keys, std::vector<std::string> args, Callback cb,
                            std::function<void()> on_drop) {
  if (script.sha.empty() && !script.loading) load(script);
  const bool by_sha = !script.sha.empty();
  std::vector<std::string> argv;
  argv.reserve(3 + keys.size() + args.size());
  argv.emplace_back(by_sha ? "EVALSHA" : "EVAL");
  argv.emplace_back(by_sha ? script.sha : std::string(script.body));
  argv.push_back(std::to_string(keys.size()));
  argv.insert(argv.end(), keys.begin(), keys.end());
  argv.insert(argv.end(), args.begin(), args.end());
  if (!by_sha) {
    send(std::move(argv), std::move(cb), std::move(on_drop));
    return;
  }
  auto retry = [this, &script, keys = std::move(keys), args = std::move(args), cb = std::move(cb),
                on_drop](std::optional<RedisReply> reply) mutable {
    if (!isNoScript(reply)) {
      cb(std::move(reply));
      return;
    }
    script.sha.clear();  // EVAL caches it again; the next call reloads the digest
    std::vector<std::string> again{"EVAL", std::string(script.body), std::to_string(keys.size())};
    again.insert(again.end(), keys.begin(), keys.end());
    again.insert(again.end(), args.begin(), args.end());
    send(std::move(again), std::move(cb), std::move(on_drop));
  };
  send(std::move(argv), std::move(retry), std::move(on_drop));
}

void RedisScriptRunner::load(Script& script) {
  script.loading = true;
  send({"SCRIPT", "LOAD", std::string(script.body)}, [&script](std::optional<RedisReply> reply) {
    script.loading = false;
    if (reply && !reply->isError()) {
      if (auto sha = decodeDigest(*reply)) script.sha = std::move(*sha);
    }
  });
}

std::optional<std::string> RedisScriptRunner::decodeDigest(const RedisReply& reply) {
  if (reply.type != RedisReply::Type::String || reply.str.size() != 40) return std::nullopt;
  for (char c : reply.str) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return std::nullopt;
  }
  return reply.str;
}

}  // namespace wfp
