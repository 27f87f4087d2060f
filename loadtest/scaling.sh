#!/usr/bin/env bash
# How cost grows with the work (issue 16, item 4), in one run:
#   1. Redis memory, Redis keys and L1 bytes per cached entry, for values of
#      1 KB, 10 KB and 100 KB (routing.queue entries, padded in the emulator);
#   2. time, Redis CPU and server CPU of a tag purge of 1 000, 10 000 and
#      100 000 keys (routing.queues entries, all tagged `queues`);
#   3. server CPU (and Redis CPU) per hit with 1, 2 and 3 cxcache instances
#      on the 3+3 cluster (L1 off: every hit is one Redis read), each
#      instance at the same fixed rate (k instances: k times the work; CPU
#      per hit at saturation or at a rate split k ways would measure the
#      contention of 2 cores or the batching of a lighter load instead);
#   4. Watch fan-out: events/s per core of server CPU with 10, 100 and 1 000
#      subscribers, purges sent at a fixed rate through another instance.
# Each row states whether it grows linearly, from the ratio the run measured.
#
#   loadtest/scaling.sh --short   # CI smoke run: debug build, small sizes, < 1 min of work
#   loadtest/scaling.sh --full    # release build, the sizes above, a few minutes
#
# Starts (all on 127.0.0.1, stopped on exit): the Genesys emulator (rate
# limit lifted, SCALING_QUEUES queues), a 3+3 Redis Cluster
# (scripts/redis-cluster.sh, ports in 23000-23999), and four cxcache
# instances of one fleet (one namespace, so purges and Watch events cross
# them over the bus): `mem` (L1 on, its TTL raised so the L1 bytes can be
# read after the fill) and `h1`..`h3` (L1 off). Server CPU is read from
# /proc/<pid>/stat, Redis CPU from its six nodes' /proc/<pid>/stat.
#
# Writes loadtest/results/DATE-scaling.md (full) or DATE-scaling-short.md.
# Exit status: 0 = ran with no errors (growth is reported, never enforced:
# the machine is shared); 1 = broken (a process did not start, a call
# failed, a purge removed other than what was filled, Watch events lost);
# 3 = an entry cost more than 2 Redis keys (the layout's promise).
#
# Environment: SCALING_PROFILE (debug|release), SCALING_QUEUES (entries per
# value size), SCALING_PURGES (e.g. "1000 10000"), SCALING_SUBS
# (e.g. "10 100"), SCALING_HIT_SECS, SCALING_HIT_RATE (hits/s per instance), SCALING_WATCH_SECS, SCALING_WATCH_RATE,
# SCALING_KEEP=1 (keep the work directory), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export PATH="$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin:$PATH"

mode=short
for arg in "$@"; do
  case "$arg" in
    --short) mode=short ;;
    --full) mode=full ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "usage: loadtest/scaling.sh [--short|--full]" >&2; exit 2 ;;
  esac
done
if [ "$mode" = full ]; then
  profile=${SCALING_PROFILE:-release} queues=${SCALING_QUEUES:-400}
  purges=${SCALING_PURGES:-1000 10000 100000} subs_list=${SCALING_SUBS:-10 100 1000}
  hit_secs=${SCALING_HIT_SECS:-10} hit_rate=${SCALING_HIT_RATE:-1000} idle_secs=3 watch_secs=${SCALING_WATCH_SECS:-5} watch_rate=${SCALING_WATCH_RATE:-50}
else
  profile=${SCALING_PROFILE:-debug} queues=${SCALING_QUEUES:-50}
  purges=${SCALING_PURGES:-300 1500} subs_list=${SCALING_SUBS:-10 100}
  hit_secs=${SCALING_HIT_SECS:-2} hit_rate=${SCALING_HIT_RATE:-100} idle_secs=1 watch_secs=${SCALING_WATCH_SECS:-1.5} watch_rate=${SCALING_WATCH_RATE:-20}
fi
sizes="1024 10240 102400"

log() { printf 'scaling: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
. loadtest/lib.sh

# --- tools and binaries -----------------------------------------------------
bash scripts/install-deps.sh >/dev/null
log "building ($profile)"
build_release_or_debug "$profile" cxcache-server genesys-emulator cxcache-scaling

# --- processes --------------------------------------------------------------
work=$(mktemp -d -t cxcache-scaling-XXXX)
pids=()
redis_dir=""
cleanup() {
  local rc=$?
  set +e
  if [ "$rc" -ne 0 ]; then
    for f in "$work"/*.err; do [ -s "$f" ] && { log "last lines of ${f#"$work"/}:"; tail -n 10 "$f" >&2; }; done
  fi
  stop_all "${pids[@]}"
  [ -n "$redis_dir" ] && bash scripts/redis-cluster.sh stop "$redis_dir" >/dev/null 2>&1
  if [ -n "${SCALING_KEEP:-}" ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM


"$bin/genesys-emulator" --addr 127.0.0.1:0 --rate-limit 1000000000 --queues "$queues" >"$work/emulator.out" 2>"$work/emulator.err" &
pids+=($!)
emu=$(wait_line "$work/emulator.out" 'listening on' | sed -E 's/.*listening on (http:[^ ]+).*/\1/') \
  || die "the emulator did not start"

# A block of 6 free ports (and bus ports +10000) in 23000-23999.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
cluster_url=""
for try in 1 2 3; do
  first=""
  for _ in $(seq 1 50); do
    cand=$(( 23000 + (RANDOM % 160) * 6 ))
    ok=1
    for i in 0 1 2 3 4 5; do port_free $((cand + i)) && port_free $((cand + i + 10000)) || { ok=0; break; }; done
    [ $ok = 1 ] && { first=$cand; break; }
  done
  [ -n "$first" ] || continue
  redis_dir="$work/redis$try"
  cluster_url=$(bash scripts/redis-cluster.sh start "$redis_dir" "$first" 2>"$work/redis-start.err") && break
  bash scripts/redis-cluster.sh stop "$redis_dir" >/dev/null 2>&1 || true
  cluster_url=""
  log "the Redis cluster did not start (try $try)"
done
[ -n "$cluster_url" ] || die "the Redis cluster did not start"
redis_pids=$(cat "$redis_dir"/*/redis.pid | xargs)
redis_ports=$(for d in "$redis_dir"/2*/; do basename "$d"; done | xargs)
masters() { for p in $redis_ports; do redis-cli -p "$p" role 2>/dev/null | head -n1 | grep -q master && echo "$p"; done; }
rc() { redis-cli -c -p "$first" "$@"; }
# Summed over the masters (replicas hold copies).
used_memory() { local s=0 p; for p in $(masters); do s=$((s + $(redis-cli -p "$p" info memory | tr -d '\r' | awk -F: '$1 == "used_memory" { print $2 }'))); done; echo "$s"; }
dbsize() { local s=0 p; for p in $(masters); do s=$((s + $(redis-cli -p "$p" dbsize))); done; echo "$s"; }

env_name="scale$$"
# start_cxcache NAME [ENV=VALUE...]: sets $grpc_addr, $http_addr, $inst_pid.
start_cxcache() {
  local name=$1; shift
  env -u RUST_LOG CXCACHE_UPSTREAM__RATE_LIMIT__ALLOWED=1000000000 "$@" "$bin/cxcache" --env "$env_name" \
    --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --redis-url "$cluster_url" \
    --upstream-url "$emu" --client-id cxcache-demo --client-secret demo-secret \
    >"$work/$name.out" 2>"$work/$name.err" &
  inst_pid=$!
  pids+=($inst_pid)
  local line
  line=$(wait_line "$work/$name.out" '^cxcache listening') || die "cxcache $name did not start"
  grpc_addr=$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$line")
  http_addr=$(sed -E 's/.*http=([^ ]+).*/\1/' <<<"$line")
}
declare -A grpc_of http_of pid_of
start_cxcache mem CXCACHE_CACHE__L1__TTL=600s
grpc_of[mem]=$grpc_addr http_of[mem]=$http_addr pid_of[mem]=$inst_pid
for h in h1 h2 h3; do
  start_cxcache "$h" CXCACHE_CACHE__L1__ENABLED=false
  grpc_of[$h]=$grpc_addr http_of[$h]=$http_addr pid_of[$h]=$inst_pid
done
log "emulator $emu; cluster 127.0.0.1:$first..$((first + 5)); cxcache mem ${grpc_of[mem]}, h1 ${grpc_of[h1]}, h2 ${grpc_of[h2]}, h3 ${grpc_of[h3]} (env $env_name)"

# --- helpers ----------------------------------------------------------------
# CPU time in ns, summed over every thread of the processes
# (/proc/<pid>/task/<tid>/schedstat: /proc/<pid>/stat counts in 10 ms ticks,
# too coarse for a purge of 1 000 keys).
hz=1000000000
ticks() {
  local p
  for p in "$@"; do cat /proc/"$p"/task/*/schedstat 2>/dev/null; done | awk '{ s += $1 } END { printf "%.0f\n", s }'
}
ms_of_ticks() { awk -v t="$1" -v hz="$hz" 'BEGIN { printf "%.1f", t * 1000 / hz }'; }
now_ms() { date +%s%3N; }
# settle PID...: until the processes use under 10 % of a core over 300 ms
# (at most 15 s): what a previous step left running has finished.
settle() {
  local deadline=$((SECONDS + 15)) a b
  while [ $SECONDS -lt $deadline ]; do
    a=$(ticks "$@"); sleep 0.3; b=$(ticks "$@")
    [ $((b - a)) -lt $((hz * 3 / 100)) ] && return 0
  done
  local p busy=""
  for p in "$@"; do a=$(ticks "$p"); sleep 0.1; b=$(ticks "$p"); busy+=" $p:$(( (b - a) / 1000000 ))ms"; done
  log "still busy after 15 s (CPU per 100 ms:$busy): measuring anyway"
}
invalidate() { # ADDR JSON: one Invalidate, its answer on stdout
  grpcurl -plaintext -max-time 600 -d "$2" "$1" cxcache.v1.Cache/Invalidate
}
get() { grpcurl -plaintext -max-time 10 -d "$2" "$1" cxcache.v1.Cache/Get; }
metric() { curl -fsS "http://$1/metrics" | awk -v m="$2" '$1 == m { printf "%.0f\n", $2 }'; }
# ghz_n ADDR DATA_FILE N CONCURRENCY OUT: N calls of Get, erroring out on any failure.
ghz_n() {
  timeout 900 ghz --insecure --call cxcache.v1.Cache/Get -D "$2" -n "$3" -c "$4" --connections 4 -t 30s \
    -O json "$1" >"$5" 2>"$5.err" || { cat "$5.err" >&2; die "ghz against $1"; }
  local errs; errs=$(jq '.count - (.statusCodeDistribution.OK // 0)' "$5")
  [ "$errs" -eq 0 ] || { jq -c '.errorDistribution' "$5" >&2; die "$errs Gets failed against $1"; }
}
results="$work/results.jsonl"
: >"$results"
emit() { echo "$1" >>"$results"; }

token=$(curl -fsS -u cxcache-demo:demo-secret -d grant_type=client_credentials "$emu/oauth/token" | jq -r '.access_token') \
  || die "no token from the emulator"
ids="$work/queue-ids"
page=1
: >"$ids"
while :; do
  got=$(curl -fsS -H "Authorization: Bearer $token" "$emu/api/v2/routing/queues?pageSize=500&pageNumber=$page" | jq -r '.entities[].id')
  [ -n "$got" ] || break
  echo "$got" >>"$ids"
  page=$((page + 1))
done
[ "$(wc -l <"$ids")" -eq "$queues" ] || die "the emulator listed $(wc -l <"$ids") queues, not $queues"
sample=$(head -n1 "$ids")
jq -R -s -c '[split("\n")[] | select(length > 0) | {kind: "routing.queue", id: .}]' "$ids" >"$work/queues.json"

# --- 1. memory per entry ------------------------------------------------------
# The value cxcache stores for an unpadded queue, less its description: the
# padding that brings it to each size.
plain=$(get "${grpc_of[mem]}" "{\"kind\":\"routing.queue\",\"id\":\"$sample\"}" | jq -r '.value' | base64 -d) \
  || die "Get of queue $sample"
base=$(( $(printf '%s' "$plain" | wc -c) - $(jq -r '.description // "" | length' <<<"$plain") ))
urls=()
while read -r id; do urls+=("$emu/admin/queues/$id?silent=true"); done <"$ids"
tag_batches=()
batch=()
while read -r id; do
  batch+=("\"queue:$id\"")
  if [ ${#batch[@]} -eq 100 ]; then tag_batches+=("$(IFS=,; echo "${batch[*]}")"); batch=(); fi
done <"$ids"
[ ${#batch[@]} -gt 0 ] && tag_batches+=("$(IFS=,; echo "${batch[*]}")")
# Redis memory less what does not belong to the data, summed over the
# masters (MEMORY STATS): client buffers (the fill's large writes leave
# query buffers that shrink lazily), the replication backlog and replica
# buffers (they fill up to repl-backlog-size with the write stream), cluster
# links, the scripts' caches, the startup allocation.
data_memory() {
  local s=0 p
  for p in $(masters); do
    s=$((s + $(redis-cli -p "$p" memory stats | tr -d '\r' | awk '
      prev == "total.allocated" { t = $1 }
      prev ~ /^(startup\.allocated|replication\.backlog|clients\.slaves|clients\.normal|cluster\.links|aof\.buffer|lua\.caches|functions\.caches)$/ { o += $1 }
      { prev = $1 }
      END { print t - o }')))
  done
  echo "$s"
}
scan_count() { local s=0 p; for p in $(masters); do s=$((s + $(redis-cli -p "$p" --scan --pattern "$1" | wc -l))); done; echo "$s"; }
mu() { local v; v=$(rc memory usage "$1" samples 0); echo "${v:-0}"; }
samples=$(head -n 10 "$ids")
# A warm-up round first (1 KB, not reported): the first fill of a fresh
# cluster also builds what the later ones reuse (the bus, the fleet's and
# the notification listener's keys, the dictionaries' first growth).
for round in warm-up $sizes; do
  size=$round; [ "$round" = warm-up ] && size=1024
  pad=$((size - base)); [ "$pad" -gt 0 ] || pad=1
  python3 -c 'import json,sys; print(json.dumps({"description": "x" * int(sys.argv[1])}))' "$pad" >"$work/patch.json"
  curl -fsS -X PATCH -H 'content-type: application/json' --data-binary @"$work/patch.json" "${urls[@]}" >/dev/null \
    || die "could not pad the queues to $size B"
  # The previous size's entries go first (a prefix purge and the queues'
  # tags, so no bookkeeping is left either), then the baseline.
  invalidate "${grpc_of[mem]}" "{\"prefixes\":[\"$env_name:routing.queue:\"],\"reason\":\"scaling\"}" >/dev/null \
    || die "prefix purge before the $size B fill"
  for b in "${tag_batches[@]}"; do
    invalidate "${grpc_of[mem]}" "{\"tags\":[$b],\"reason\":\"scaling\"}" >/dev/null || die "tag purge before the $size B fill"
  done
  sleep 1
  m0=$(data_memory) k0=$(dbsize) l0=$(metric "${http_of[mem]}" cxcache_l1_bytes)
  ghz_n "${grpc_of[mem]}" "$work/queues.json" "$queues" 10 "$work/fill-$round.json"
  # A second pass: every key is now a hit (L1 filled by the fetch or by this read).
  ghz_n "${grpc_of[mem]}" "$work/queues.json" "$queues" 10 "$work/fill-$round-2.json"
  [ "$round" = warm-up ] && continue
  sleep 1
  m1=$(data_memory) k1=$(dbsize) l1=$(metric "${http_of[mem]}" cxcache_l1_bytes)
  value_len=$(get "${grpc_of[mem]}" "{\"kind\":\"routing.queue\",\"id\":\"$sample\"}" | jq -r '.value' | base64 -d | wc -c)
  entries=$(scan_count "cx:{$env_name:routing.queue:*")
  own_bookkeeping=$(scan_count "cx:*{$env_name:queue:*")
  [ "$entries" -eq "$queues" ] || die "$entries entries in Redis after filling $queues"
  kind_key="cx:idx:{$env_name:routing.queue}"
  i_mem=$(mu "$kind_key") i_card=$(rc zcard "$kind_key")
  [ "$i_card" -eq "$queues" ] || die "the kind index holds $i_card members after filling $queues"
  # MEMORY USAGE of 10 sample entities: the entry and whatever else of theirs exists.
  e_mem=0 t_mem=0 e_strlen=0
  for id in $samples; do
    e_mem=$((e_mem + $(mu "cx:{$env_name:routing.queue:$id}:full")))
    e_strlen=$((e_strlen + $(rc strlen "cx:{$env_name:routing.queue:$id}:full")))
    t_mem=$((t_mem + $(mu "cx:tag:{$env_name:queue:$id}")))
  done
  ns=$(wc -w <<<"$samples")
  sample_keys=$(for p in $(masters); do redis-cli -p "$p" --scan --pattern "*$sample*"; done | sort | xargs)
  emit "$(jq -nc --argjson size "$size" --argjson n "$queues" --argjson value "$value_len" \
    --argjson dm $((m1 - m0)) --argjson dk $((k1 - k0)) --argjson dl $((l1 - l0)) \
    --argjson entries "$entries" --argjson own "$own_bookkeeping" \
    --argjson strlen $((e_strlen / ns)) --argjson emem $((e_mem / ns)) --argjson tmem $((t_mem / ns)) \
    --argjson imem "$i_mem" --argjson icard "$i_card" --arg keys "$sample_keys" \
    '{row: "memory", size: $size, n: $n, value: $value, used_memory_delta: $dm, dbsize_delta: $dk,
      keys_delta: ($entries + $own), l1_delta: $dl, entry_strlen: $strlen, entry_mem: $emem, tag_mem: $tmem,
      kind_mem: $imem, kind_card: $icard, sample_keys: $keys}')"
  log "memory $size B: value $value_len B, +$(( (m1 - m0) / queues )) B per entry in Redis, $(( entries + own_bookkeeping )) keys for $queues entries (DBSIZE +$((k1 - k0))), L1 +$(( (l1 - l0) / queues )) B; sample's keys: $sample_keys"
done

# --- 3. CPU per hit with 1, 2, 3 instances ------------------------------------
jq -c '[.[:50][] | . + {variant: "summary"}]' "$work/queues.json" >"$work/hits.json"
ghz_n "${grpc_of[h1]}" "$work/hits.json" "$(jq length "$work/hits.json")" 10 "$work/hits-warm.json"
src=$(get "${grpc_of[h1]}" "$(jq -c '.[0]' "$work/hits.json")" | jq -r '.source')
[ "$src" = SOURCE_STORE ] || die "a warm hit on h1 answered from $src, not SOURCE_STORE"
for k in 1 2 3; do
  insts=(); for i in $(seq 1 "$k"); do insts+=("h$i"); done
  c=16 rate=$hit_rate
  spids=(); for h in "${insts[@]}"; do spids+=("${pid_of[$h]}"); done
  gpids=()
  # Idle first: what the k instances and Redis spend with no load (fleet
  # renewals, the bus), subtracted per second from the loaded window.
  i0=$(ticks "${spids[@]}") j0=$(ticks $redis_pids) it0=$(now_ms)
  sleep "$idle_secs"
  i1=$(ticks "${spids[@]}") j1=$(ticks $redis_pids) it1=$(now_ms)
  s0=$(ticks "${spids[@]}") r0=$(ticks $redis_pids) st0=$(now_ms)
  for h in "${insts[@]}"; do
    timeout $((hit_secs + 60)) ghz --insecure --call cxcache.v1.Cache/Get -D "$work/hits.json" -z "${hit_secs}s" \
      --duration-stop wait -c "$c" --rps "$rate" --connections 4 -t 10s -O json "${grpc_of[$h]}" >"$work/hit-$k-$h.json" 2>"$work/hit-$k-$h.err" &
    gpids+=($!)
  done
  for g in "${gpids[@]}"; do wait "$g" || die "ghz (hits, $k instances)"; done
  s1=$(ticks "${spids[@]}") r1=$(ticks $redis_pids) st1=$(now_ms)
  count=0 errs=0 rps=0
  for h in "${insts[@]}"; do
    count=$((count + $(jq '.count' "$work/hit-$k-$h.json")))
    errs=$((errs + $(jq '.count - (.statusCodeDistribution.OK // 0)' "$work/hit-$k-$h.json")))
    rps=$((rps + $(jq '.rps | floor' "$work/hit-$k-$h.json")))
  done
  [ "$errs" -eq 0 ] || die "$errs hits failed with $k instances"
  emit "$(jq -nc --argjson k "$k" --argjson c "$c" --argjson count "$count" --argjson rps "$rps" --argjson rate "$hit_rate" \
    --argjson s $((s1 - s0)) --argjson r $((r1 - r0)) --argjson hz "$hz" \
    --argjson is $((i1 - i0)) --argjson ir $((j1 - j0)) --argjson iw $((it1 - it0)) --argjson sw $((st1 - st0)) \
    '{row: "hits", instances: $k, concurrency: $c, count: $count, rps: $rps, rate: $rate,
      server_us: ($s * 1e6 / $hz / $count), redis_us: ($r * 1e6 / $hz / $count),
      idle_server_cores: ($is / $hz / ($iw / 1000)), idle_redis_cores: ($ir / $hz / ($iw / 1000)),
      net_server_us: ([($s / $hz - $is / $hz * $sw / $iw), 0] | max * 1e6 / $count),
      net_redis_us: ([($r / $hz - $ir / $hz * $sw / $iw), 0] | max * 1e6 / $count)}')"
  log "hits on $k instance(s): $rps req/s, server CPU $(tail -n1 "$results" | jq '.server_us * 10 | round / 10') µs/hit ($(tail -n1 "$results" | jq '.net_server_us * 10 | round / 10') net of idle), Redis $(tail -n1 "$results" | jq '.redis_us * 10 | round / 10') µs/hit"
done

# --- 4. Watch fan-out ----------------------------------------------------------
for subs in $subs_list; do
  conns=$(( (subs + 99) / 100 ))
  out=$("$bin/cxcache-scaling" watch --addr "${grpc_of[h1]}" --pid "${pid_of[h1]}" --drive "${grpc_of[h2]}" \
    --env "$env_name" --subs "$subs" --conns "$conns" --secs "$watch_secs" --rate "$watch_rate" 2>"$work/watch-$subs.err") \
    || { cat "$work/watch-$subs.err" >&2; [ -n "$out" ] && log "$out"; die "Watch fan-out with $subs subscribers"; }
  emit "$(jq -c '. + {row: "watch"}' <<<"$out")"
  log "Watch, $subs subscribers: $(jq -r '"\(.events_per_s | floor) events/s, \(.events_per_s_per_core | floor) events/s per core, \(.received)/\(.expected) received"' <<<"$out")"
done

# --- 2. tag purges (run last: 100 000 deletions leave Redis busy a while) ---
tag_key="cx:tag:{$env_name:queues}"
for n in $purges; do
  # n entries of routing.queues, each its own name filter, all tagged `queues`.
  jq -nc --arg p "tp$n" '{kind: "routing.queues", params: {name: ($p + "-{{.RequestNumber}}")}}' >"$work/tp.json"
  t0=$(now_ms)
  ghz_n "${grpc_of[h1]}" "$work/tp.json" "$n" 32 "$work/tp-$n.json"
  fill_ms=$(( $(now_ms) - t0 ))
  card=$(rc zcard "$tag_key")
  [ "$card" -eq "$n" ] || die "tag index holds $card members after filling $n"
  k_before=$(dbsize) m_before=$(used_memory)
  # The idle rate just before (once the fill's trailing work settled: the
  # stores' UPDATED events, Redis's rehashing), and 1 s after the answer
  # counted in (replicas applying the deletes, lazy frees, the last acks):
  # CPU = the window's less the idle rate over it.
  settle $redis_pids "${pid_of[h1]}" "${pid_of[mem]}" "${pid_of[h2]}" "${pid_of[h3]}"
  ir0=$(ticks $redis_pids) is0=$(ticks "${pid_of[h1]}") if0=$(ticks "${pid_of[mem]}" "${pid_of[h2]}" "${pid_of[h3]}") iw0=$(now_ms)
  sleep 1
  ir1=$(ticks $redis_pids) is1=$(ticks "${pid_of[h1]}") if1=$(ticks "${pid_of[mem]}" "${pid_of[h2]}" "${pid_of[h3]}") iw1=$(now_ms)
  r0=$(ticks $redis_pids) s0=$(ticks "${pid_of[h1]}") f0=$(ticks "${pid_of[mem]}" "${pid_of[h2]}" "${pid_of[h3]}")
  t0=$(now_ms)
  answer=$(invalidate "${grpc_of[h1]}" '{"tags":["queues"],"reason":"scaling"}') || die "tag purge of $n keys: $answer"
  took=$(( $(now_ms) - t0 ))
  sleep 1
  r1=$(ticks $redis_pids) s1=$(ticks "${pid_of[h1]}") f1=$(ticks "${pid_of[mem]}" "${pid_of[h2]}" "${pid_of[h3]}") t1=$(now_ms)
  net() { awk -v busy="$1" -v idle="$2" -v w="$3" -v iw="$4" 'BEGIN { v = busy - idle * w / iw; if (v < 0) v = 0; printf "%.0f", v }'; }
  r_net=$(net $((r1 - r0)) $((ir1 - ir0)) $((t1 - t0)) $((iw1 - iw0)))
  s_net=$(net $((s1 - s0)) $((is1 - is0)) $((t1 - t0)) $((iw1 - iw0)))
  f_net=$(net $((f1 - f0)) $((if1 - if0)) $((t1 - t0)) $((iw1 - iw0)))
  purged=$(jq -r '.purged // 0' <<<"$answer")
  [ "$purged" -eq "$n" ] || die "the tag purge removed $purged of $n entries"
  left=$(rc exists "$tag_key")
  k_after=$(dbsize)
  emit "$(jq -nc --argjson n "$n" --argjson purged "$purged" --argjson ms "$took" --argjson fill "$fill_ms" \
    --argjson redis "$(ms_of_ticks "$r_net")" --argjson server "$(ms_of_ticks "$s_net")" \
    --argjson fleet "$(ms_of_ticks "$f_net")" --argjson left "$left" --argjson dk $((k_before - k_after)) \
    --argjson redis_gross "$(ms_of_ticks $((r1 - r0)))" --argjson server_gross "$(ms_of_ticks $((s1 - s0)))" \
    --argjson mem "$m_before" \
    '{row: "purge", n: $n, purged: $purged, ms: $ms, fill_ms: $fill, redis_cpu_ms: $redis, server_cpu_ms: $server,
      fleet_cpu_ms: $fleet, index_left: $left, keys_removed: $dk, used_memory_before: $mem,
      redis_cpu_gross_ms: $redis_gross, server_cpu_gross_ms: $server_gross}')"
  log "tag purge of $n keys: $took ms, Redis CPU $(ms_of_ticks "$r_net") ms, server CPU $(ms_of_ticks "$s_net") ms net of idle (filled in $fill_ms ms)"
done

# --- report -------------------------------------------------------------------
if [ "$mode" = full ]; then out="loadtest/results/$(date -u +%Y-%m-%d)-scaling.md"
else out="loadtest/results/$(date -u +%Y-%m-%d)-scaling-short.md"; fi
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- . ':!loadtest/results' 2>/dev/null || echo ' (+ local changes)')"
python3 loadtest/scaling/report.py "$results" \
  --mode "$mode" --commit "$commit" --profile "$profile" --bin "$bin/cxcache" \
  --cpus "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | xargs || echo unknown))" \
  --redis "$(redis-server --version | awk '{ print $3 }' | sed 's/v=//')" --ghz "$(ghz --version 2>&1 || echo '?')" \
  --queues "$queues" --hit-secs "$hit_secs" --watch-secs "$watch_secs" --watch-rate "$watch_rate" >"$out"
cat "$out"
echo
log "wrote $out"
if grep -q '^KEYS-OVER-BUDGET' "$out"; then log "an entry costs more than 2 Redis keys"; exit 3; fi
