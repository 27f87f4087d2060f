#!/usr/bin/env bash
# Checks everything under deploy/:
#
#   1. alert rules:   promtool check rules (+ promtool test rules)
#   2. dashboard:     valid JSON, every panel query parses as PromQL
#   3. Helm chart:    helm lint, helm template (defaults and an all-features
#                     values set), and deploy/k8s.yaml == the default render
#   4. metrics:       every metric name used by the dashboard and the rules is
#                     exported by a running cxcache (only with --metrics-url)
#
# Usage:
#   deploy/check.sh [--metrics-url URL] [--grpc-addr HOST:PORT]
#                   [--allow-pending] [--update-k8s]
#
#   --metrics-url URL   the server's /metrics (or CXCACHE_METRICS_URL). Without
#                       it step 4 is skipped (and says so).
#   --grpc-addr ADDR    its plaintext gRPC address (or CXCACHE_GRPC_ADDR): a few
#                       Gets are sent first, so metrics that appear after
#                       traffic must then be present (see metrics-late.txt).
#   --allow-pending     names in metrics-pending.txt (proposed, not yet in the
#                       server) warn instead of failing.
#   --update-k8s        rewrite deploy/k8s.yaml from the chart instead of
#                       diffing it.
#
# Tools: promtool (Debian package `prometheus`), helm (v3.22.0 via go
# install), python3 with PyYAML, grpcurl (only with --grpc-addr). Missing
# ones are installed; present ones are used as they are.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
metrics_url="${CXCACHE_METRICS_URL:-}"
grpc_addr="${CXCACHE_GRPC_ADDR:-}"
allow_pending=0
update_k8s=0
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
GRPCURL_VERSION="${GRPCURL_VERSION:-v1.9.3}"

while [ $# -gt 0 ]; do
  case "$1" in
    --metrics-url) metrics_url="$2"; shift 2 ;;
    --grpc-addr) grpc_addr="$2"; shift 2 ;;
    --allow-pending) allow_pending=1; shift ;;
    --update-k8s) update_k8s=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "check.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
done

failures=0
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; failures=$((failures + 1)); }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# ---- tools ---------------------------------------------------------------

gobin() { echo "$(go env GOPATH)/bin"; }
export PATH="$PATH:$(command -v go >/dev/null && gobin || true)"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_promtool() {
  command -v promtool >/dev/null && return
  echo "installing promtool (apt-get install prometheus)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  # The package starts a Prometheus server; only promtool is wanted.
  as_root systemctl stop prometheus 2>/dev/null || as_root service prometheus stop 2>/dev/null || true
}

need_helm() {
  command -v helm >/dev/null && return
  command -v go >/dev/null || { echo "helm missing and no go toolchain to install it" >&2; exit 69; }
  echo "installing helm $HELM_VERSION (go install)"
  (cd "$tmp" && go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
}

need_python() {
  python3 -c 'import yaml' 2>/dev/null && return
  echo "installing python3-yaml"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-yaml >/dev/null
}

need_grpcurl() {
  command -v grpcurl >/dev/null && return
  echo "installing grpcurl $GRPCURL_VERSION (go install)"
  (cd "$tmp" && go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION")
}

need_promtool
need_helm
need_python

# ---- 1. alert rules ------------------------------------------------------

step "alert rules: promtool check rules"
rules="$here/prometheus/cxcache-rules.yml"
promtool check rules "$rules" || fail "promtool check rules $rules"
if [ -f "$here/prometheus/cxcache-rules.test.yml" ]; then
  step "alert rules: promtool test rules"
  (cd "$here/prometheus" && promtool test rules cxcache-rules.test.yml) || fail "promtool test rules"
fi

# ---- 2. dashboard --------------------------------------------------------

step "dashboard: JSON and PromQL of every panel query"
dashboard="$here/grafana/cxcache.json"
# Each panel query becomes a recording rule (template variables replaced by
# plausible values) so promtool parses it.
if python3 - "$dashboard" "$tmp/dashboard-rules.yml" <<'PY'
import json, re, sys, yaml
d = json.load(open(sys.argv[1]))
exprs = []
def walk(panels):
    for p in panels:
        for t in p.get("targets", []):
            if t.get("expr"):
                exprs.append((p.get("title", "?"), t["expr"]))
        walk(p.get("panels", []))
walk(d["panels"])
assert d.get("uid"), "dashboard has no uid"
for p in d["panels"]:
    ds = p.get("datasource")
    if p.get("type") != "row" and ds and ds.get("uid") != "${datasource}":
        sys.exit(f"panel {p.get('title')!r}: datasource is not the ${{datasource}} variable")
sub = lambda e: re.sub(r"\$__rate_interval|\$__interval|\$__range", "5m", re.sub(r"\$\{?(\w+)\}?", lambda m: m.group(0) if m.group(1).startswith("__") else ".*", e))
rules = [{"record": f"dashboard:q{i}", "expr": sub(e), "labels": {"panel": t}} for i, (t, e) in enumerate(exprs)]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"{len(exprs)} panel queries")
PY
then
  promtool check rules "$tmp/dashboard-rules.yml" > "$tmp/dashboard-check.txt" 2>&1 \
    || { cat "$tmp/dashboard-check.txt"; fail "dashboard PromQL"; }
else
  fail "dashboard JSON"
fi

# ---- 3. Helm chart -------------------------------------------------------

chart="$here/helm/cxcache"
step "helm lint"
helm lint --strict "$chart" || fail "helm lint (defaults)"
cat > "$tmp/all-features.yaml" <<'YAML'
credentials: { existingSecret: cxcache-oauth, key: credentials.toml }
tls: { enabled: true, secretName: cxcache-tls }
callers:
  - { name: wfm-sync, api_keys: ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"], scopes: { get: [routing.queue] } }
extraConfig: |
  [cache.l1]
  max_bytes = 134217728
config: { redis: { url: "" }, telemetry: { otlpEndpoint: "" } }
checkConfig: { enabled: false }
podDisruptionBudget: { enabled: false }
service: { headless: false }
YAML
helm lint --strict "$chart" -f "$tmp/all-features.yaml" || fail "helm lint (all-features values)"

step "helm template"
header='# GENERATED from the Helm chart deploy/helm/cxcache with its default values:
#
#   helm template cxcache deploy/helm/cxcache --namespace cxcache
#
# Do not edit by hand: change the chart (or its values.yaml) and run
# `deploy/check.sh --update-k8s`. deploy/check.sh fails when this file and
# the chart disagree.
#
# Apply as is for a quick start (set the image, Redis URL, API/token URLs and
# credentials first), or install the chart:
#
#   kubectl create namespace cxcache
#   kubectl -n cxcache apply -f deploy/k8s.yaml
#   # or: helm install cxcache deploy/helm/cxcache -n cxcache -f my-values.yaml
'
if helm template cxcache "$chart" --namespace cxcache > "$tmp/render.yaml"; then
  { printf '%s' "$header"; cat "$tmp/render.yaml"; } > "$tmp/k8s.yaml"
  python3 -c 'import sys, yaml; docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]; print(len(docs), "objects:", ", ".join(d["kind"] + "/" + d["metadata"]["name"] for d in docs))' "$tmp/render.yaml"
  if [ "$update_k8s" -eq 1 ]; then
    cp "$tmp/k8s.yaml" "$here/k8s.yaml"; echo "wrote deploy/k8s.yaml"
  elif ! diff -u "$here/k8s.yaml" "$tmp/k8s.yaml" > "$tmp/k8s.diff"; then
    head -40 "$tmp/k8s.diff"
    fail "deploy/k8s.yaml differs from the chart's default render (run deploy/check.sh --update-k8s)"
  else
    echo "deploy/k8s.yaml matches the chart"
  fi
else
  fail "helm template (defaults)"
fi
helm template cxcache "$chart" --namespace cxcache -f "$tmp/all-features.yaml" > "$tmp/render-all.yaml" \
  || fail "helm template (all-features values)"
grep -q 'cert = "/etc/cxcache/tls/tls.crt"' "$tmp/render-all.yaml" && grep -q '\[\[auth.callers\]\]' "$tmp/render-all.yaml" \
  || fail "all-features render lacks the [tls] or [[auth.callers]] config"

# ---- 4. metrics cross-check ----------------------------------------------

if [ -z "$metrics_url" ]; then
  step "metrics cross-check: SKIPPED (no --metrics-url / CXCACHE_METRICS_URL)"
else
  if [ -n "$grpc_addr" ]; then
    need_grpcurl
    step "traffic: a few Gets to $grpc_addr"
    get() { grpcurl -plaintext -max-time 10 -d "$1" "$grpc_addr" cxcache.v1.Cache/Get >/dev/null 2>&1; }
    get '{"kind":"routing.queues"}' || fail "Get routing.queues against $grpc_addr"
    get '{"kind":"routing.queues"}' || true
    # A failed Get (cxcache_get_errors_total).
    get '{"kind":"cxcache.check.unknown-kind"}' && fail "a Get of an unknown kind succeeded"
    # Parallel refreshes of one key: all but one join the first fetch
    # (cxcache_coalesced_*).
    for _ in 1 2 3 4 5 6; do get '{"kind":"routing.queues","freshness":{"max_age":"0.001s"}}' & done
    wait
  fi
  step "metrics cross-check against $metrics_url"
  curl -fsS --max-time 10 "$metrics_url" > "$tmp/metrics.txt" || { fail "cannot scrape $metrics_url"; metrics_url=""; }
fi

if [ -n "$metrics_url" ]; then
  python3 - "$tmp/metrics.txt" "$dashboard" "$rules" "$root/server/src/metrics.rs" \
    "$here/metrics-late.txt" "$here/metrics-pending.txt" "$([ -n "$grpc_addr" ] && echo 1 || echo 0)" "$allow_pending" <<'PY' || fail "metrics cross-check"
import json, re, sys, yaml
exposition, dashboard, rules, metrics_rs, late_f, pending_f, traffic_sent, allow_pending = sys.argv[1:]
traffic_sent, allow_pending = traffic_sent == "1", allow_pending == "1"

# What the server exports: sample names, and the TYPE of each family.
exported, types = set(), {}
for line in open(exposition):
    if line.startswith("# TYPE "):
        _, _, name, t = line.split()[:4]
        types[name] = t
    elif line.strip() and not line.startswith("#"):
        exported.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))

# What the server declares: every "cxcache_…" string literal in metrics.rs.
declared = set(re.findall(r'"(cxcache_[a-z0-9_]+)"', open(metrics_rs).read()))
declared_hist = set()
src = open(metrics_rs).read()
consts = dict(re.findall(r'const (\w+): &str = "(cxcache_[a-z0-9_]+)"', src))
for c in re.findall(r"describe_histogram!\(\s*(\w+)", src):
    if c in consts: declared_hist.add(consts[c])

def table(path):
    rows = {}
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if line:
            name, rest = line.split(None, 1)
            rows[name] = rest
    return rows
late, pending = table(late_f), table(pending_f)

# What the dashboard and the rules use: cxcache_* names in expressions only
# (panel targets, template variable queries, rule exprs), not in titles.
used = {}
def note(expr, where):
    for n in re.findall(r"(?<![A-Za-z0-9_:])cxcache_[a-z0-9_]+", expr):
        used.setdefault(n, set()).add(where)
d = json.load(open(dashboard))
def walk(panels):
    for p in panels:
        for t in p.get("targets", []):
            note(t.get("expr", ""), "dashboard")
        walk(p.get("panels", []))
walk(d["panels"])
for v in d.get("templating", {}).get("list", []):
    q = v.get("query")
    note(q.get("query", "") if isinstance(q, dict) else str(q or ""), "dashboard")
for g in yaml.safe_load(open(rules))["groups"]:
    for r in g["rules"]:
        note(r["expr"], "rules")

bad = warn = 0
def base_of(n):
    for s in ("_bucket", "_sum", "_count"):
        if n.endswith(s) and (types.get(n[: -len(s)]) == "histogram" or n[: -len(s)] in declared_hist):
            return n[: -len(s)]
    return n
for n in sorted(used):
    where = "+".join(sorted(used[n]))
    b = base_of(n)
    if n in exported:
        print(f"  ok       {n}  ({where})")
    elif types.get(n) == "histogram" or n in declared_hist:
        print(f"  FAIL     {n}  ({where}): a histogram has no bare series; use {n}_bucket/_sum/_count"); bad += 1
    elif b in pending and b not in declared:
        tag = "PENDING " if allow_pending else "FAIL    "
        print(f"  {tag} {n}  ({where}): not in the server yet (metrics-pending.txt: {pending[b]})")
        if allow_pending: warn += 1
        else: bad += 1
    elif b in late and b in declared:
        cat, why = (late[b].split(None, 1) + [""])[:2]
        if cat == "traffic" and traffic_sent:
            print(f"  FAIL     {n}  ({where}): still absent after the check's Gets ({why})"); bad += 1
        elif cat == "traffic":
            print(f"  late     {n}  ({where}): declared, not seen; appears after traffic ({why}); pass --grpc-addr to check it"); warn += 1
        else:
            print(f"  late     {n}  ({where}): declared in metrics.rs, not seen yet: {why}")
    elif b in late:
        print(f"  FAIL     {n}  ({where}): listed in metrics-late.txt but not declared in server/src/metrics.rs"); bad += 1
    elif b in declared:
        print(f"  FAIL     {n}  ({where}): declared in metrics.rs but not exported, and not in metrics-late.txt"); bad += 1
    else:
        print(f"  FAIL     {n}  ({where}): unknown to the server (not exported, not declared in metrics.rs)"); bad += 1
    if b in pending and b in declared:
        print(f"  note     {b} is now declared in metrics.rs: remove it from metrics-pending.txt")
for n in sorted(late):
    if n not in declared:
        print(f"  FAIL     metrics-late.txt names {n}, which server/src/metrics.rs does not declare"); bad += 1
print(f"{len(used)} names used; {bad} failing, {warn} warnings")
sys.exit(1 if bad else 0)
PY
fi

echo
if [ "$failures" -gt 0 ]; then
  echo "check.sh: $failures check(s) FAILED"; exit 1
fi
echo "check.sh: all checks passed"
