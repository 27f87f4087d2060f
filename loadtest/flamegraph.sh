#!/usr/bin/env bash
# Flamegraphs of the hit paths, as users run them: the release build, the
# default configuration and log level, ghz driving the l1-hit and store-hit
# scenarios; the bare-tonic ceiling profiled the same way beside them, so
# the two can be compared frame by frame; and the Redis-hit floor (the
# ceiling reading the entry from Redis per Get) beside the store hit.
#
#   loadtest/flamegraph.sh   # writes loadtest/results/flamegraphs/<date>-{l1-hit,store-hit,ceiling,redis-floor}.svg
#
# Needs perf (linux-perf / linux-tools) and inferno (`cargo install inferno`,
# done here when missing). Store hits read a 3+3 Redis cluster: the one in
# CXCACHE_TEST_REDIS_URL, else one started here. A measurement, not a test:
# CI does not run it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin:$HOME/.cargo/bin:$PATH"
seconds=${FLAME_SECONDS:-8}
out="$root/loadtest/results/flamegraphs"
day=$(date -u +%Y-%m-%d)
work=$(mktemp -d)
pids=()
cleanup() {
  stop_all "${pids[@]}"
  [ -n "${redis_dir:-}" ] && bash scripts/redis-cluster.sh stop "$redis_dir" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
log() { printf 'flamegraph: %s\n' "$*" >&2; }
. loadtest/lib.sh

command -v perf >/dev/null || { log "perf is not installed"; exit 1; }
command -v inferno-flamegraph >/dev/null || cargo install --quiet inferno
bash scripts/install-deps.sh
build_release_or_debug release cxcache-server genesys-emulator cxcache-ceiling
if [ -n "${CXCACHE_TEST_REDIS_URL:-}" ]; then
  redis_url=$CXCACHE_TEST_REDIS_URL
else
  redis_dir="$work/redis"
  redis_url=$(bash scripts/redis-cluster.sh start "$redis_dir")
fi

"$bin/genesys-emulator" --addr 127.0.0.1:0 --rate-limit 1000000000 >"$work/emu.log" 2>&1 &
pids+=($!)
emu=$(wait_line "$work/emu.log" 'http://' | grep -o 'http://[0-9.:]*')

# profile NAME PID ADDR SCENARIO: perf while ghz runs the scenario, then the SVG.
profile() {
  local name=$1 pid=$2 addr=$3 scen=$4
  ghz --config "loadtest/scenarios/$scen.json" -z 2s "$addr" >/dev/null 2>&1 || true  # warm
  perf record -F 999 -g --call-graph dwarf,32768 -p "$pid" -o "$work/$name.data" -- sleep "$seconds" >/dev/null 2>&1 &
  local perf_pid=$!
  ghz --config "loadtest/scenarios/$scen.json" -z "${seconds}s" -O json "$addr" >"$work/$name.json" 2>/dev/null || true
  wait "$perf_pid" || true
  perf script -i "$work/$name.data" 2>/dev/null | inferno-collapse-perf >"$work/$name.folded"
  inferno-flamegraph --title "$name: $(jq -r '.rps | floor' "$work/$name.json") req/s under perf, commit $(git rev-parse --short HEAD)" \
    <"$work/$name.folded" >"$out/$day-$name.svg"
  log "$out/$day-$name.svg"
}

# start_cxcache NAME [ENV=VALUE...]: default config (RUST_LOG unset); sets $addr $pid.
start_cxcache() {
  local name=$1; shift
  env -u RUST_LOG CXCACHE_UPSTREAM__RATE_LIMIT__ALLOWED=1000000000 "$@" "$bin/cxcache" --env "fg$$$name" \
    --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --upstream-url "$emu" \
    --client-id cxcache-demo --client-secret demo-secret --redis-url "$redis_url" >"$work/$name.out" 2>"$work/$name.err" &
  pid=$!
  pids+=($pid)
  addr=$(wait_line "$work/$name.out" '^cxcache listening' | sed -E 's/.*grpc=([^ ]+).*/\1/')
}
req=$(jq -c .data loadtest/scenarios/l1-hit.json)
start_cxcache l1
for _ in 1 2 3; do reply=$(grpcurl -plaintext -d "$req" "$addr" cxcache.v1.Cache/Get); done
[ "$(jq -r .source <<<"$reply")" = SOURCE_L1 ] || { log "l1-hit warm-up not from L1"; exit 1; }
profile l1-hit "$pid" "$addr" l1-hit
# The same response: value, key and tags.
printf '%s\n' "$reply" >"$work/l1.reply"
start_ceiling "$work/l1.reply" "$work/ceiling.out"
profile ceiling "$ceiling_pid" "$ceiling" l1-hit
req=$(jq -c .data loadtest/scenarios/store-hit.json)
start_cxcache store CXCACHE_CACHE__L1__ENABLED=false
for _ in 1 2; do reply=$(grpcurl -plaintext -d "$req" "$addr" cxcache.v1.Cache/Get); done
[ "$(jq -r .source <<<"$reply")" = SOURCE_STORE ] || { log "store-hit warm-up not from the store"; exit 1; }
profile store-hit "$pid" "$addr" store-hit
# The Redis-hit floor: the ceiling reading the same entry from the same
# Redis per Get, to compare with the store hit frame by frame.
printf '%s\n' "$reply" >"$work/store.reply"
start_ceiling "$work/store.reply" "$work/floor.out" --redis-url "$redis_url"
profile redis-floor "$ceiling_pid" "$ceiling" store-hit
