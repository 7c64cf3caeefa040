// Simulated clients: each request is an HttpExchange whose response side
// records what the handler wrote, and checks the exchange contract as it
// goes (one response, nothing after onAbort/onComplete, write only after
// begin). The client may leave at any moment (onAbort), as a real one does.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "proxy/http_server.h"
#include "tests/simulation/sim_runtime.h"
#include "tests/simulation/sim_trace.h"

namespace wfp::sim {

// One client request and everything it received.
struct ClientRequest {
  int serial = 0;
  int instance = 0;
  std::string request_id;
  bool stream = false;
  bool admin = false;
  std::string workflow;
  std::string key = "client-key-1";  // the client's bearer key ("": none)
  std::string ns = "acme";           // whose input it is: the organisation, or a pass_through key
  std::string client_token;          // a client-token stream's own token
  std::string token_query;           // how it spells ?token= (any encoding of the name)
  std::string body;           // as sent (one of several spellings of the input)
  std::string canonical;      // the input, canonical
  std::string cache_control;  // "" when none
  int64_t arrival_us = 0;
  int64_t leave_at_us = -1;   // the client leaves then (-1: it waits)

  // What came back.
  int answers = 0;
  int status = 0;
  std::string got;      // body bytes
  HttpHeaders headers;  // including the preformatted lines, parsed
  bool complete = false;
  bool cut = false;     // a streamed response ended abnormally
  bool left = false;    // the client went away before the end
  int64_t answered_us = -1;
  std::vector<std::string> contract;  // exchange contract violations

  const std::string* header(std::string_view name) const { return findHeader(headers, name); }
};

class SimExchange final : public HttpExchange {
 public:
  SimExchange(SimRuntime& rt, Trace& trace, ClientRequest& request, std::shared_ptr<void>& connection,
              bool with_body);
  ~SimExchange() override { *alive_ = false; }

  void respond(int status, std::string_view reason, const HttpHeaders& headers, std::string_view body) override;
  void respond(int status, std::string_view reason, std::string_view preformatted, const HttpHeaders& headers,
               std::string_view body, const std::shared_ptr<const void>& body_owner) override;
  void begin(int status, std::string_view reason, const HttpHeaders& headers, int64_t content_length) override;
  void begin(int status, std::string_view reason, std::string_view preformatted, const HttpHeaders& headers,
             int64_t content_length) override;
  bool write(std::string_view data) override;
  void end() override;
  void abortResponse() override;
  std::shared_ptr<void>& connectionData() override { return connection_; }
  size_t pendingOutput() const override { return 0; }

  // The client goes away (onAbort), unless the exchange is over.
  void leave();
  // The server drops the exchange without a word (a head the handler did
  // not answer: the request goes on as a new exchange).
  void discard() { over_ = true; }
  bool over() const { return over_; }

 private:
  bool usable(const char* what);
  void head(int status, std::string_view preformatted, const HttpHeaders& headers);
  void completeLater();

  SimRuntime& rt_;
  Trace& trace_;
  ClientRequest& req_;
  std::shared_ptr<void>& connection_;
  bool over_ = false;   // completed, aborted or left: the handler must not touch it again
  bool begun_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace wfp::sim
