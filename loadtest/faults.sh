#!/usr/bin/env bash
# The fault-injection suite, longer: runs every fault scenario of
# tests/tests/e2e/faults.rs (a Redis master SIGKILLed, one instance cut off
# from Redis, the bus flooded past its buffer, a cxcache process SIGKILLed
# mid-fetch, the upstream hung) with the racing read-your-invalidation
# checker for DURATION seconds each, and prints a Markdown table of what
# each fault measured. Loopback only: its own Redis Cluster, in-process
# emulator and instances (plus one cxcache process).
#
#   loadtest/faults.sh [--secs N]   # each fault held N seconds (default 30)
#   loadtest/faults.sh --short      # the e2e tests' own few seconds
#   loadtest/faults.sh --only NAME  # one scenario (e.g. master, cut, flood, kill, hang)
#
# Without --short it also runs, at full size: the burst of 12 000 misses
# (a purge still reaches every instance; a slow subscriber gets LAGGED),
# 3000 rounds of cold Gets racing tag purges (no entry escapes), and
# 100 000 Gets of random ids plus 10 000 random purges (Redis memory
# before/after, against the bound the test states).
#
# Exits 1 when any promise broke (the table says which), 2 on a broken setup.
# Needs redis-server and jq (scripts/install-deps.sh) and cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=30
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) secs=${2:?--secs N}; shift 2 ;;
    --short) secs=""; shift ;;
    --only) only=${2:?--only NAME}; shift 2 ;;
    *) echo "usage: $0 [--secs N | --short] [--only NAME]" >&2; exit 2 ;;
  esac
done
command -v jq >/dev/null || { echo "faults.sh: jq not installed (scripts/install-deps.sh)" >&2; exit 2; }

dir=$(mktemp -d)
trap 'bash scripts/redis-cluster.sh stop "$dir/redis" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
CXCACHE_TEST_REDIS_URL=$(bash scripts/redis-cluster.sh start "$dir/redis")
export CXCACHE_TEST_REDIS_URL
if [ -n "$secs" ]; then export CXCACHE_FAULT_SECS=$secs; fi

# The SIGKILL-mid-fetch scenario runs the cxcache binary as a process.
cargo build -q -p cxcache-server
filter="faults::fault_${only}"
set +e
cargo test -q -p cxcache-e2e --test e2e "$filter" -- --nocapture --test-threads=1 >"$dir/out.txt" 2>&1
status=$?
set -e
grep -q 'FAULT-REPORT {' "$dir/out.txt" || { cat "$dir/out.txt" >&2; echo "faults.sh: no report (setup broken)" >&2; exit 2; }

# The scale runs (full mode, all scenarios only).
if [ -n "$secs" ] && [ -z "$only" ]; then
  set +e
  CXCACHE_BURST=12000 CXCACHE_RACE_ROUNDS=3000 CXCACHE_GROWTH_SCALE=100000 \
    cargo test -q -p cxcache-e2e --test e2e -- --nocapture --test-threads=1 \
    after_a_burst no_entry_escapes random_ids_and_random_purges >"$dir/scale.txt" 2>&1
  scale_status=$?
  set -e
  [ $scale_status = 0 ] || status=1
fi

stamp=$(date -u +%Y-%m-%dT%H%MZ)
out="loadtest/results/$stamp-faults.md"
mkdir -p loadtest/results
{
  echo "# Fault-injection run $stamp (${secs:-short} s per fault)"
  echo
  echo "| fault | s | Gets | Gets failed (code) | Invalidates | Invalidates failed (code) | stale reads | events checked | lost w/o LAGGED | LAGGED | upstream calls | 429s | notes |"
  echo "| --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  sed -n 's/^.*FAULT-REPORT {/{/p' "$dir/out.txt" | jq -r '
    def codes: if length == 0 then "0" else (to_entries | map("\(.key) \(.value)") | join(", ")) end;
    "| \(.fault) | \(.secs) | \(.gets) | \(.get_failed | codes) | \(.invalidates) | \(.invalidate_failed | codes) | \(.stale_reads) | \(.events_expected) | \(.lost_events) | \(.lagged) | \(.upstream_calls) | \(.upstream_429) | \(.notes | join("; ")) |"'
  echo
  echo "Broken promises:"
  echo
  if grep -q "panicked at" "$dir/out.txt"; then
    grep -A1 "panicked at" "$dir/out.txt" | grep -v "panicked at\|^--" | sed 's/^/- /'
  else
    echo "- none"
  fi
  echo
  echo "Stale reads (first few per fault):"
  echo
  sed -n 's/^.*FAULT-REPORT {/{/p' "$dir/out.txt" | jq -r '.fault as $f | .stale_examples[] | "- \($f): \(.)"'
  echo
  grep -E '^test result' "$dir/out.txt" || true
  if [ -f "$dir/scale.txt" ]; then
    echo
    echo "Scale runs:"
    echo
    grep -E 'misses in|racing rounds|random 404s|panicked|^test ' "$dir/scale.txt" | sed 's/^/- /'
  fi
} | tee "$out"
echo "written: $out" >&2
[ $status = 0 ] || exit 1
