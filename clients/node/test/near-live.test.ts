// Live tests of the near cache against a real cxcache + emulator: the shared instance of
// clients/run-tests.sh (CXCACHE_ADDR), and for kill/restart our own processes from
// CXCACHE_BIN_DIR (default <repo>/target/debug), started on port 0.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import { CacheClient, UnavailableError, type GetResult } from "../src/index.js";
import { WatchEvent as PbWatchEvent } from "../src/gen/cxcache/v1/cache.js";
import { startCxcache, startEmulator, stopProc, TcpProxy, waitFor, type Proc } from "./procs.js";

const ADDR = process.env.CXCACHE_ADDR;
const EMULATOR = process.env.CXCACHE_EMULATOR_URL?.replace(/\/$/, "");
// Each client suite uses its own queues on a shared server (python 0, node 1, java 2 ...).
const NODE_QUEUES = [1, 4, 7, 10, 13];
const RACE_ROUNDS = Number(process.env.NEAR_RACE_ROUNDS ?? 40);
// CLOCK_MONOTONIC, shared by the processes of one host (the invalidator stamps its acks with it).
const wall = () => Number(process.hrtime.bigint()) / 1e6;

async function admin(base: string, method: string, path: string, body?: unknown): Promise<any> {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.ok(res.ok, `${method} ${path} -> ${res.status}`);
  const text = await res.text();
  return text.trim() ? JSON.parse(text) : null;
}
async function emulatorGets(base: string): Promise<number> {
  const c = await admin(base, "GET", "/admin/counters");
  return Object.entries((c.by_route ?? {}) as Record<string, number>)
    .filter(([route]) => route.startsWith("GET /api/v2/routing/queues/"))
    .reduce((n, [, v]) => n + v, 0);
}
async function queueIds(c: CacheClient): Promise<string[]> {
  const list = await c.get("routing.queues");
  return (list.value as { entities: Array<{ id: string }> }).entities.map((e) => e.id);
}
/** Bounded wait for a condition that an event makes true (checked on every heartbeat/event). */
async function until(what: string, ms: number, cond: () => boolean | Promise<boolean>): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Get until the near cache serves it (bounded): a Get that missed upstream stores a value, whose
 * UPDATED event drops the entry it filled, so the second Get (a server hit) is the one kept.
 */
async function nearWarm(c: CacheClient, id: string): Promise<GetResult> {
  for (let i = 0; i < 5; i++) {
    const r = await c.get("routing.queue", { id });
    if (r.source === "NEAR") return r;
  }
  throw new Error(`no near hit for ${id} in 5 Gets: ${JSON.stringify(c.nearCacheStats())}`);
}

describe("live near cache", { skip: !ADDR || !EMULATOR ? "needs CXCACHE_ADDR and CXCACHE_EMULATOR_URL (clients/run-tests.sh)" : false }, () => {
  let plain: CacheClient;
  let ids: string[];
  const open: CacheClient[] = [];
  const nearClient = (addr: string, maxStalenessMs = 1000, extra: Record<string, number> = {}) => {
    const c = new CacheClient(addr, {
      defaultTimeoutMs: 10_000,
      nearCache: { maxStalenessMs },
      channelOptions: { "grpc.initial_reconnect_backoff_ms": 100, "grpc.max_reconnect_backoff_ms": 1000, ...extra },
    });
    open.push(c);
    return c;
  };
  before(async () => {
    plain = new CacheClient(ADDR!, { defaultTimeoutMs: 10_000 });
    ids = await queueIds(plain);
  });
  after(() => {
    for (const c of open) c.close();
    plain?.close();
  });
  const queue = (i: number) => ids[NODE_QUEUES[i] % ids.length];

  test("1. near hit after the first Get: source NEAR, emulator request counter unchanged", async () => {
    const id = queue(0);
    await plain.get("routing.queue", { id }); // warm the server, so the near client's Get is a server hit
    const c = nearClient(ADDR!);
    const first = await c.get("routing.queue", { id });
    assert.notEqual(first.source, "NEAR");
    const before = await emulatorGets(EMULATOR!);
    const second = await c.get("routing.queue", { id });
    assert.equal(second.source, "NEAR");
    assert.deepEqual(second.raw, first.raw);
    assert.equal(second.key, first.key);
    assert.equal(await emulatorGets(EMULATOR!), before);
    const s = c.nearCacheStats()!;
    assert.equal(s.hits, 1);
    assert.ok(s.healthy && s.connected && s.heartbeats >= 1, JSON.stringify(s));
  });

  test("2. a purge by another client instance is applied within the Watch delay", async () => {
    const id = queue(1);
    const c = nearClient(ADDR!);
    const r = await nearWarm(c, id);
    const ev = waitFor<[PbWatchEvent]>(c.nearCache!, "event", 5000, (e) => e.key === r.key && e.type === 1);
    let eventAt = 0;
    void ev.then(() => (eventAt = performance.now()));
    const t0 = performance.now();
    await plain.invalidate({ keys: [r.key], reason: "node near test 2" });
    const acked = performance.now();
    await ev;
    eventAt ||= performance.now();
    console.log(`# watch delay: event ${(eventAt - acked).toFixed(2)} ms after the Invalidate's OK (the call took ${(acked - t0).toFixed(2)} ms)`);
    const next = await c.get("routing.queue", { id });
    assert.notEqual(next.source, "NEAR");
  });

  test("4. a resumed stream replays events missed during a short disconnect, without a flush", async () => {
    const id = queue(2);
    const proxy = new TcpProxy(TcpProxy.parse(ADDR!));
    await proxy.start();
    try {
      const c = nearClient(proxy.addr);
      const r = await nearWarm(c, id);
      const near = c.nearCache!;
      const flushes = near.stats().flushes;
      const down = waitFor(near, "disconnect", 5000);
      proxy.refuse(true);
      proxy.cut();
      await down;
      // purge during the gap, directly (not through the proxy)
      await plain.invalidate({ keys: [r.key], reason: "node near test 4 (gap)" });
      const replayed = waitFor<[PbWatchEvent]>(near, "event", 15_000, (e) => e.key === r.key);
      const resumed = waitFor(near, "resume", 15_000);
      proxy.refuse(false);
      await Promise.all([replayed, resumed]);
      const s = near.stats();
      assert.equal(s.flushes, flushes, "a resumed stream does not flush");
      assert.ok(s.resumes >= 1);
      assert.notEqual((await c.get("routing.queue", { id })).source, "NEAR");
    } finally {
      await proxy.stop();
    }
  });

  describe("own server processes", () => {
    let emu: { proc: Proc; url: string };
    let cx: { proc: Proc; addr: string } | undefined;
    before(async () => {
      emu = await startEmulator();
    });
    after(async () => {
      await stopProc(cx?.proc);
      await stopProc(emu?.proc);
    });

    test("3. SIGKILL and restart: flushed; no near hit served past maxStaleness while down", async () => {
      const maxStalenessMs = 500;
      cx = await startCxcache(emu.url);
      const proxy = new TcpProxy(TcpProxy.parse(cx.addr));
      await proxy.start();
      try {
        const c = nearClient(proxy.addr, maxStalenessMs);
        const ids3 = await queueIds(c);
        const id = ids3[0];
        await nearWarm(c, id);
        const near = c.nearCache!;
        const flushes = near.stats().flushes;
        const killedAt = performance.now();
        await stopProc(cx.proc, "SIGKILL");
        // Read as fast as possible while it is down; failures are expected once near hits stop.
        let lastNear = -Infinity;
        let failed = 0;
        while (performance.now() - killedAt < maxStalenessMs + 500) {
          // The near cache decides after this moment (a clock read after the
          // Get would add the Get's own time to what the guarantee bounds).
          const asked = performance.now() - killedAt;
          try {
            const r: GetResult = await c.get("routing.queue", { id, retry: false, timeoutMs: 200 });
            if (r.source === "NEAR") lastNear = asked;
          } catch (e) {
            assert.ok(e instanceof UnavailableError || (e as Error).name === "DeadlineExceededError", String(e));
            failed++;
            await new Promise((r) => setTimeout(r, 5));
          }
        }
        console.log(`# near hits while down: last one ${lastNear.toFixed(1)} ms after SIGKILL (maxStaleness ${maxStalenessMs} ms), ${failed} Gets failed after`);
        assert.ok(lastNear < maxStalenessMs, `near hit ${lastNear} ms after the kill`);
        assert.ok(failed > 0);
        // restart (a new instance: it cannot resume the old stream)
        const flushed = waitFor(near, "flush", 20_000);
        cx = await startCxcache(emu.url);
        proxy.target = TcpProxy.parse(cx.addr);
        await flushed;
        assert.equal(near.stats().flushes, flushes + 1);
        await until("the stream to be live again", 10_000, () => near.stats().connected);
        const again = await c.get("routing.queue", { id });
        assert.notEqual(again.source, "NEAR");
        await nearWarm(c, id);
      } finally {
        await proxy.stop();
      }
    });

    test(`5. racing checker: ${RACE_ROUNDS} rounds of hold, Get in flight, PATCH + Invalidate from another process, release`, async () => {
      const maxStalenessMs = 250;
      cx = cx && cx.proc.child.exitCode === null ? cx : await startCxcache(emu.url);
      const addr = cx.addr;
      const c = nearClient(addr, maxStalenessMs);
      const ids5 = await queueIds(c);
      const id = ids5[1];
      const child = spawn(process.execPath, [join(__dirname, "invalidator.js"), addr], { stdio: ["pipe", "pipe", "inherit"] });
      const lines = createInterface({ input: child.stdout! });
      const replies: string[] = [];
      let wake: (() => void) | undefined;
      lines.on("line", (l) => {
        replies.push(l);
        wake?.();
      });
      const nextLine = async (ms: number) => {
        const end = Date.now() + ms;
        while (!replies.length) {
          if (Date.now() > end) throw new Error("the invalidator process did not answer");
          await new Promise<void>((r) => {
            wake = r;
            setTimeout(r, 50);
          });
        }
        return replies.shift()!;
      };
      try {
        assert.equal(await nextLine(10_000), "ready");
        const version = (r: GetResult) => Number(/near-race-(\d+)/.exec(String((r.value as { description?: string }).description))?.[1] ?? -1);
        const acks: number[] = []; // acks[v]: wall-clock ms at which version v-1 was purged
        let worst = -Infinity;
        let nearReads = 0;
        let staleNear = 0;
        let violations = 0;
        let key = (await c.get("routing.queue", { id })).key;
        const check = (r: GetResult, at: number) => {
          if (r.source !== "NEAR") return;
          nearReads++;
          const v = version(r);
          const purgedAt = acks[v + 1];
          if (purgedAt === undefined) return;
          staleNear++;
          worst = Math.max(worst, at - purgedAt);
          if (at - purgedAt > maxStalenessMs) violations++;
        };
        // when each purge's event reached this process (for the report: the Watch delay after the ack)
        const eventAt: number[] = [];
        let round = 0;
        c.nearCache!.on("event", (e: PbWatchEvent) => {
          if (e.type === 1 && e.key === key && eventAt[round] === undefined) eventAt[round] = wall();
        });
        let stop = false;
        // a reader hammering the key all along (near hits, and fills racing the purges)
        const reader = (async () => {
          while (!stop) {
            try {
              const r = await c.get("routing.queue", { id });
              check(r, wall());
            } catch {
              /* a failed read says nothing about staleness */
            }
            await new Promise((r) => setImmediate(r));
          }
        })();
        for (round = 1; round <= RACE_ROUNDS; round++) {
          await admin(emu.url, "POST", "/admin/faults", { path_prefix: `/api/v2/routing/queues/${id}`, hold: true, count: 1 });
          const inFlight = c.get("routing.queue", { id, forceRefresh: true }).then(
            (r) => check(r, wall()),
            () => undefined,
          );
          await until("the upstream call to be held", 10_000, async () => (await admin(emu.url, "GET", "/admin/held")).held >= 1);
          await admin(emu.url, "PATCH", `/admin/queues/${id}`, { description: `near-race-${round}` });
          child.stdin!.write(`${key}\n`);
          const ack = await nextLine(10_000);
          assert.match(ack, /^ok /, ack);
          acks[round] = Number(ack.slice(3));
          await admin(emu.url, "POST", "/admin/release");
          await inFlight;
          await admin(emu.url, "DELETE", "/admin/faults");
          key = (await c.get("routing.queue", { id })).key;
        }
        // read on past the last ack's window
        const lastAck = acks[RACE_ROUNDS];
        await until("the window after the last ack", maxStalenessMs + 2000, () => wall() > lastAck + maxStalenessMs + 50);
        stop = true;
        await reader;
        const s = c.nearCacheStats()!;
        const delays = acks.map((a, i) => (eventAt[i] ?? NaN) - a).filter((d) => Number.isFinite(d)).sort((a, b) => a - b);
        const q = (p: number) => delays[Math.min(delays.length - 1, Math.floor(p * delays.length))]?.toFixed(2);
        console.log(`# race: Watch event after the other process's ack: median ${q(0.5)} ms, p99 ${q(0.99)} ms, max ${q(1)} ms (${delays.length} events)`);
        console.log(
          `# race: ${RACE_ROUNDS} rounds, ${nearReads} near reads, ${staleNear} of a purged value, worst ${worst === -Infinity ? "none" : `${worst.toFixed(2)} ms after the ack`}; ` +
            `fills ${s.fills}, rejected ${s.rejectedFills}, flushes ${s.flushes}`,
        );
        assert.equal(violations, 0, `near reads of a value older than the last acknowledged Invalidate + ${maxStalenessMs} ms (worst ${worst} ms)`);
        assert.ok(nearReads > RACE_ROUNDS, "the reader should have been served from the near cache");
      } finally {
        child.stdin!.end();
        await admin(emu.url, "DELETE", "/admin/faults").catch(() => undefined);
        await admin(emu.url, "POST", "/admin/release").catch(() => undefined);
        await new Promise<void>((res) => {
          if (child.exitCode !== null) res();
          else {
            const t = setTimeout(() => child.kill("SIGKILL"), 5000);
            child.once("exit", () => {
              clearTimeout(t);
              res();
            });
          }
        });
      }
    });
  });
});
