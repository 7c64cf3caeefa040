// The access log (docs/operations.md): one JSON object per request, one per line, to
// stderr, stdout, a file (reopened on reload, for logrotate) or nowhere.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace wfp {

struct AccessRecord {
  std::string request_id;
  std::string org;     // "-" when unauthenticated
  std::string client;  // "-" when none
  std::string method;
  std::string path;    // without the query: it may hold a token
  int status = 0;      // 499: the client left before the response was complete
  std::string cache;   // HIT MISS COALESCED STALE BYPASS, or "-"
  double queue_ms = 0;
  double upstream_ms = 0;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  std::string remote_addr;  // the client's address:port, "unix" on a Unix socket; "" when unknown
  double duration_ms = 0;   // the whole request, head received to response ended
  int upstream_status = 0;  // what the upstream answered for it; 0: nothing went upstream (null)
  std::string trace_id;     // from a valid traceparent; "" (null) otherwise
};

class AccessLog {
 public:
  AccessLog() = default;
  ~AccessLog();
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  // "stderr" | "stdout" | "off" | PATH. False (and `error` set) if PATH
  // cannot be opened; the previous destination is kept.
  bool open(const std::string& destination, std::string* error);
  // Whether open(destination) would succeed, found by opening PATH the same
  // way (for appending, created if missing) and closing it again, for
  // `--check-config`. Leaves nothing behind: an existing file is not written
  // to; a missing one is created unnamed (O_TMPFILE) in its directory, or,
  // where the file system cannot do that, created and removed again.
  static bool check(const std::string& destination, std::string* error);
  // "stderr", "stdout" or "off": not a path.
  static bool isStream(std::string_view destination);
  void write(const AccessRecord& record);
  bool enabled() const { return out_ != nullptr; }

  static std::string format(const AccessRecord& record, int64_t unix_micros);

 private:
  void closeFile();
  FILE* out_ = nullptr;
  bool owned_ = false;
};

}  // namespace wfp
