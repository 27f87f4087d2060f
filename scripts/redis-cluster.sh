#!/usr/bin/env bash
# Starts or stops a local Redis Cluster of 3 masters + 3 replicas on loopback.
#
#   scripts/redis-cluster.sh start DIR [FIRST_PORT]   # prints redis-cluster://127.0.0.1:FIRST_PORT?node=…
#   scripts/redis-cluster.sh stop DIR
#   scripts/redis-cluster.sh kill DIR PORT            # SIGKILL one node (failover tests)
#   scripts/redis-cluster.sh restart DIR PORT         # start a killed node again
#
# Nodes use ports FIRST_PORT..FIRST_PORT+5 (cluster bus: +10000) and a short
# cluster-node-timeout so failover tests finish in seconds. Nothing is
# persisted. Used by .ci/run (one cluster for the whole test run) and by the
# Rust test harness (private clusters for tests that kill nodes).
set -euo pipefail

cmd=${1:?usage: redis-cluster.sh start|stop|kill|restart DIR [PORT]}
dir=${2:?DIR required}
node_timeout=${CXCACHE_CLUSTER_NODE_TIMEOUT_MS:-2000}

log() { echo "redis-cluster: $*" >&2; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_node() {
  local port=$1 nd="$dir/$1"
  mkdir -p "$nd"
  redis-server --port "$port" --bind 127.0.0.1 --protected-mode no \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout "$node_timeout" \
    --cluster-replica-validity-factor 0 \
    --dir "$nd" --save "" --appendonly no --daemonize yes \
    --pidfile "$nd/redis.pid" --logfile "$nd/redis.log"
}

wait_ping() {
  local port=$1
  for _ in $(seq 1 200); do
    [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.05
  done
  log "node $port did not answer PING"; return 1
}

case "$cmd" in
  start)
    command -v redis-server >/dev/null || { log "redis-server not installed (scripts/install-deps.sh)"; exit 1; }
    first=${3:-}
    if [ -z "$first" ]; then
      # Pick a block of 6 free ports whose bus ports (+10000) are free too.
      for _ in $(seq 1 50); do
        cand=$(( 20000 + (RANDOM % 4000) * 2 ))
        ok=1
        for i in 0 1 2 3 4 5; do
          port_free $((cand + i)) && port_free $((cand + i + 10000)) || { ok=0; break; }
        done
        [ $ok = 1 ] && { first=$cand; break; }
      done
      [ -n "$first" ] || { log "no free port block found"; exit 1; }
    fi
    mkdir -p "$dir"
    echo "$first" > "$dir/first_port"
    ports=()
    for i in 0 1 2 3 4 5; do
      ports+=($((first + i)))
      start_node $((first + i))
    done
    for p in "${ports[@]}"; do wait_ping "$p"; done
    nodes=()
    for p in "${ports[@]}"; do nodes+=("127.0.0.1:$p"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 \
      || { log "cluster create failed:"; cat "$dir/create.log" >&2; exit 1; }
    # Wait until every node agrees the cluster is up and all slots are served
    # (bounded: 30 s, generous for a loaded machine).
    for _ in $(seq 1 600); do
      all_ok=1
      for p in "${ports[@]}"; do
        redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || { all_ok=0; break; }
      done
      [ $all_ok = 1 ] && break
      sleep 0.05
    done
    [ $all_ok = 1 ] || { log "cluster did not reach state ok"; exit 1; }
    # ...and until the three replicas are known as such (failover tests need them).
    for _ in $(seq 1 600); do
      [ "$(redis-cli -p "$first" cluster nodes 2>/dev/null | grep -c slave)" -ge 3 ] && break
      sleep 0.05
    done
    # Every node as a seed: fred re-reads the topology only from the seeds it
    # was given, so a single seed that dies would leave it blind.
    echo "redis-cluster://127.0.0.1:$first?node=127.0.0.1:$((first+1))&node=127.0.0.1:$((first+2))&node=127.0.0.1:$((first+3))&node=127.0.0.1:$((first+4))&node=127.0.0.1:$((first+5))"
    ;;
  stop)
    for pidfile in "$dir"/*/redis.pid; do
      [ -f "$pidfile" ] || continue
      kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    for pidfile in "$dir"/*/redis.pid; do
      [ -f "$pidfile" ] || continue
      pid=$(cat "$pidfile")
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
      kill -9 "$pid" 2>/dev/null || true
    done
    ;;
  kill)
    port=${3:?PORT required}
    kill -9 "$(cat "$dir/$port/redis.pid")"
    ;;
  restart)
    port=${3:?PORT required}
    start_node "$port"
    wait_ping "$port"
    ;;
  *)
    log "unknown command $cmd"; exit 2 ;;
esac
