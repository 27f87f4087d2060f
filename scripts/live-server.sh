#!/usr/bin/env bash
# Start/stop a local genesys-emulator + cxcache pair for client and end-to-end tests.
#
#   scripts/live-server.sh start    start both on free loopback ports (binaries must be built:
#                                   cargo build -p cxcache-server -p genesys-emulator)
#   scripts/live-server.sh stop     SIGTERM both and wait for them to exit
#   scripts/live-server.sh status   show what is running
#
# start writes target/live/env (source it):
#   CXCACHE_ADDR=127.0.0.1:PORT            gRPC address
#   CXCACHE_HTTP_ADDR=127.0.0.1:PORT       side HTTP port
#   CXCACHE_EMULATOR_URL=http://127.0.0.1:PORT
# plus target/live/{emulator,cxcache}.pid and .log.
# With CXCACHE_SECURE=1 (or `start --secure`) it also starts, on the same emulator, two
# instances that authenticate callers (certificates and keys generated with openssl
# into target/live/tls, config in target/live/secure.toml), and adds to the env file:
#   CXCACHE_TLS_ADDR=127.0.0.1:PORT        TLS gRPC; callers by bearer API key
#   CXCACHE_MTLS_ADDR=127.0.0.1:PORT       TLS gRPC requiring a client certificate
#   CXCACHE_TLS_CA=…/ca.pem                 CA that signed the server and client certificates
#   CXCACHE_TLS_CLIENT_CERT=…/client.pem, CXCACHE_TLS_CLIENT_KEY=…/client.key
#                                           (SAN "clients.test": caller "mtls", every scope)
#   CXCACHE_API_KEY=…                       caller "full": every scope
#   CXCACHE_ROUTING_KEY=…                   caller "routing": may Get/Watch routing.* only,
#                                           purge dev:routing. only, no data actions
# Env: CXCACHE_BIN_DIR (default target/debug), LIVE_SERVER_WAIT_SECS (default 30),
#      LIVE_DIR (default target/live), CXCACHE_EXTRA_ARGS (extra cxcache flags).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${CXCACHE_BIN_DIR:-$ROOT/target/debug}"
LIVE="${LIVE_DIR:-$ROOT/target/live}"
WAIT_SECS="${LIVE_SERVER_WAIT_SECS:-30}"
EMU_BIN="$BIN_DIR/genesys-emulator"
CX_BIN="$BIN_DIR/cxcache"

log() { echo "live-server: $*" >&2; }

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_for_line LOGFILE REGEX PID -> prints the first matching line
wait_for_line() {
  local file="$1" re="$2" pid="$3" deadline=$((SECONDS + WAIT_SECS)) line
  while ((SECONDS < deadline)); do
    if line="$(grep -m1 -E "$re" "$file" 2>/dev/null)"; then
      printf '%s\n' "$line"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log "process $pid exited before printing its listening line; log ${file#$ROOT/}:"
      tail -n 40 "$file" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  log "timed out after ${WAIT_SECS}s waiting for '$re' in ${file#$ROOT/}:"
  tail -n 40 "$file" >&2 || true
  return 1
}

stop_one() {
  local name="$1" pidfile="$LIVE/$1.pid" pid i
  [[ -f "$pidfile" ]] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name ($pid) ignored SIGTERM for 10s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name ($pid)"
  fi
  rm -f "$pidfile"
}

cmd_stop() {
  stop_one cxcache
  stop_one cxcache-tls
  stop_one cxcache-mtls
  stop_one emulator
  rm -f "$LIVE/env"
}

cmd_start() {
  local missing=0
  for b in "$EMU_BIN" "$CX_BIN"; do
    if [[ ! -x "$b" ]]; then
      log "missing binary: ${b#$ROOT/}"
      missing=1
    fi
  done
  if ((missing)); then
    log "build them first: cargo build -p cxcache-server -p genesys-emulator"
    exit 2
  fi
  mkdir -p "$LIVE"
  if alive "$LIVE/emulator.pid" && alive "$LIVE/cxcache.pid" && [[ -f "$LIVE/env" ]]; then
    log "already running:"
    cat "$LIVE/env" >&2
    return 0
  fi
  cmd_stop # clear any half-started pair

  : >"$LIVE/emulator.log"
  setsid "$EMU_BIN" --addr 127.0.0.1:0 >"$LIVE/emulator.log" 2>&1 </dev/null &
  echo $! >"$LIVE/emulator.pid"
  local line emu_url
  if ! line="$(wait_for_line "$LIVE/emulator.log" '^genesys-emulator listening on http://' "$(cat "$LIVE/emulator.pid")")"; then
    cmd_stop
    exit 1
  fi
  emu_url="${line#genesys-emulator listening on }"
  emu_url="${emu_url%%[[:space:]]*}"

  : >"$LIVE/cxcache.log"
  # shellcheck disable=SC2086
  setsid "$CX_BIN" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --upstream-url "$emu_url" \
    --client-id cxcache-demo --client-secret demo-secret ${CXCACHE_EXTRA_ARGS:-} \
    >"$LIVE/cxcache.log" 2>&1 </dev/null &
  echo $! >"$LIVE/cxcache.pid"
  if ! line="$(wait_for_line "$LIVE/cxcache.log" '^cxcache listening grpc=' "$(cat "$LIVE/cxcache.pid")")"; then
    cmd_stop
    exit 1
  fi
  local grpc http
  grpc="$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$line")"
  http="$(sed -E 's/.*http=([^ ]+).*/\1/' <<<"$line")"
  cat >"$LIVE/env" <<ENV
CXCACHE_ADDR=$grpc
CXCACHE_HTTP_ADDR=$http
CXCACHE_EMULATOR_URL=$emu_url
ENV
  if [[ "${CXCACHE_SECURE:-0}" == 1 ]]; then
    start_secure "$emu_url" || {
      cmd_stop
      exit 1
    }
  fi
  log "emulator $emu_url (pid $(cat "$LIVE/emulator.pid")), cxcache grpc=$grpc http=$http (pid $(cat "$LIVE/cxcache.pid"))"
  log "env: ${LIVE#$ROOT/}/env"
}

# Certificates for loopback: a CA, a server certificate for 127.0.0.1/localhost, and a
# client certificate whose SAN names the "mtls" caller.
make_certs() {
  local d="$1"
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=cxcache live test CA" -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  local name san
  for name in server client; do
    if [[ $name == server ]]; then san="DNS:localhost,IP:127.0.0.1"; else san="DNS:clients.test"; fi
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
      -keyout "$d/$name.key" -out "$d/$name.csr" 2>/dev/null
    printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\n' "$san" >"$d/$name.ext"
    openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
      -days 2 -extfile "$d/$name.ext" -out "$d/$name.pem" 2>/dev/null
  done
}

# start_one NAME CONFIG EMULATOR_URL -> prints the gRPC address
start_one() {
  local name="$1" config="$2" emu_url="$3" line
  : >"$LIVE/$name.log"
  setsid "$CX_BIN" --config "$config" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
    --upstream-url "$emu_url" --client-id cxcache-demo --client-secret demo-secret \
    >"$LIVE/$name.log" 2>&1 </dev/null &
  echo $! >"$LIVE/$name.pid"
  line="$(wait_for_line "$LIVE/$name.log" '^cxcache listening grpc=' "$(cat "$LIVE/$name.pid")")" || return 1
  sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$line"
}

start_secure() {
  local emu_url="$1" tls="$LIVE/tls" full routing tls_addr mtls_addr
  make_certs "$tls"
  full="full-$(openssl rand -hex 16)"
  routing="routing-$(openssl rand -hex 16)"
  sha() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
  cat >"$LIVE/secure.toml" <<TOML
[tls]
cert = "$tls/server.pem"
key = "$tls/server.key"

[[auth.callers]]
name = "full"
api_keys = ["sha256:$(sha "$full")"]
[auth.callers.scopes]
get = ["*"]
force_refresh = true
max_age = true
invalidate_prefixes = [""]
invalidate_tags = ["*"]
watch = ["*"]
data_actions = ["*"]

[[auth.callers]]
name = "routing"
api_keys = ["sha256:$(sha "$routing")"]
[auth.callers.scopes]
get = ["routing.*"]
invalidate_prefixes = ["dev:routing."]
invalidate_tags = ["queue:*"]
watch = ["routing.*"]
TOML
  # The mutual-TLS instance: the same callers, plus one named by its certificate.
  sed "s|^key = .*|&\nclient_ca = \"$tls/ca.pem\"|" "$LIVE/secure.toml" >"$LIVE/mtls.toml"
  cat >>"$LIVE/mtls.toml" <<TOML

[[auth.callers]]
name = "mtls"
tls_san = ["clients.test"]
[auth.callers.scopes]
get = ["*"]
force_refresh = true
max_age = true
invalidate_prefixes = [""]
invalidate_tags = ["*"]
watch = ["*"]
TOML
  tls_addr="$(start_one cxcache-tls "$LIVE/secure.toml" "$emu_url")" || return 1
  mtls_addr="$(start_one cxcache-mtls "$LIVE/mtls.toml" "$emu_url")" || return 1
  cat >>"$LIVE/env" <<ENV
CXCACHE_TLS_ADDR=$tls_addr
CXCACHE_MTLS_ADDR=$mtls_addr
CXCACHE_TLS_CA=$tls/ca.pem
CXCACHE_TLS_CLIENT_CERT=$tls/client.pem
CXCACHE_TLS_CLIENT_KEY=$tls/client.key
CXCACHE_API_KEY=$full
CXCACHE_ROUTING_KEY=$routing
ENV
  log "secure instances: tls=$tls_addr mtls=$mtls_addr"
}

cmd_status() {
  local rc=0
  for n in emulator cxcache; do
    if alive "$LIVE/$n.pid"; then echo "$n: running (pid $(cat "$LIVE/$n.pid"))"; else echo "$n: stopped"; rc=1; fi
  done
  [[ -f "$LIVE/env" ]] && cat "$LIVE/env"
  return $rc
}

case "${1:-}" in
  start)
    [[ "${2:-}" == --secure ]] && export CXCACHE_SECURE=1
    cmd_start
    ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 64
    ;;
esac
