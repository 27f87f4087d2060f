#!/usr/bin/env bash
# Near cache benchmark of the Java client: Gets/s and latency per Get of one key, near cache off
# (server L1 hits) vs on (near hits), in one run (io.cxcache.client.NearBench, test sources).
#
#   loadtest/near-java.sh [SECONDS_PER_MODE (3)] [THREADS (1)]
#
# Uses CXCACHE_ADDR when set; otherwise starts its own pair with scripts/live-server.sh
# (LIVE_DIR=target/near-java, binaries from CXCACHE_BIN_DIR or target/debug) and stops it.
# Results: loadtest/results/2026-12-01-near-java.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JAVA_DIR="$ROOT/clients/java"
export LIVE_DIR="${LIVE_DIR:-$ROOT/target/near-java}"
STARTED=0
if [[ -z "${CXCACHE_ADDR:-}" ]]; then
  "$ROOT/scripts/live-server.sh" start
  STARTED=1
  trap '"$ROOT/scripts/live-server.sh" stop' EXIT
  set -a
  # shellcheck disable=SC1091
  . "$LIVE_DIR/env"
  set +a
fi
MVN=(nice -n 10 mvn -B -q)
(cd "$JAVA_DIR" && { "${MVN[@]}" -o test-compile >/dev/null 2>&1 || "${MVN[@]}" test-compile; })
CP_FILE="$(mktemp)"
(cd "$JAVA_DIR" && { "${MVN[@]}" -o dependency:build-classpath -Dmdep.outputFile="$CP_FILE" -Dmdep.includeScope=test \
  >/dev/null 2>&1 || "${MVN[@]}" dependency:build-classpath -Dmdep.outputFile="$CP_FILE" -Dmdep.includeScope=test; })
CP="$JAVA_DIR/target/test-classes:$JAVA_DIR/target/classes:$(cat "$CP_FILE")"
rm -f "$CP_FILE"
java -cp "$CP" io.cxcache.client.NearBench "$CXCACHE_ADDR" "${1:-3}" "${2:-1}"
((STARTED)) && echo "near-java: server started by this script (stopped on exit)" || true
