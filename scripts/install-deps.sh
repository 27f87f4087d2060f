#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, skipping what is there:
# redis-server and redis-cli (Debian), grpcurl and ghz (go install).
# Client toolchains (pip/npm/maven packages) are installed by clients/run-tests.sh.
set -euo pipefail

log() { echo "install-deps: $*" >&2; }

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null \
  || ! command -v jq >/dev/null || ! command -v curl >/dev/null; then
  log "installing redis-server, jq, curl"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-server redis-tools jq curl >/dev/null
  # The package starts a system redis on 6379; tests start their own.
  (systemctl stop redis-server 2>/dev/null || service redis-server stop 2>/dev/null || true) >/dev/null 2>&1
fi

gobin=$(go env GOPATH 2>/dev/null)/bin
export PATH="$gobin:$PATH"
if ! command -v grpcurl >/dev/null; then
  log "installing grpcurl"
  go install github.com/fullstorydev/grpcurl/cmd/grpcurl@latest
fi
if ! command -v ghz >/dev/null; then
  log "installing ghz"
  go install github.com/bojand/ghz/cmd/ghz@latest
fi
# deploy/check.sh: promtool (Debian's prometheus package; its service is not
# wanted), helm, PyYAML.
if ! command -v promtool >/dev/null || ! python3 -c 'import yaml' 2>/dev/null; then
  log "installing promtool (prometheus), python3-yaml"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq prometheus python3-yaml >/dev/null
  (systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || pkill -x prometheus || true) >/dev/null 2>&1
fi
if ! command -v helm >/dev/null; then
  log "installing helm"
  go install helm.sh/helm/v3/cmd/helm@v3.22.0
fi
for pair in clippy:clippy fmt:rustfmt; do
  if ! cargo "${pair%%:*}" --version >/dev/null 2>&1; then
    log "installing ${pair#*:}"
    rustup component add "${pair#*:}"
  fi
done
log "ok: $(redis-server --version | cut -d' ' -f3), grpcurl $(grpcurl -version 2>&1 | cut -d' ' -f2), ghz present"
