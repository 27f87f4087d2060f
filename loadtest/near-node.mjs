#!/usr/bin/env node
// Near cache benchmark for the Node client: Gets/s and latency per Get of one key, served by the
// near cache (source NEAR) vs the server's L1 (same client library, near cache on vs off), in one
// run, plus the ratio.
//
//   (cd clients/node && npm run build)
//   CXCACHE_ADDR=127.0.0.1:PORT node loadtest/near-node.mjs [seconds per phase, default 3]
//
// Start a server with scripts/live-server.sh start (and source target/live/env). Each phase runs
// sequential Gets (one in flight: latency per Get), then the L1 phase also with 16 in flight.
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const { CacheClient } = require(join(dirname(fileURLToPath(import.meta.url)), "..", "clients", "node", "dist", "src", "index.js"));

const ADDR = process.env.CXCACHE_ADDR;
if (!ADDR) {
  console.error("near-node: set CXCACHE_ADDR (scripts/live-server.sh start; . target/live/env)");
  process.exit(2);
}
const SECONDS = Number(process.argv[2] ?? 3);

function pct(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function phase(name, client, id, wantSource, concurrency = 1) {
  const lat = [];
  const sources = new Map();
  const end = performance.now() + SECONDS * 1000;
  let n = 0;
  async function worker() {
    while (performance.now() < end) {
      const t = performance.now();
      const r = await client.get("routing.queue", { id });
      lat.push(performance.now() - t);
      sources.set(r.source, (sources.get(r.source) ?? 0) + 1);
      n++;
    }
  }
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  const secs = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  const wrong = [...sources].filter(([s]) => s !== wantSource).reduce((a, [, v]) => a + v, 0);
  const res = {
    phase: name,
    concurrency,
    gets: n,
    getsPerSec: Math.round(n / secs),
    meanUs: +((lat.reduce((a, b) => a + b, 0) / lat.length) * 1000).toFixed(2),
    p50Us: +(pct(lat, 50) * 1000).toFixed(2),
    p99Us: +(pct(lat, 99) * 1000).toFixed(2),
    sources: Object.fromEntries(sources),
  };
  console.log(JSON.stringify(res));
  // A few are expected: server L1 entries live 2 s (then STORE), and a loop of near hits that never
  // yields lets the stream's heartbeats wait, so after maxStaleness one Get goes to the server.
  if (wrong > n / 100) console.error(`near-node: ${name}: expected every Get from ${wantSource}, got ${JSON.stringify(res.sources)}`);
  return res;
}

const plain = new CacheClient(ADDR, { defaultTimeoutMs: 10_000 });
const near = new CacheClient(ADDR, { defaultTimeoutMs: 10_000, nearCache: { maxStalenessMs: 1000 } });
try {
  const list = await plain.get("routing.queues");
  const id = list.value.entities[5 % list.value.entities.length].id;
  for (let i = 0; i < 3; i++) await plain.get("routing.queue", { id }); // server L1 warm
  await near.get("routing.queue", { id }); // near fill
  // warm-up of both paths (JIT)
  for (let i = 0; i < 2000; i++) await plain.get("routing.queue", { id });
  for (let i = 0; i < 20000; i++) await near.get("routing.queue", { id });
  const l1 = await phase("server L1 (near cache off)", plain, id, "L1");
  const l1c = await phase("server L1 (near cache off)", plain, id, "L1", 16);
  const nh = await phase("near hit (near cache on)", near, id, "NEAR");
  const stats = near.nearCacheStats();
  const summary = {
    ratioGetsPerSec: +(nh.getsPerSec / l1.getsPerSec).toFixed(1),
    ratioMeanLatency: +(l1.meanUs / nh.meanUs).toFixed(1),
    ratioVsL1With16InFlight: +(nh.getsPerSec / l1c.getsPerSec).toFixed(1),
    nearStats: stats,
  };
  console.log(JSON.stringify(summary));
  if (summary.ratioGetsPerSec < 100) console.error("near-node: ratio below 100x");
} finally {
  near.close();
  plain.close();
}
