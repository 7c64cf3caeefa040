#include "tests/simulation/sim_client.h"

namespace wfp::sim {

SimExchange::SimExchange(SimRuntime& rt, Trace& trace, ClientRequest& request, std::shared_ptr<void>& connection,
                         bool with_body)
    : rt_(rt), trace_(trace), req_(request), connection_(connection) {
  id_ = nextId();
  method_ = "POST";
  if (request.admin) {
    target_ = "/admin/purge";
  } else {
    target_ = "/api/v1/run/" + request.workflow + (request.stream ? "/stream" : "");
    if (!request.token_query.empty()) target_ += "?" + request.token_query;
  }
  headers_ = {{"Content-Type", "application/json"}, {"X-Request-Id", request.request_id}};
  if (!request.key.empty()) headers_.push_back({"Authorization", "Bearer " + request.key});
  if (!request.cache_control.empty()) headers_.push_back({"Cache-Control", request.cache_control});
  if (with_body) body_ = request.body;
  bytes_in_ = 100 + body_.size();
}

bool SimExchange::usable(const char* what) {
  if (!over_) return true;
  req_.contract.push_back(std::string(what) + " on an exchange that was over");
  return false;
}

void SimExchange::head(int status, std::string_view preformatted, const HttpHeaders& headers) {
  ++req_.answers;
  if (req_.answers > 1) req_.contract.push_back("a second response");
  req_.status = status;
  req_.answered_us = rt_.nowUs();
  response_started_ = true;
  status_ = status;
  // "Name: value\r\n" lines written once for a cached entry.
  while (!preformatted.empty()) {
    size_t eol = preformatted.find("\r\n");
    std::string_view line = preformatted.substr(0, eol);
    size_t colon = line.find(':');
    if (colon != std::string_view::npos) {
      std::string_view value = line.substr(colon + 1);
      while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      req_.headers.push_back({std::string(line.substr(0, colon)), std::string(value)});
    }
    if (eol == std::string_view::npos) break;
    preformatted.remove_prefix(eol + 2);
  }
  for (const auto& h : headers) req_.headers.push_back(h);
  const std::string* cache = req_.header("x-cache");
  trace_.add("client #" + std::to_string(req_.serial) + " answered " + std::to_string(status) +
             (cache ? " " + *cache : std::string()));
}

void SimExchange::completeLater() {
  over_ = true;
  req_.complete = true;
  std::weak_ptr<bool> alive = alive_;
  // The server calls onComplete once the response is flushed: later, never
  // inside respond()/end().
  rt_.post([this, alive] {
    if (alive.expired()) return;
    if (on_complete_) {
      auto fn = std::move(on_complete_);
      on_complete_ = nullptr;
      on_abort_ = nullptr;
      fn();
    }
  });
}

void SimExchange::respond(int status, std::string_view reason, const HttpHeaders& headers, std::string_view body) {
  respond(status, reason, {}, headers, body, nullptr);
}

void SimExchange::respond(int status, std::string_view, std::string_view preformatted, const HttpHeaders& headers,
                          std::string_view body, const std::shared_ptr<const void>&) {
  if (!usable("respond()")) return;
  if (begun_) req_.contract.push_back("respond() after begin()");
  head(status, preformatted, headers);
  req_.got.assign(body);
  completeLater();
}

void SimExchange::begin(int status, std::string_view reason, const HttpHeaders& headers, int64_t content_length) {
  begin(status, reason, {}, headers, content_length);
}

void SimExchange::begin(int status, std::string_view, std::string_view preformatted, const HttpHeaders& headers,
                        int64_t) {
  if (!usable("begin()")) return;
  if (begun_) req_.contract.push_back("begin() twice");
  begun_ = true;
  head(status, preformatted, headers);
}

bool SimExchange::write(std::string_view data) {
  if (!usable("write()")) return true;
  if (!begun_) req_.contract.push_back("write() before begin()");
  req_.got.append(data);
  return true;
}

void SimExchange::end() {
  if (!usable("end()")) return;
  if (!begun_) req_.contract.push_back("end() before begin()");
  completeLater();
}

void SimExchange::abortResponse() {
  if (!usable("abortResponse()")) return;
  // The connection closes: no callback runs (the handler finished first).
  over_ = true;
  req_.cut = true;
  on_complete_ = nullptr;
  on_abort_ = nullptr;
}

void SimExchange::leave() {
  if (over_) return;
  over_ = true;
  req_.left = true;
  trace_.add("client #" + std::to_string(req_.serial) + " leaves");
  if (on_abort_) {
    auto fn = std::move(on_abort_);
    on_abort_ = nullptr;
    on_complete_ = nullptr;
    fn();
  }
}

}  // namespace wfp::sim
