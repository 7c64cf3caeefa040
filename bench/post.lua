-- wrk script for scripts/bench: POST one fixed JSON body (a cache hit after the first request).
--   WRK_BODY  the body (default below)      WRK_AUTH  the Authorization value, e.g. "Bearer <client key>"
-- done() prints one parseable line:  WRK_RESULT requests=N rps=R p50_us=.. p90_us=.. p99_us=.. max_us=.. non2xx=N errors=N
wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY") or '{"story":"a dog named charlie"}'
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("WRK_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
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
