-- wrk script for scripts/bench --only distinct: POST a different JSON body on every request, so that
-- nothing is cached or coalesced (every request is a miss that goes upstream).
--   WRK_AUTH  the Authorization value, e.g. "Bearer <client key>"   WRK_TAG  makes bodies unique per run
-- done() prints the same WRK_RESULT line as post.lua.
local tag = os.getenv("WRK_TAG") or tostring(os.time())
local auth = os.getenv("WRK_AUTH")
local headers = { ["Content-Type"] = "application/json" }
if auth and auth ~= "" then headers["Authorization"] = auth end

local threads = {}
local n = 0
thread_id = 0  -- set per thread by setup()

setup = function(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

request = function()
  n = n + 1
  -- The same size as loadgen's distinct bodies: {"bench":"<tag>","i":<n>}
  return wrk.format("POST", nil, headers,
    string.format('{"bench":"%s-%d","i":%d}', tag, thread_id, n))
end

done = function(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "WRK_RESULT requests=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d non2xx=%d errors=%d\n",
    summary.requests, summary.requests / secs,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
