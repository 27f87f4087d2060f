#!/usr/bin/env bash
# The one command that installs what the tests need and runs every test:
#   bash scripts/test.sh
# Stages: install deps → fmt + clippy → build → start a shared 3+3 Redis
# Cluster → cargo tests (unit + end-to-end) → grpcurl script → client suites
# → load-test smoke run → stop the cluster. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export PATH="$(go env GOPATH 2>/dev/null)/bin:$PATH"

stage() { printf '\n=== %s ===\n' "$*"; }

stage "install dependencies"
bash scripts/install-deps.sh

stage "one version source"
version=$(cat VERSION)
grep -q "^version = \"$version\"" Cargo.toml || { echo "Cargo.toml's workspace version is not VERSION ($version)" >&2; exit 1; }
echo "version $version"

stage "format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

stage "build without the bundled emulator (as the Docker image does)"
nodef=$(mktemp -d -t cxcache-noemu-XXXX)
cargo build -p cxcache-server --no-default-features --quiet
cp target/debug/cxcache "$nodef/cxcache"
if grep -q genesys_emulator "$nodef/cxcache"; then
  echo "the --no-default-features binary still contains the emulator" >&2; exit 1
fi
set +e
"$nodef/cxcache" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 >"$nodef/out" 2>&1
rc=$?
set -e
if [ "$rc" -ne 2 ] || ! grep -q 'upstream.base_url' "$nodef/out"; then
  echo "without an upstream URL it must exit 2 naming upstream.base_url; got $rc:" >&2
  cat "$nodef/out" >&2; exit 1
fi
echo "no-emulator build refuses to start without an upstream: $(head -c 160 "$nodef/out" | tr '\n' ' ')"
rm -rf "$nodef"

stage "build"
cargo build --workspace --all-targets --quiet

stage "start Redis Cluster (3 masters, 3 replicas)"
cluster_dir=$(mktemp -d -t cxcache-ci-redis-XXXX)
cleanup() { bash scripts/redis-cluster.sh stop "$cluster_dir" || true; rm -rf "$cluster_dir"; }
trap cleanup EXIT
CXCACHE_TEST_REDIS_URL=$(bash scripts/redis-cluster.sh start "$cluster_dir")
export CXCACHE_TEST_REDIS_URL
echo "cluster at $CXCACHE_TEST_REDIS_URL"

stage "cargo test"
cargo test --workspace --quiet 2>&1 | tee "$cluster_dir/cargo-test.log"

stage "grpcurl against the binary (reflection)"
bash tests/grpcurl.sh target/debug/cxcache

if [ -x clients/run-tests.sh ]; then
  stage "client suites (Python, Node, Java)"
  bash clients/run-tests.sh
fi

stage "live server for the deploy and packaging checks"
scripts/live-server.sh start
set -a
# shellcheck disable=SC1091
. target/live/env
set +a
trap 'scripts/live-server.sh stop || true; cleanup' EXIT

stage "deploy: alert rules, dashboard, Helm chart, metrics cross-check"
bash deploy/check.sh --metrics-url "http://$CXCACHE_HTTP_ADDR/metrics" --grpc-addr "$CXCACHE_ADDR"

stage "clients installed from their built artifacts, outside the repository"
for c in python node java; do
  if [ -f "clients/$c/ci-install-check.sh" ]; then
    echo "--- $c"
    bash "clients/$c/ci-install-check.sh"
  fi
done
scripts/live-server.sh stop
trap cleanup EXIT

if [ -x loadtest/run.sh ]; then
  stage "load test (short mode)"
  bash loadtest/run.sh --short
  stage "Watch heartbeat cost (short mode)"
  bash loadtest/watch-heartbeats.sh --short
  stage "peers: nginx proxy_cache and FastAPI beside the HTTP door (short mode)"
  bash loadtest/peers.sh --short
  stage "scaling: memory per entry, tag purges, instances, Watch fan-out (short mode)"
  bash loadtest/scaling.sh --short
fi

stage "done"
echo "all stages passed"
