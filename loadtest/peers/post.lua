-- wrk script of loadtest/peers.sh: the same data-action POST (body from
-- $PEERS_BODY) against every peer ($PEERS_METHOD=GET: a plain GET, no body);
-- done() prints one JSON line of totals.
wrk.method = os.getenv("PEERS_METHOD") or "POST"
if wrk.method == "POST" then
  wrk.body = os.getenv("PEERS_BODY")
  wrk.headers["Content-Type"] = "application/json"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
