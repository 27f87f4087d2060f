#!/usr/bin/env bash
# Quota load test (issue 3): K tokens at R calls per window on the Genesys
# emulator, a miss-heavy load of distinct keys through two cxcache instances
# sharing one Redis Cluster. Prints the upstream utilisation (calls that
# reached the emulator / K x R over the run) and the 429 count.
#
#   loadtest/quota.sh                 # 4 tokens x 60 calls / 2 s, 20 s
#   QUOTA_TOKENS=8 QUOTA_RATE=100 QUOTA_SECS=60 loadtest/quota.sh --release
#
# Everything runs on 127.0.0.1 (emulator and instances in-process, Redis on
# loopback: the cluster in CXCACHE_TEST_REDIS_URL, else a private one that is
# stopped afterwards). The run is bounded: QUOTA_SECS is capped at 600.
# Environment: QUOTA_TOKENS (K), QUOTA_RATE (R), QUOTA_WINDOW_SECS,
# QUOTA_SECS, QUOTA_WORKERS (concurrent callers per instance).
# Exit status: 0 when the run had no 429 and reached 90 % utilisation, 3 when
# it ran but missed either, 1 when it could not run.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=()
for arg in "$@"; do
  case "$arg" in
    --release) profile=(--release) ;;
    *) echo "usage: $0 [--release]" >&2; exit 1 ;;
  esac
done

out=$(mktemp -t cxcache-quota-XXXX)
trap 'rm -f "$out"' EXIT
if ! timeout 900 cargo test "${profile[@]}" -q -p cxcache-e2e --test e2e quota::loadtest_quota \
    -- --ignored --nocapture --exact >"$out" 2>&1; then
  cat "$out" >&2
  exit 1
fi
line=$(grep -E '^tokens=' "$out" || true)
if [ -z "$line" ]; then
  cat "$out" >&2
  exit 1
fi
echo "$line"
util=$(sed -E 's/.*utilisation=([0-9.]+)%.*/\1/' <<<"$line")
limited=$(sed -E 's/.* 429s=([0-9]+).*/\1/' <<<"$line")
if [ "$limited" != "0" ] || awk -v u="$util" 'BEGIN { exit !(u < 90) }'; then
  echo "quota target missed: utilisation ${util}% (want >= 90), 429s ${limited} (want 0)" >&2
  exit 3
fi
echo "quota target met: utilisation ${util}% >= 90 %, no 429"
