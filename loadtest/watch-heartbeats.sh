#!/usr/bin/env bash
# What Watch heartbeats cost the server: N streams asking for HEARTBEATs every
# 100 ms, held open for a while, against the same server idle, in one run.
#
#   loadtest/watch-heartbeats.sh --short   # CI smoke run: debug build, 100 streams, 2 s
#   loadtest/watch-heartbeats.sh --full    # release build, 1000 streams, 10 s
#
# Server CPU is read from /proc/<pid>/stat (utime + stime) over the window in
# which every stream is open, minus the idle rate measured just before. ghz
# holds the streams (--stream-call-duration) on 10 connections; it shares the
# cores, which is why the server's own CPU is the figure. Writes
# loadtest/results/DATE-watch-heartbeats-MODE.md. Exit 1 if a stream failed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export PATH="$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin:$PATH"

mode=short
case "${1:-}" in
  --short | "") mode=short ;;
  --full) mode=full ;;
  *) echo "usage: loadtest/watch-heartbeats.sh [--short|--full]" >&2; exit 2 ;;
esac
if [ "$mode" = full ]; then streams=1000 secs=10 profile=${LOADTEST_PROFILE:-release}
else streams=100 secs=2 profile=${LOADTEST_PROFILE:-debug}; fi
interval_ms=100

log() { printf 'watch-heartbeats: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
. loadtest/lib.sh

bash scripts/install-deps.sh >/dev/null
build_release_or_debug "$profile" cxcache-server genesys-emulator

work=$(mktemp -d -t cxcache-hb-XXXX)
pids=()
cleanup() {
  stop_all "${pids[@]}"
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/genesys-emulator" --addr 127.0.0.1:0 >"$work/emu.out" 2>&1 &
pids+=($!)
emu=$(wait_line "$work/emu.out" 'listening on' | sed -E 's/.*listening on (http:[^ ]+).*/\1/') || die "emulator"
# The default configuration, as the README's first command runs it.
env -u RUST_LOG "$bin/cxcache" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --upstream-url "$emu" \
  --client-id cxcache-demo --client-secret demo-secret >"$work/cx.out" 2>"$work/cx.err" &
pids+=($!)
cx_pid=$!
line=$(wait_line "$work/cx.out" '^cxcache listening') || die "cxcache"
grpc=$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$line")
http=$(sed -E 's/.*http=([^ ]+).*/\1/' <<<"$line")

tck=$(getconf CLK_TCK)
streams_open() { curl -fsS "http://$http/metrics" | awk '/^cxcache_watch_subscribers /{print int($2)}'; }

# Idle rate first, over the same length of time.
t0=$(cpu_ticks "$cx_pid"); sleep "$secs"; idle=$(( $(cpu_ticks "$cx_pid") - t0 ))

hold=$((secs + 4))
timeout $((hold + 30)) ghz --insecure --proto proto/cxcache/v1/cache.proto --import-paths proto \
  --call cxcache.v1.Cache/Watch \
  -d "{\"prefixes\":[\"dev:\"],\"heartbeat_interval\":\"0.${interval_ms}s\"}" \
  -c "$streams" -n "$streams" --connections 10 --stream-call-duration "${hold}s" -O json "$grpc" \
  >"$work/ghz.json" 2>"$work/ghz.err" &
ghz_pid=$!
deadline=$((SECONDS + 30))
until [ "$(streams_open)" -ge "$streams" ]; do
  [ $SECONDS -lt $deadline ] || die "only $(streams_open) of $streams streams opened"
  sleep 0.1
done
t0=$(cpu_ticks "$cx_pid"); sleep "$secs"; busy=$(( $(cpu_ticks "$cx_pid") - t0 ))
open_after=$(streams_open)
wait "$ghz_pid" || true
[ "$open_after" -ge "$streams" ] || die "streams closed early ($open_after of $streams)"
errors=$(jq '[.statusCodeDistribution // {} | to_entries[] | select(.key != "OK" and .key != "Canceled" and .key != "DeadlineExceeded") | .value] | add // 0' "$work/ghz.json")

beats=$(( streams * secs * 1000 / interval_ms ))
report=$(python3 - "$idle" "$busy" "$tck" "$secs" "$streams" "$beats" "$interval_ms" <<'PY'
import sys
idle, busy, tck, secs, streams, beats, interval = (float(x) for x in sys.argv[1:])
net = max(busy - idle, 0) / tck
print(f"| {int(streams)} | {int(interval)} ms | {busy / tck / secs * 100:.1f} % | {idle / tck / secs * 100:.1f} % | "
      f"{net / secs * 100:.1f} % | {net * 1e6 / beats:.1f} | {beats / secs:,.0f} |")
PY
)
stamp=$(date -u +%Y-%m-%dT%H%MZ)
out="loadtest/results/$stamp-watch-heartbeats-$mode.md"
{
  echo "# Watch heartbeats: $streams streams at ${interval_ms} ms ($mode, $profile build, commit $(git rev-parse --short HEAD))"
  echo
  echo "Server CPU over ${secs} s with every stream open, against the same server idle just before."
  echo "Default configuration; ghz holds the streams on 10 connections and shares the 2 cores."
  echo
  echo "| streams | interval | server CPU (of one core) | idle | heartbeat cost | CPU µs per heartbeat | heartbeats/s |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  echo "$report"
  echo
  echo "Stream errors (other than the end of the hold): $errors."
} | tee "$out"
[ "$errors" -eq 0 ] || die "$errors streams failed"
