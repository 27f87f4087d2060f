#!/usr/bin/env bash
# Peers in the same run (issue 16, item 3): cxcache's HTTP data-action door
# against nginx proxy_cache and a FastAPI + redis.asyncio cache-aside service,
# all in front of one Genesys emulator, all serving the same request:
#
#   POST /data-action {"kind":"routing.queue","id":"<queue>"}
#   -> GET {emulator}/api/v2/routing/queues/<queue>
#
#   loadtest/peers.sh --short   # debug build, 3 s runs: a smoke test in seconds
#   loadtest/peers.sh --full    # release build (debug if none is built), 10 s runs
#
# Starts (all on 127.0.0.1, stopped on exit): the emulator (rate limit
# lifted), a 3+3 Redis Cluster (scripts/redis-cluster.sh) that both cxcache
# instances use, a standalone redis-server, cxcache
# (default configuration: L1 on) and cxcache with L1 off (every hit from the
# cluster), nginx (loadtest/peers/nginx.conf.template) and the FastAPI
# service (loadtest/peers/app.py, 2 uvicorn workers) twice: on the standalone
# redis-server and on the cluster. Builds nothing: it uses the binaries in
# target/ (run cargo build first) and says which in the results.
#
# Per peer: warm hits under wrk (same settings for all; req/s, p50/p99, server
# CPU µs/req from /proc/<pid>/stat of the server's whole process tree, Redis
# CPU µs/req beside it), then a cold stampede: 200 identical requests sent at
# once on a key no peer has cached, the upstream answering that path in
# 100 ms; upstream calls counted by the emulator (/admin/counters).
#
# Writes loadtest/results/DATE-peers-MODE.md. Exit status: 0 = ran without
# errors (performance is reported, never enforced); 1 = broken (a process did
# not start, a request failed, or a cxcache stampede took other than exactly
# one upstream call — that is coalescing, not speed).
#
# Environment: PEERS_DURATION (seconds), PEERS_PROFILE (debug|release),
# PEERS_CONNECTIONS (50), PEERS_THREADS (2), PEERS_STAMPEDE (200),
# PEERS_STAMPEDE_LATENCY_MS (100), PEERS_FASTAPI_REDIS (both|standalone|cluster: which FastAPI rows),
# PEERS_KEEP=1 (keep the work directory: logs, configs, wrk output);
# CARGO_TARGET_DIR (where the binaries are; default target/).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

mode=short
for arg in "$@"; do
  case "$arg" in
    --short) mode=short ;;
    --full) mode=full ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "usage: loadtest/peers.sh [--short|--full]" >&2; exit 2 ;;
  esac
done
if [ "$mode" = full ]; then
  duration=${PEERS_DURATION:-10} profile=${PEERS_PROFILE:-release} warmup=2
else
  duration=${PEERS_DURATION:-3} profile=${PEERS_PROFILE:-debug} warmup=1
fi
conns=${PEERS_CONNECTIONS:-50}
threads=${PEERS_THREADS:-2}
stampede_n=${PEERS_STAMPEDE:-200}
stampede_latency=${PEERS_STAMPEDE_LATENCY_MS:-100}
fastapi_redis=${PEERS_FASTAPI_REDIS:-both}

log() { printf 'peers: %s\n' "$*" >&2; }
# Everything this script starts (servers, Redis, wrk) runs at nice 10: the
# machine is shared, and all contenders keep the same priority.
renice -n 10 -p $$ >/dev/null 2>&1 || true
die() { log "FAILED: $*"; exit 1; }
. loadtest/lib.sh

# --- tools ------------------------------------------------------------------
need_apt=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v jq >/dev/null || need_apt+=(jq)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
export PATH="/usr/sbin:$PATH"
# Debian's nginx package may start a system nginx; this script runs its own.

venv=loadtest/peers/.venv
if ! cmp -s loadtest/peers/requirements.txt "$venv/.installed" 2>/dev/null; then
  log "installing the FastAPI peer's packages into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r loadtest/peers/requirements.txt
  cp loadtest/peers/requirements.txt "$venv/.installed"
fi

# --- binaries (built elsewhere; nothing is built here) -----------------------
bin="${CARGO_TARGET_DIR:-$root/target}/$profile"
if [ ! -x "$bin/cxcache" ] || [ ! -x "$bin/genesys-emulator" ]; then
  if [ "$profile" = release ] && [ -x "${bin%/release}/debug/cxcache" ]; then
    log "no release build: using the debug binaries"
    profile=debug bin="${bin%/release}/debug"
  else
    die "no $profile binaries in $bin (cargo build -p cxcache-server -p genesys-emulator first)"
  fi
fi
bin_built=$(date -u -r "$bin/cxcache" +%Y-%m-%dT%H:%MZ)
build_note="$profile build of \`$bin/cxcache\`, built $bin_built"
last_server=$(git log -1 --format='%h %ct' -- server emulator Cargo.lock 2>/dev/null || true)
if [ -n "$last_server" ] && [ "$(stat -c %Y "$bin/cxcache")" -lt "${last_server#* }" ]; then
  build_note="$build_note — before the last server/emulator commit \`${last_server%% *}\`, which it may not include"
fi

# --- processes --------------------------------------------------------------
work=$(mktemp -d -t cxcache-peers-XXXX)
pids=()
redis_dir=""
nginx_pid=""
cleanup() {
  local rc=$?
  set +e
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ]; then
    for f in "$work"/fastapi-*.out "$work"/nginx/error.log "$work"/*.err; do
      [ -s "$f" ] && { log "last lines of ${f#"$work"/}:"; tail -n 15 "$f" >&2; }
    done
  fi
  [ -n "$nginx_pid" ] && kill -QUIT "$nginx_pid" 2>/dev/null
  stop_all "${pids[@]}"
  [ -n "$redis_dir" ] && bash scripts/redis-cluster.sh stop "$redis_dir" >/dev/null 2>&1
  if [ -n "${PEERS_KEEP:-}" ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_http URL: until it answers 2xx (30 s at most).
wait_http() {
  for _ in $(seq 1 600); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.05; done
  return 1
}

"$bin/genesys-emulator" --addr 127.0.0.1:0 --rate-limit 1000000000 >"$work/emulator.out" 2>&1 &
pids+=($!)
emu=$(wait_line "$work/emulator.out" 'listening on' | sed -E 's/.*listening on (http:[^ ]+).*/\1/') \
  || die "the emulator did not start"
emu_hostport=${emu#http://}
counters() { curl -fsS "$emu/admin/counters"; }
route_calls() { jq '.by_route["GET /api/v2/routing/queues/{id}"] // 0' <<<"$1"; }
total_calls() { jq '.total' <<<"$1"; }

token=$(curl -fsS -u cxcache-demo:demo-secret -d grant_type=client_credentials "$emu/oauth/token" | jq -r '.access_token') \
  || die "no token from the emulator"
queue_ids=$(curl -fsS -H "Authorization: Bearer $token" "$emu/api/v2/routing/queues?pageSize=3" | jq -r '.entities[].id')
hit_id=$(sed -n 1p <<<"$queue_ids")
stampede_id=$(sed -n 2p <<<"$queue_ids")
[ -n "$hit_id" ] && [ -n "$stampede_id" ] || die "the emulator listed no queues"
hit_body="{\"kind\":\"routing.queue\",\"id\":\"$hit_id\"}"
stampede_body="{\"kind\":\"routing.queue\",\"id\":\"$stampede_id\"}"

# Two tries: on a busy shared machine a node can be slow to answer, or a
# port picked as free be taken by another test's cluster in the meantime.
cluster_url=""
for try in 1 2; do
  redis_dir="$work/redis$try"
  cluster_url=$(bash scripts/redis-cluster.sh start "$redis_dir") && break
  bash scripts/redis-cluster.sh stop "$redis_dir" >/dev/null 2>&1 || true
  cluster_url=""
  log "the Redis cluster did not start (try $try)"
done
[ -n "$cluster_url" ] || die "the Redis cluster did not start"
cluster_pids=$(cat "$redis_dir"/*/redis.pid)

solo_port=$(free_port)
redis-server --port "$solo_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
  >"$work/redis-solo.out" 2>&1 &
solo_pid=$!
pids+=($solo_pid)
for _ in $(seq 1 200); do [ "$(redis-cli -p "$solo_port" ping 2>/dev/null)" = PONG ] && break; sleep 0.05; done
[ "$(redis-cli -p "$solo_port" ping 2>/dev/null)" = PONG ] || die "the standalone redis-server did not start"

# start_cxcache NAME [ENV=VALUE...]: sets $http_addr and $inst_pid. The
# default configuration (log level included) except the per-token budget,
# lifted like the emulator's.
start_cxcache() {
  local name=$1; shift
  env -u RUST_LOG CXCACHE_UPSTREAM__RATE_LIMIT__ALLOWED=1000000000 "$@" "$bin/cxcache" --env "peers$$$name" \
    --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --redis-url "$cluster_url" \
    --upstream-url "$emu" --client-id cxcache-demo --client-secret demo-secret \
    >"$work/$name.out" 2>"$work/$name.err" &
  inst_pid=$!
  pids+=($inst_pid)
  local line
  line=$(wait_line "$work/$name.out" '^cxcache listening') || { tail -n 20 "$work/$name.err" >&2; die "cxcache $name did not start"; }
  http_addr=$(sed -E 's/.*http=([^ ]+).*/\1/' <<<"$line")
}
start_cxcache l1
cx_addr=$http_addr cx_pid=$inst_pid
start_cxcache nol1 CXCACHE_CACHE__L1__ENABLED=false
cxr_addr=$http_addr cxr_pid=$inst_pid

# nginx: its own prefix, the token fetched above templated into the config.
ng_port=$(free_port)
ng_addr=127.0.0.1:$ng_port
mkdir -p "$work/nginx"
sed -e "s#@WORK@#$work/nginx#g" -e "s#@UPSTREAM@#$emu_hostport#g" -e "s#@TOKEN@#$token#g" \
  -e "s#@LISTEN@#$ng_addr#g" loadtest/peers/nginx.conf.template >"$work/nginx/nginx.conf"
nginx -t -q -p "$work/nginx" -c "$work/nginx/nginx.conf" 2>"$work/nginx/test.err" \
  || { cat "$work/nginx/test.err" >&2; die "nginx config"; }
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' >"$work/nginx/out" 2>&1 &
nginx_pid=$!
pids+=($nginx_pid)
wait_http "http://$ng_addr/healthz" || { cat "$work/nginx/error.log" >&2 || true; die "nginx did not start"; }

# FastAPI: 2 uvicorn workers, access log off (nginx's is off too; cxcache logs no hits).
# start_fastapi NAME standalone|cluster: 2 uvicorn workers, access log off
# (nginx's is off too; cxcache logs no hits). Sets $fa_addr, $fa_pid, $fa_redis_pids.
start_fastapi() {
  local name=$1 which=$2 url cluster
  if [ "$which" = cluster ]; then
    url="redis://${cluster_url#redis-cluster://}"; url=${url%%\?*}; cluster=1; fa_redis_pids=$cluster_pids
  else
    url="redis://127.0.0.1:$solo_port"; cluster=0; fa_redis_pids=$solo_pid
  fi
  local port; port=$(free_port)
  fa_addr=127.0.0.1:$port
  local before; before=$(counters | jq '.by_route["POST /oauth/token"] // 0')
  ( cd loadtest/peers && exec env UPSTREAM_URL="$emu" CLIENT_ID=cxcache-demo CLIENT_SECRET=demo-secret \
      REDIS_URL="$url" REDIS_CLUSTER=$cluster CACHE_TTL=300 \
      .venv/bin/uvicorn app:app --host 127.0.0.1 --port "$port" --workers 2 \
      --no-access-log --log-level warning ) >"$work/$name.out" 2>&1 &
  fa_pid=$!
  pids+=($fa_pid)
  wait_http "http://$fa_addr/healthz" || { tail -n 30 "$work/$name.out" >&2; die "the FastAPI service ($which) did not start"; }
  # Each worker fetches its token at startup: wait for both.
  for _ in $(seq 1 200); do
    [ "$(counters | jq '.by_route["POST /oauth/token"] // 0')" -ge $((before + 2)) ] && break; sleep 0.05
  done
}
fa_rows=()
case "$fastapi_redis" in
  both) fa_kinds="standalone cluster" ;;
  standalone|cluster) fa_kinds=$fastapi_redis ;;
  *) die "PEERS_FASTAPI_REDIS must be both, standalone or cluster" ;;
esac
declare -A fa_addr_of fa_pid_of fa_rpids_of
for k in $fa_kinds; do
  start_fastapi "fastapi-$k" "$k"
  fa_addr_of[$k]=$fa_addr fa_pid_of[$k]=$fa_pid fa_rpids_of[$k]=$fa_redis_pids
done
declare -A fa_label=(
  [standalone]="FastAPI + redis.asyncio, standalone redis-server"
  [cluster]="FastAPI + redis.asyncio, RedisCluster on the 3+3 cluster"
)
log "emulator $emu; cxcache $cx_addr (L1 on), $cxr_addr (L1 off); nginx $ng_addr; FastAPI $(for k in $fa_kinds; do printf '%s ' "$k ${fa_addr_of[$k]}"; done); cluster ${cluster_url%%\?*}"

# --- measuring --------------------------------------------------------------
hz=$(getconf CLK_TCK)
# tree PID: the pid and all its descendants.
tree() { echo "$1"; local c; for c in $(pgrep -P "$1" || true); do tree "$c"; done; }
# snap PID...: "pid:ticks" for each, user+system CPU so far (comm may hold spaces).
snap() {
  local p v
  for p in "$@"; do
    v=$(sed -E 's/^.*\) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }') || v=""
    [ -n "$v" ] && printf '%s:%s ' "$p" "$v"
  done
}
# spent SNAPSHOT: CPU ticks used since the snapshot by the processes in it (one
# that has exited since, such as nginx's cache loader, adds nothing).
spent() {
  local sum=0 e p v
  for e in $1; do
    p=${e%%:*}
    v=$(sed -E 's/^.*\) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }') || v=""
    [ -n "$v" ] && sum=$((sum + v - ${e#*:}))
  done
  echo "$sum"
}
us_per() { awk -v t="$1" -v hz="$hz" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "n/a" }'; }
ms() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1000 }'; }

failures=0
peer_errors=()
declare -A cpu_of

# count_errors NAME N: cxcache's errors fail the run; a peer's are reported
# beside its row (its numbers are then not comparable) but are the peer's
# own, not a defect of cxcache, so they do not fail CI.
count_errors() {
  case "$1" in
    cx*) failures=$((failures + $2)) ;;
    *) peer_errors+=("$1: $2") ;;
  esac
}
rows=()
stampede_rows=()

# one_post URL BODY: status and the header that says who answered (an empty
# BODY sends a GET).
one_post() {
  local data=(-H 'content-type: application/json' -d "$2"); [ -n "$2" ] || data=()
  curl -sS -o /dev/null -D - "${data[@]}" "$1" \
    | tr -d '\r' | awk 'NR==1 { s=$2 } tolower($1) ~ /^(x-cxcache-source|x-cache-status|x-cache):$/ { h=$2 } END { print s, h }'
}

# hits NAME LABEL ADDR SERVER_PID REDIS_PIDS [PATH]: the data-action POST,
# or with PATH a plain GET of it.
hits() {
  local name=$1 label=$2 addr=$3 spid=$4 rpids=$5 path=${6:-}
  local url="http://$addr/data-action" body=$hit_body method=POST
  [ -n "$path" ] && url="http://$addr$path" body="" method=GET
  local first second
  first=$(one_post "$url" "$body"); second=$(one_post "$url" "$body")
  [ "${first%% *}" = 200 ] && [ "${second%% *}" = 200 ] || die "$name warm-up answered '$first' then '$second'"
  local answered=${second#* }
  PEERS_METHOD=$method PEERS_BODY=$body wrk -t"$threads" -c"$conns" -d"${warmup}s" -s loadtest/peers/post.lua "$url" >/dev/null 2>&1 || true
  answered=$(one_post "$url" "$body"); answered=${answered#* }
  local procs; procs=$(tree "$spid" | xargs)
  local c0 t0 r0 c1
  c0=$(counters); t0=$(snap $procs); r0=$(snap $rpids)
  PEERS_METHOD=$method PEERS_BODY=$body wrk -t"$threads" -c"$conns" -d"${duration}s" --timeout 5s -s loadtest/peers/post.lua \
    "$url" >"$work/$name.wrk" 2>&1 || { cat "$work/$name.wrk" >&2; die "wrk against $name"; }
  local dt dr; dt=$(spent "$t0"); dr=$(spent "$r0"); c1=$(counters)
  local j; j=$(grep -m1 '^{' "$work/$name.wrk") || { cat "$work/$name.wrk" >&2; die "no wrk summary for $name"; }
  local n errs rps
  n=$(jq '.requests' <<<"$j")
  errs=$(jq '.connect + .read + .write + .status + .timeout' <<<"$j")
  rps=$(jq '.requests / (.duration_us / 1e6) | floor' <<<"$j")
  if [ "$errs" -ne 0 ]; then count_errors "$name" "$errs"; log "$name: errors $(jq -c '{connect,read,write,status,timeout}' <<<"$j")"; fi
  local up=$(( $(total_calls "$c1") - $(total_calls "$c0") ))
  local nproc_s; nproc_s=$(wc -w <<<"$procs")
  local rcpu="—"; [ -n "$rpids" ] && rcpu=$(us_per $dr "$n")
  cpu_of[$name]=$(us_per $dt "$n")
  rows+=("| $label | ${answered:-?} | $rps | $(us_per $dt "$n") | $rcpu | $(ms "$(jq .p50_us <<<"$j")") | $(ms "$(jq .p99_us <<<"$j")") | $(jq '.bytes / .requests | floor' <<<"$j") | $nproc_s | $errs | $up |")
  log "$name: $rps req/s, CPU $(us_per $dt "$n") µs/req, p99 $(ms "$(jq .p99_us <<<"$j")") ms, $errs errors, $up upstream calls"
}

# stampede NAME LABEL ADDR: N identical requests at once on the fresh key.
stampede() {
  local name=$1 label=$2 addr=$3
  local c0 c1 j
  c0=$(counters)
  j=$(python3 loadtest/peers/stampede.py "$addr" /data-action "$stampede_body" "$stampede_n") \
    || die "stampede against $name"
  sleep 0.3 # let a straggling upstream call land in the counters
  c1=$(counters)
  local calls=$(( $(route_calls "$c1") - $(route_calls "$c0") ))
  local other=$(( $(total_calls "$c1") - $(total_calls "$c0") - calls ))
  local errs; errs=$(jq '.errors' <<<"$j")
  if [ "$errs" -ne 0 ]; then count_errors "$name" "$errs"; log "$name stampede errors: $(jq -c '.error_kinds' <<<"$j")"; fi
  case "$name" in cx*) [ "$calls" -eq 1 ] || { failures=$((failures + 1)); log "$name stampede: $calls upstream calls, not exactly 1"; } ;; esac
  stampede_rows+=("| $label | $stampede_n | $(jq .ok <<<"$j") | $errs | $calls | $other | $(jq .p50_ms <<<"$j") | $(jq .p99_ms <<<"$j") | $(jq .max_ms <<<"$j") |")
  log "$name stampede: $calls upstream calls (+$other other), $errs errors, p99 $(jq .p99_ms <<<"$j") ms"
}

hits cx "cxcache HTTP door (default config, L1 on)" "$cx_addr" "$cx_pid" "$cluster_pids"
hits cxr "cxcache HTTP door, L1 off (hits from the cluster)" "$cxr_addr" "$cxr_pid" "$cluster_pids"
hits nginx "nginx proxy_cache" "$ng_addr" "$nginx_pid" ""
# nginx's best case, beside: the same cache on a plain GET (no body, no mirror).
hits nginx-get "nginx proxy_cache, plain \`GET /q/{id}\` (no body to read: its best case, not the same request)" \
  "$ng_addr" "$nginx_pid" "" "/q/$hit_id"
for k in $fa_kinds; do
  hits "fastapi-$k" "${fa_label[$k]} (2 uvicorn workers)" "${fa_addr_of[$k]}" "${fa_pid_of[$k]}" "${fa_rpids_of[$k]}"
done

curl -fsS -X POST "$emu/admin/faults" -H 'content-type: application/json' \
  -d "{\"path_prefix\":\"/api/v2/routing/queues/$stampede_id\",\"latency_ms\":$stampede_latency}" >/dev/null \
  || die "could not slow the stampede path"
stampede cx "cxcache HTTP door (default config, L1 on)" "$cx_addr"
stampede cxr "cxcache HTTP door, L1 off" "$cxr_addr"
stampede nginx "nginx proxy_cache (proxy_cache_lock on)" "$ng_addr"
for k in $fa_kinds; do
  stampede "fastapi-$k" "${fa_label[$k]}" "${fa_addr_of[$k]}"
done
curl -fsS -X DELETE "$emu/admin/faults" >/dev/null || true

# --- report -----------------------------------------------------------------
stamp=$(date -u +%Y-%m-%d)
out="loadtest/results/$stamp-peers-$mode.md"
mkdir -p loadtest/results
ver() { "$@" 2>&1 | head -n1 | tr -d '\r' || true; }
pyver=$("$venv/bin/python" -c 'import fastapi, uvicorn, redis, httpx, sys; print(f"Python {sys.version.split()[0]}, FastAPI {fastapi.__version__}, uvicorn {uvicorn.__version__} (uvloop, httptools), redis-py {redis.__version__}, httpx {httpx.__version__}")')
{
  echo "# Peers: cxcache's HTTP door, nginx proxy_cache, FastAPI cache-aside — $mode, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "- commit \`$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\`$(git diff --quiet HEAD -- . ':!loadtest/results' 2>/dev/null || echo ' (+ local changes)'); $build_note;" \
    "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | xargs || echo unknown)), shared by wrk, the servers, Redis and the emulator"
  echo "- request, the same for every peer: \`POST /data-action $hit_body\` → \`GET /api/v2/routing/queues/$hit_id\` upstream (the emulator, rate limit lifted; cxcache's per-token budget lifted to match)"
  echo "- load: $(ver wrk -v | sed -E 's/ \[.*//') \`-t$threads -c$conns -d${duration}s\` after a ${warmup} s warm-up, keep-alive, the same Lua script (\`loadtest/peers/post.lua\`) for every peer; latencies in ms"
  echo "- server CPU µs/req: user+system CPU of the server's whole process tree over the run (\`/proc/<pid>/stat\` of the server's pid and all its descendants, counted in the table: cxcache's one process; nginx's master, 2 workers, cache manager and cache loader; uvicorn's master, 2 workers and multiprocessing's helper) ÷ requests answered. Redis CPU µs/req: the Redis processes that peer uses (cxcache and FastAPI on the cluster: its 6 nodes; FastAPI standalone: that redis-server), counted apart"
  echo "- cxcache: default configuration and log level (\`RUST_LOG\` unset), \`--redis-url\` the 3+3 cluster; the L1-off instance sets \`CXCACHE_CACHE__L1__ENABLED=false\`, so each hit is one Redis read"
  echo "- nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') (Debian): \`loadtest/peers/nginx.conf.template\` — 2 workers, \`proxy_cache\` on disk with \`proxy_cache_lock on\` (lock timeout 5 s), \`proxy_ignore_headers Cache-Control Expires\`, \`proxy_cache_valid 200 300s\`, upstream keep-alive, one bearer token from the emulator's \`/oauth/token\` templated in at startup, access log off; the queue id is read from the body by regex (\`mirror_request_body\` reads the body first); it answers the platform's bytes as they came"
  echo "- FastAPI: \`loadtest/peers/app.py\` — $pyver; SHA-256 of the inputs with sorted keys, \`SETEX\` 300 s (a standalone redis-server through \`redis.asyncio.Redis\` with a blocking pool of 100 connections per worker, and/or the 3+3 cluster through \`redis.asyncio.RedisCluster\`), httpx.AsyncClient upstream with one client-credentials token per worker, pydantic input model, \`--workers 2\`, access log off"
  echo "- stampede: $stampede_n connections opened first, then the same request written on all at once (\`loadtest/peers/stampede.py\`) for a queue no peer has cached (\`$stampede_id\`), the emulator answering that path in ${stampede_latency} ms; upstream calls = the emulator's count of \`GET /api/v2/routing/queues/{id}\` during it (other = any other upstream call, e.g. tokens)"
  echo
  echo "## Warm hits"
  echo
  echo "| peer | answered by | req/s | server CPU µs/req | Redis CPU µs/req | p50 | p99 | bytes/resp | server processes | errors | upstream calls |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  printf '%s\n' "${rows[@]}"
  echo
  verdict() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f× (%s)", b / a, (a < b ? "cxcache ahead" : "cxcache behind"); else print "n/a" }'; }
  echo "Server CPU per hit, peer ÷ cxcache door (default config): nginx $(verdict "${cpu_of[cx]}" "${cpu_of[nginx]}"), nginx plain GET $(verdict "${cpu_of[cx]}" "${cpu_of[nginx-get]}")$(for k in $fa_kinds; do printf ', FastAPI %s %s' "$k" "$(verdict "${cpu_of[cx]}" "${cpu_of[fastapi-$k]}")"; done)."
  echo
  echo "## Cold stampede ($stampede_n identical requests, empty cache)"
  echo
  echo "| peer | requests | 200 OK | errors | upstream calls | other upstream calls | p50 | p99 | max |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  printf '%s\n' "${stampede_rows[@]}"
  if [ ${#peer_errors[@]} -gt 0 ]; then
    echo
    echo "Peers that answered errors (their rows are not comparable): ${peer_errors[*]}."
  fi
} >"$out"
cat "$out"
echo
log "wrote $out"

[ "$failures" -eq 0 ] || die "$failures failures (errors above)"
