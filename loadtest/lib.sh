# Helpers shared by the load-test scripts (sourced, not run). A script sets
# `set -euo pipefail`, cds to the repository root and defines `log MSG`
# before sourcing this file.

# wait_line FILE REGEX [SECONDS]: prints the first line of FILE matching
# REGEX, waiting for it at most SECONDS (default 15); else logs the file's
# last lines and fails.
wait_line() {
  local tries=$(( ${3:-15} * 20 ))
  for _ in $(seq 1 "$tries"); do
    if grep -m1 -E "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  log "no line matching '$2' in $1:"; tail -n 20 "$1" >&2 || true
  return 1
}

# build_release_or_debug PROFILE PACKAGE...: cargo builds the packages in
# PROFILE (release or debug) and sets $bin to where the binaries are.
build_release_or_debug() {
  local profile=$1; shift
  local packages=() p
  for p in "$@"; do packages+=(-p "$p"); done
  if [ "$profile" = release ]; then
    cargo build --release --quiet "${packages[@]}"
  else
    cargo build --quiet "${packages[@]}"
  fi
  bin="${CARGO_TARGET_DIR:-$(pwd)/target}/$profile"
}

# cpu_ticks PID: the CPU time (user + system, in clock ticks) PID has used so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# stop_all PID...: kills the processes, then waits for each.
stop_all() {
  local pid
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# start_ceiling REPLY_FILE OUT [FLAGS...]: starts the ceiling (loadtest/ceiling)
# answering with the response in REPLY_FILE (grpcurl's JSON of a cxcache Get:
# the same value, key and tags), its output in OUT (a file of its own per
# start: two ceilings may run at once); FLAGS go to it (--redis-url: the
# Redis-hit floor). Sets $ceiling_pid and $ceiling (its gRPC address) and adds
# the pid to $pids. Needs $bin.
start_ceiling() {
  local reply=$1 out=$2; shift 2
  local tags=() tag line
  jq -r '.value // ""' "$reply" | base64 -d >"$out.payload"
  while IFS= read -r tag; do [ -n "$tag" ] && tags+=(--tag "$tag"); done < <(jq -r '.tags[]?' "$reply")
  "$bin/cxcache-ceiling" --addr 127.0.0.1:0 --payload "$out.payload" --key "$(jq -r .key "$reply")" \
    "${tags[@]}" "$@" >"$out" 2>&1 &
  ceiling_pid=$!
  pids+=("$ceiling_pid")
  line=$(wait_line "$out" '^ceiling listening') || { log "the ceiling did not start"; return 1; }
  ceiling=${line##*grpc=}
}
