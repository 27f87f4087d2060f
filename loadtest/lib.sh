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
