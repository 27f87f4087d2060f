#!/usr/bin/env bash
# Proto contract checks for cxcache.v1:
#   1. buf lint on proto/ (rules in proto/buf.yaml)
#   2. buf breaking: proto/ against the committed baseline image
#      clients/proto-check/cxcache-v1.baseline.json
# Usage: clients/proto-check.sh                 run both checks
#        clients/proto-check.sh --update-baseline  re-snapshot after an intended change
# buf comes from the npm package @bufbuild/buf (a devDependency of clients/node).
set -euo pipefail
CLIENTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$CLIENTS")"
BASELINE="$CLIENTS/proto-check/cxcache-v1.baseline.json"
BUF="$CLIENTS/node/node_modules/.bin/buf"
if [[ ! -x "$BUF" ]]; then
  echo "proto-check: installing node dev dependencies (for buf)"
  (cd "$CLIENTS/node" && { npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error; })
fi
cd "$ROOT"
if [[ "${1:-}" == "--update-baseline" ]]; then
  "$BUF" build proto --exclude-source-info -o "$BASELINE"
  python3 -c 'import json,sys; p=sys.argv[1]; d=json.load(open(p)); open(p,"w").write(json.dumps(d, indent=1)+"\n")' "$BASELINE"
  echo "proto-check: baseline updated: ${BASELINE#$ROOT/}"
  exit 0
fi
fail=0
echo "proto-check: buf lint proto"
if "$BUF" lint proto; then echo "proto-check: lint ok"; else echo "proto-check: lint FAILED"; fail=1; fi
echo "proto-check: buf breaking proto --against ${BASELINE#$ROOT/}"
if "$BUF" breaking proto --against "$BASELINE"; then echo "proto-check: no breaking changes"; else echo "proto-check: BREAKING changes against the baseline"; fail=1; fi
exit $fail
