#!/usr/bin/env bash
# grpcurl against a running cxcache binary, through server reflection only
# (no proto file): list, describe, health, Get (bytes and JSON), --check-config,
# an INVALID_ARGUMENT with its details, then SIGTERM and a clean exit.
#   tests/grpcurl.sh [path/to/cxcache]
set -euo pipefail
bin=${1:-target/debug/cxcache}
export PATH="$(go env GOPATH)/bin:$PATH"
work=$(mktemp -d)
"$bin" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 >"$work/out" 2>"$work/err" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 200); do
  grep -q 'cxcache listening' "$work/out" && break
  kill -0 $pid 2>/dev/null || { cat "$work/err"; echo "cxcache exited"; exit 1; }
  sleep 0.05
done
addr=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$work/out")
[ -n "$addr" ] || { echo "no listening line"; cat "$work/err"; exit 1; }

pass=0; fail=0
check() { # name, command, expected substring
  local out
  out=$(eval "$2" 2>&1) || true
  if grep -qF -- "$3" <<<"$out"; then pass=$((pass+1)); echo "ok   $1"
  else fail=$((fail+1)); echo "FAIL $1: expected '$3' in:"; echo "$out" | head -20; fi
}
g="grpcurl -plaintext"
check "list services" "$g $addr list" "cxcache.v1.Cache"
check "list methods" "$g $addr list cxcache.v1.Cache" "cxcache.v1.Cache.Watch"
check "describe GetRequest" "$g $addr describe cxcache.v1.GetRequest" "body_json"
check "health" "$g -d '{\"service\":\"cxcache.v1.Cache\"}' $addr grpc.health.v1.Health/Check" "SERVING"
check "get list" "$g -d '{\"kind\":\"routing.queues\"}' $addr cxcache.v1.Cache/Get" "SOURCE_UPSTREAM"
check "get list again" "$g -d '{\"kind\":\"routing.queues\"}' $addr cxcache.v1.Cache/Get" "SOURCE_STORE"
# The resource itself as JSON (value_format), e.g. the list's entities and the
# first queue by id, with names readable in grpcurl's output.
check "get list as JSON" "$g -d '{\"kind\":\"routing.queues\",\"value_format\":\"VALUE_FORMAT_JSON\"}' $addr cxcache.v1.Cache/Get" "\"entities\": ["
qid=bfd63b06-58e4-5fbf-ab85-0883fefcbc46 # the README's queue (the emulator's seed is fixed)
check "get queue as JSON" "$g -d '{\"kind\":\"routing.queue\",\"id\":\"$qid\",\"value_format\":\"VALUE_FORMAT_JSON\"}' $addr cxcache.v1.Cache/Get" "\"name\": \""
check "check-config" "$bin --check-config" "configuration valid"
check "check-config refuses a bad config" "$bin --check-config --env 'bad env'; echo rc=\$?" "rc=2"
check "invalid argument" "$g -d '{\"kind\":\"routing.queue\"}' $addr cxcache.v1.Cache/Get" "\"field\": \"id\""

kill -TERM $pid
code=0; wait $pid || code=$?
if [ $code = 0 ]; then pass=$((pass+1)); echo "ok   SIGTERM exits 0"; else fail=$((fail+1)); echo "FAIL SIGTERM exit code $code"; fi
echo "grpcurl: $pass passed, $fail failed"
[ $fail = 0 ]
