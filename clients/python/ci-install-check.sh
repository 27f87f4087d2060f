#!/usr/bin/env bash
# Check that the Python client installs from its built artifacts, outside the repo.
#
#   bash clients/python/ci-install-check.sh
#
# 1. builds a wheel and an sdist (python -m build) into a temp dir;
# 2. creates a fresh venv outside the repo (mktemp -d), pip-installs the wheel and,
#    from a directory outside the repo, imports cxcache (its generated stubs and
#    version must be in the wheel); if CXCACHE_ADDR is set it also does a live Get of
#    kind "routing.queues" and prints the reply's source;
# 3. creates a second fresh venv, pip-installs the sdist (a build from the sdist on
#    its own) and does the import check there.
# Exits non-zero on any failure. Env: PYTHON (default python3), CXCACHE_ADDR (optional),
# KEEP_TMP=1 keeps the temp dir for inspection.
set -euo pipefail

PY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$PY_DIR/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/cxcache-install-check.XXXXXX")"
case "$TMP/" in "$ROOT"/*) echo "ci-install-check: temp dir $TMP is inside the repo" >&2; exit 2 ;; esac
cleanup() { if [[ "${KEEP_TMP:-0}" == 1 ]]; then echo "ci-install-check: kept $TMP"; else rm -rf "$TMP"; fi; }
trap cleanup EXIT
log() { echo "ci-install-check: $*"; }
PIP_FLAGS=(-q --disable-pip-version-check)
EXPECTED_VERSION="$(tr -d '[:space:]' <"$ROOT/VERSION")"

log "building wheel + sdist into $TMP/dist"
"$PYTHON" -m venv "$TMP/build-venv"
"$TMP/build-venv/bin/python" -m pip install "${PIP_FLAGS[@]}" build
# A copy of the package dir (plus VERSION and proto, where the build reads them) so
# that the build leaves no build/ or egg-info in the work tree.
mkdir -p "$TMP/src/clients"
mkdir -p "$TMP/src/clients/python"
tar -C "$PY_DIR" --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.egg-info' \
  --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache \
  --exclude=./src/cxcache/v1 --exclude=./src/cxcache/_version.py -cf - . |
  tar -C "$TMP/src/clients/python" -xf -
cp -r "$ROOT/proto" "$TMP/src/proto"
cp "$ROOT/VERSION" "$TMP/src/VERSION"
"$TMP/build-venv/bin/python" -m build --outdir "$TMP/dist" "$TMP/src/clients/python" >"$TMP/build.log" 2>&1 || {
  tail -n 40 "$TMP/build.log" >&2
  exit 1
}
WHEEL="$(ls "$TMP"/dist/cxcache-*.whl)"
SDIST="$(ls "$TMP"/dist/cxcache-*.tar.gz)"
log "built $(basename "$WHEEL") and $(basename "$SDIST")"

cat >"$TMP/check.py" <<'PY'
import os
import sys

import cxcache
from cxcache.v1 import cache_pb2, cache_pb2_grpc  # noqa: F401  (the generated stubs)

expected = sys.argv[1]
where = os.path.dirname(cxcache.__file__)
print(f"cxcache {cxcache.__version__} imported from {where}")
assert cxcache.__version__ == expected, (cxcache.__version__, expected)
assert "site-packages" in where, where
live = len(sys.argv) > 2 and sys.argv[2] == "live"
addr = os.environ.get("CXCACHE_ADDR")
if live and addr:
    with cxcache.CacheClient(addr, default_timeout=10) as cache:
        r = cache.get("routing.queues")
    print(f"live Get routing.queues from {addr}: source={r.source} key={r.key}")
elif live:
    print("CXCACHE_ADDR not set: no live Get")
PY

run_check() { # VENV_DIR [live]
  mkdir -p "$TMP/elsewhere"
  (cd "$TMP/elsewhere" && env -u PYTHONPATH "$1/bin/python" "$TMP/check.py" "$EXPECTED_VERSION" "${2:-}")
}

log "venv 1: install the wheel"
"$PYTHON" -m venv "$TMP/venv-wheel"
"$TMP/venv-wheel/bin/python" -m pip install "${PIP_FLAGS[@]}" "$WHEEL"
run_check "$TMP/venv-wheel" live

log "venv 2: install the sdist (builds from the sdist alone)"
"$PYTHON" -m venv "$TMP/venv-sdist"
"$TMP/venv-sdist/bin/python" -m pip install "${PIP_FLAGS[@]}" "$SDIST"
run_check "$TMP/venv-sdist"

log "ok"
