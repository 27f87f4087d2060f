#!/usr/bin/env bash
# Install check for the Node client as users get it: `npm pack` the package, install
# the tarball into a fresh project outside the repo, then load it with `import` (ESM)
# and `require` (CommonJS) and type-check a consumer of each against its declarations.
# With CXCACHE_ADDR set, each script also does a live Get of kind "routing.queues" and
# prints the reply's source. Exits non-zero on any failure.
#
#   clients/node/ci-install-check.sh          (KEEP_WORK=1 keeps the temp dir)
set -euo pipefail

NODE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$NODE_DIR/../.." && pwd)"
log() { echo "ci-install-check: $*" >&2; }

WORK="$(mktemp -d)"
WORK="$(cd "$WORK" && pwd -P)"
if [[ "$WORK/" == "$(cd "$REPO" && pwd -P)/"* ]]; then
  log "temp dir $WORK is inside the repo; set TMPDIR elsewhere"
  exit 2
fi
if [[ "${KEEP_WORK:-0}" == 1 ]]; then log "work dir: $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi

# 1. Pack (prepack builds: generate, version from /VERSION, CJS + ESM).
cd "$NODE_DIR"
if [[ ! -d node_modules ]]; then npm ci --no-audit --no-fund --loglevel=error; fi
mkdir -p "$WORK/pack"
npm pack --silent --pack-destination "$WORK/pack" >/dev/null
TARBALL="$(ls "$WORK"/pack/*.tgz)"
log "packed $(basename "$TARBALL")"
VERSION="$(tr -d '[:space:]' <"$REPO/VERSION")"
[[ "$(basename "$TARBALL")" == *"-$VERSION.tgz" ]] || { log "tarball is not version $VERSION"; exit 1; }

# 2. A fresh project outside the repo.
APP="$WORK/app"
mkdir -p "$APP"
cd "$APP"
npm init -y >/dev/null
npm install --no-audit --no-fund --loglevel=error "$TARBALL"
log "installed into $APP"

cat >check.mjs <<'JS'
import { CacheClient, CacheError, VERSION, guard } from "@cxcache/client";
import { readFileSync } from "node:fs";
const resolved = import.meta.resolve("@cxcache/client");
if (!resolved.includes("/dist/esm/")) throw new Error(`import resolved to ${resolved}, not the ESM build`);
const pkg = JSON.parse(readFileSync(new URL("./node_modules/@cxcache/client/package.json", import.meta.url), "utf8"));
if (VERSION !== pkg.version || VERSION !== process.env.EXPECT_VERSION) throw new Error(`VERSION ${VERSION} / ${pkg.version}`);
if (typeof CacheClient !== "function" || typeof CacheError !== "function" || typeof guard !== "function") throw new Error("missing exports");
console.log(`esm: @cxcache/client ${VERSION} loaded from ${resolved}`);
if (process.env.CXCACHE_ADDR) {
  const cache = new CacheClient(process.env.CXCACHE_ADDR, { defaultTimeoutMs: 10_000 });
  try {
    const r = await cache.get("routing.queues", { parse: guard((v) => typeof v === "object" && v !== null, "an object") });
    console.log(`esm: routing.queues source=${r.source} key=${r.key}`);
  } finally {
    cache.close();
  }
}
JS

cat >check.cjs <<'JS'
const { CacheClient, CacheError, VERSION, guard } = require("@cxcache/client");
const resolved = require.resolve("@cxcache/client");
if (!resolved.includes("/dist/src/")) throw new Error(`require resolved to ${resolved}, not the CommonJS build`);
if (VERSION !== require("@cxcache/client/package.json").version || VERSION !== process.env.EXPECT_VERSION) throw new Error(`VERSION ${VERSION}`);
if (typeof CacheClient !== "function" || typeof CacheError !== "function") throw new Error("missing exports");
console.log(`cjs: @cxcache/client ${VERSION} loaded from ${resolved}`);
(async () => {
  if (!process.env.CXCACHE_ADDR) return;
  const cache = new CacheClient(process.env.CXCACHE_ADDR, { defaultTimeoutMs: 10_000 });
  try {
    const r = await cache.get("routing.queues", { parse: guard((v) => typeof v === "object" && v !== null, "an object") });
    console.log(`cjs: routing.queues source=${r.source} key=${r.key}`);
  } finally {
    cache.close();
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
JS

export EXPECT_VERSION="$VERSION"
node check.mjs
node check.cjs

# 3. Type declarations for both conditions (tsc and @types/node from the repo's dev install).
cat >check-esm.mts <<'TS'
import { CacheClient, guard, type GetResult } from "@cxcache/client";
const c = new CacheClient("127.0.0.1:1", { retry: { maxAttempts: 2 }, waitForReady: false });
const p: Promise<GetResult<{ id: string }>> = c.get("routing.queue", { id: "x", parse: guard((v): v is { id: string } => typeof v === "object" && v !== null && "id" in v) });
void p.catch(() => undefined);
c.close();
TS
cat >check-cjs.cts <<'TS'
import client = require("@cxcache/client");
const c = new client.CacheClient("127.0.0.1:1", { reconnect: false });
const w: client.WatchStream = c.watch({ keys: ["k"] });
w.cancel();
c.close();
TS
"$NODE_DIR/node_modules/.bin/tsc" --noEmit --strict --module nodenext --moduleResolution nodenext --target es2022 \
  --typeRoots "$NODE_DIR/node_modules/@types" --types node check-esm.mts check-cjs.cts
log "declarations type-check for import and require"
log "OK"
