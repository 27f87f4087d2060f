#!/usr/bin/env bash
# Build and test the three cxcache clients (python, node, java) plus the proto checks.
#
#   clients/run-tests.sh [--no-live] [proto] [python] [node] [java]
#
# With no suite names it runs all four. Installs what is missing (a venv in
# clients/python/.venv, npm ci, Maven dependencies into ~/.m2) and skips that work
# when it is already done. Unless CXCACHE_ADDR is already set (then CXCACHE_EMULATOR_URL
# must be too) it starts a live server pair with scripts/live-server.sh (the Rust
# binaries must be built: cargo build -p cxcache-server -p genesys-emulator) and stops
# it at the end (with --secure: TLS and mutual-TLS instances too, see live-server.sh).
# --no-live runs only the offline tests (live ones are skipped).
# Exits non-zero if any suite failed.
set -uo pipefail

CLIENTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$CLIENTS")"
LIVE=1
SUITES=()
for a in "$@"; do
  case "$a" in
    --no-live) LIVE=0 ;;
    proto | python | node | java) SUITES+=("$a") ;;
    -h | --help)
      sed -n '2,14p' "$0"
      exit 0
      ;;
    *)
      echo "run-tests: unknown argument '$a'" >&2
      exit 64
      ;;
  esac
done
((${#SUITES[@]})) || SUITES=(proto python node java)
want() { [[ " ${SUITES[*]} " == *" $1 "* ]]; }

declare -A RESULT
section() { printf '\n=== %s ===\n' "$*"; }
fail_setup() {
  echo "run-tests: $1 setup failed" >&2
  RESULT[$1]="setup failed"
}

# Stamp helpers: redo an install step only when its inputs changed.
stamp_ok() { [[ -f "$1" && "$(cat "$1")" == "$2" ]]; }
hash_files() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

# ---------------------------------------------------------------- setup
setup_python() {
  local py="$CLIENTS/python" venv="$CLIENTS/python/.venv" h
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv" || return 1
  fi
  h="$(hash_files "$py/pyproject.toml" "$py/setup.py")"
  if ! stamp_ok "$venv/.cxcache-installed" "$h"; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
      "setuptools>=69" "grpcio-tools>=1.85,<1.86" &&
      "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation \
        -e "$py[test]" &&
      echo "$h" >"$venv/.cxcache-installed" || return 1
  fi
  (cd "$py" && "$venv/bin/python" build_protos.py)
}

setup_node() {
  local node="$CLIENTS/node" h
  h="$(hash_files "$node/package.json" "$node/package-lock.json")"
  if [[ ! -d "$node/node_modules" ]] || ! stamp_ok "$node/node_modules/.cxcache-installed" "$h"; then
    (cd "$node" && npm ci --no-audit --no-fund --loglevel=error) || return 1
    echo "$h" >"$node/node_modules/.cxcache-installed"
  fi
  (cd "$node" && npm run --silent build)
}

MVN_OFFLINE=()
setup_java() {
  local java="$CLIENTS/java"
  # Offline first (fast, no registry traffic once ~/.m2 is warm), online otherwise.
  if (cd "$java" && mvn -B -q -o -DskipTests test-compile >/dev/null 2>&1); then
    MVN_OFFLINE=(-o)
  else
    (cd "$java" && mvn -B -q -DskipTests test-compile) || return 1
    MVN_OFFLINE=()
  fi
}

# ---------------------------------------------------------------- suites
run_proto() { "$CLIENTS/proto-check.sh"; }
run_python() { (cd "$CLIENTS/python" && .venv/bin/python -m pytest -q); }
run_node() { (cd "$CLIENTS/node" && node --test --test-concurrency=1 dist/test/*.test.js); }
run_java() { (cd "$CLIENTS/java" && mvn -B -ntp "${MVN_OFFLINE[@]}" test); }

for s in python node java; do
  if want "$s"; then
    section "setup $s"
    if "setup_$s"; then echo "run-tests: $s ready"; else fail_setup "$s"; fi
  fi
done

STARTED_LIVE=0
stop_live() {
  if ((STARTED_LIVE)); then
    "$ROOT/scripts/live-server.sh" stop
    STARTED_LIVE=0
  fi
}
trap stop_live EXIT
trap 'exit 130' INT TERM

if ((LIVE)) && { want python || want node || want java; }; then
  if [[ -n "${CXCACHE_ADDR:-}" ]]; then
    if [[ -z "${CXCACHE_EMULATOR_URL:-}" ]]; then
      echo "run-tests: CXCACHE_ADDR is set but CXCACHE_EMULATOR_URL is not" >&2
      exit 2
    fi
    echo "run-tests: using the server at CXCACHE_ADDR=$CXCACHE_ADDR"
  else
    section "live server"
    if ! CXCACHE_SECURE=1 "$ROOT/scripts/live-server.sh" start; then
      echo "run-tests: could not start the live server (use --no-live for offline tests only)" >&2
      exit 2
    fi
    STARTED_LIVE=1
    set -a
    # shellcheck disable=SC1091
    . "$ROOT/target/live/env"
    set +a
  fi
else
  unset CXCACHE_ADDR CXCACHE_EMULATOR_URL
fi
export CXCACHE_ADDR CXCACHE_EMULATOR_URL 2>/dev/null || true

for s in proto python node java; do
  want "$s" || continue
  [[ -n "${RESULT[$s]:-}" ]] && continue
  section "test $s"
  if "run_$s"; then RESULT[$s]=passed; else RESULT[$s]=FAILED; fi
done

stop_live

section "summary"
rc=0
for s in proto python node java; do
  want "$s" || continue
  printf '  %-7s %s\n' "$s" "${RESULT[$s]}"
  [[ "${RESULT[$s]}" == passed ]] || rc=1
done
exit $rc
