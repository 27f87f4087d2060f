#!/usr/bin/env bash
# Measures the delay from Invalidate on instance A to the Watch event on
# instance B (two cxcache instances on a real 3+3 Redis Cluster, loopback
# only) and prints p50/p99.   loadtest/invalidation-delay.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1000}
dir=$(mktemp -d)
trap 'bash scripts/redis-cluster.sh stop "$dir"; rm -rf "$dir"' EXIT
CXCACHE_TEST_REDIS_URL=$(bash scripts/redis-cluster.sh start "$dir")
export CXCACHE_TEST_REDIS_URL CXCACHE_DELAY_ROUNDS=$rounds
cargo test --release -q -p cxcache-e2e --test e2e invalidation::invalidate_on_one_instance_reaches_watchers_on_another \
  -- --nocapture 2>&1 | grep -E 'delay|test result'
