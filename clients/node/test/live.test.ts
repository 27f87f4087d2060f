// Live tests against a running cxcache + genesys-emulator (clients/run-tests.sh
// starts both and exports CXCACHE_ADDR / CXCACHE_EMULATOR_URL).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import {
  CacheClient,
  guard,
  DeadlineExceededError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  type Source,
  type WatchEvent,
} from "../src/index.js";

const ADDR = process.env.CXCACHE_ADDR;
const EMULATOR = process.env.CXCACHE_EMULATOR_URL?.replace(/\/$/, "");
// Each client suite uses its own queue so "first Get is UPSTREAM" holds on a shared server.
const SUITE_QUEUE_INDEX = 1;
const CACHED: Source[] = ["L1", "STORE"];

async function admin(method: string, path: string, body?: unknown): Promise<any> {
  const res = await fetch(`${EMULATOR}${path}`, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.ok(res.ok, `${method} ${path} -> ${res.status}`);
  const text = await res.text();
  return text.trim() ? JSON.parse(text) : null;
}
const fault = (f: Record<string, unknown>) => admin("POST", "/admin/faults", f);
const clearFaults = () => admin("DELETE", "/admin/faults");
async function queueGets(): Promise<number> {
  const c = await admin("GET", "/admin/counters");
  return Object.entries((c.by_route ?? {}) as Record<string, number>)
    .filter(([route]) => route.startsWith("GET /api/v2/routing/queues/"))
    .reduce((n, [, v]) => n + v, 0);
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Queue {
  id: string;
  [k: string]: unknown;
}
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const isQueue = (v: unknown): v is Queue => isObject(v) && typeof v.id === "string";
const asQueueList = (v: unknown): { entities: Queue[] } => {
  if (!isObject(v) || !Array.isArray(v.entities) || !v.entities.every(isQueue)) throw new TypeError("not a queue list");
  return { entities: v.entities };
};

describe("live cxcache", { skip: !ADDR || !EMULATOR ? "needs CXCACHE_ADDR and CXCACHE_EMULATOR_URL (clients/run-tests.sh)" : false }, () => {
  let client: CacheClient;
  let ids: string[];
  const queue = (offset = 0) => ids[(SUITE_QUEUE_INDEX + offset) % ids.length];

  before(async () => {
    client = new CacheClient(ADDR!, { defaultTimeoutMs: 10_000 });
    await clearFaults();
    const list = await client.get("routing.queues", { parse: asQueueList });
    ids = list.value.entities.map((e) => e.id);
    assert.ok(ids.length > 0, "routing.queues returned no entities");
  });

  after(() => client?.close());

  test("list queues", async () => {
    const r = await client.get("routing.queues", { parse: asQueueList });
    assert.ok(Array.isArray(r.value.entities) && r.value.entities.every((e) => e.id));
    assert.ok(r.key);
  });

  test("first get is UPSTREAM, the next is cached", async () => {
    // Purged first, so the first Get is a miss even on a reused server.
    await client.invalidate({ tags: [`queue:${queue()}`], reason: "node client test" });
    const before = await queueGets();
    const first = await client.get("routing.queue", { id: queue(), parse: guard(isQueue, "a queue") });
    const second = await client.get("routing.queue", { id: queue(), parse: guard(isQueue, "a queue") });
    assert.equal((await queueGets()) - before, 1);
    assert.equal(first.source, "UPSTREAM");
    assert.ok(CACHED.includes(second.source), second.source);
    assert.equal(first.key, second.key);
    assert.deepEqual(first.raw, second.raw);
    assert.equal(first.value.id, queue());
    assert.ok(second.ttlRemainingMs > 0 && second.ageMs >= 0);
  });

  test("a second Get comes from STORE, the next from L1", async () => {
    await client.invalidate({ tags: [`queue:${queue()}`], reason: "node client test" });
    const sources: Source[] = [];
    for (let i = 0; i < 3; i++) sources.push((await client.get("routing.queue", { id: queue() })).source);
    assert.deepEqual(sources, ["UPSTREAM", "STORE", "L1"]);
  });

  test("an upstream 4xx carries the platform's error when the server relays ErrorInfo", async (t) => {
    await assert.rejects(client.get("routing.queue", { id: randomUUID() }), (e: unknown) => {
      assert.ok(e instanceof NotFoundError);
      if (!e.upstream) {
        t.skip("server sends no ErrorInfo with domain cxcache.upstream yet");
        return true;
      }
      assert.ok(e.upstreamMessage, "upstreamMessage is empty");
      assert.equal(e.upstreamStatus, 404);
      assert.ok(e.upstreamCode);
      return true;
    });
  });

  test("a trace context is accepted (traceparent metadata)", async () => {
    const r = await client.get("routing.queues", {
      metadata: { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" },
    });
    assert.ok(r.key);
  });

  test("forceRefresh goes upstream", async () => {
    await client.get("routing.queue", { id: queue() });
    const before = await queueGets();
    const r = await client.get("routing.queue", { id: queue(), forceRefresh: true });
    assert.equal((await queueGets()) - before, 1);
    assert.ok(["UPSTREAM", "REVALIDATED"].includes(r.source), r.source);
  });

  test("variant summary is a projection with its own key", async () => {
    const full = await client.get("routing.queue", { id: queue(), parse: guard(isObject) });
    const summary = await client.get("routing.queue", { id: queue(), variant: "summary", parse: guard(isObject) });
    assert.notEqual(summary.key, full.key);
    assert.ok(Object.keys(summary.value).length > 0);
    for (const k of Object.keys(summary.value)) assert.ok(k in full.value, `summary field ${k} not in full value`);
  });

  test("unknown kind is INVALID_ARGUMENT on field kind", async () => {
    await assert.rejects(client.get("no.such.kind"), (e: unknown) => {
      assert.ok(e instanceof InvalidArgumentError);
      assert.ok(e.fieldViolations.some((v) => v.field === "kind"), JSON.stringify(e.fieldViolations));
      return true;
    });
  });

  test("missing id is INVALID_ARGUMENT on field id", async () => {
    await assert.rejects(client.get("routing.queue"), (e: unknown) => {
      assert.ok(e instanceof InvalidArgumentError);
      assert.ok(e.fieldViolations.some((v) => v.field === "id"), JSON.stringify(e.fieldViolations));
      return true;
    });
  });

  test("unknown queue is NOT_FOUND", async () => {
    await assert.rejects(client.get("routing.queue", { id: randomUUID() }), NotFoundError);
  });

  test("upstream 429 is RESOURCE_EXHAUSTED with RetryInfo", async () => {
    // The server waits out a Retry-After that ends inside the caller's deadline (and
    // retries), so make the upstream's Retry-After outlast this call's deadline.
    await fault({ path_prefix: "/api/v2/routing/queues", status: 429, retry_after_secs: 3, count: 1 });
    let retryMs = 0;
    try {
      await assert.rejects(client.get("routing.queue", { id: randomUUID(), timeoutMs: 1000 }), (e: unknown) => {
        assert.ok(e instanceof ResourceExhaustedError, String(e));
        assert.ok(e.retryAfterMs !== undefined && e.retryAfterMs > 0 && e.retryAfterMs <= 10_000, String(e.retryAfterMs));
        retryMs = e.retryAfterMs;
        return true;
      });
    } finally {
      await clearFaults();
    }
    await sleep(Math.min(retryMs, 3000) + 100); // let the upstream token rest out
  });

  test("upstream latency beyond the deadline is DEADLINE_EXCEEDED", async () => {
    await fault({ path_prefix: "/api/v2/routing/queues", latency_ms: 1500, count: 1 });
    try {
      const t0 = Date.now();
      await assert.rejects(client.get("routing.queue", { id: randomUUID(), timeoutMs: 300 }), DeadlineExceededError);
      assert.ok(Date.now() - t0 < 1200);
    } finally {
      await clearFaults();
      await sleep(1500); // let the slow upstream call finish so later counter checks are exact
    }
  });

  test("invalidate a key, then the next get is UPSTREAM", async () => {
    const id = queue(3);
    const { key } = await client.get("routing.queue", { id });
    assert.ok(CACHED.includes((await client.get("routing.queue", { id })).source));
    assert.ok((await client.invalidate({ keys: [key], reason: "node client test" })) >= 1);
    assert.equal((await client.get("routing.queue", { id })).source, "UPSTREAM");
  });

  test("invalidate by tag", async () => {
    const id = queue(6);
    const r = await client.get("routing.queue", { id });
    assert.ok(r.tags.length > 0, "routing.queue entries should carry tags");
    assert.ok((await client.invalidate({ tags: [r.tags[0]], reason: "node tag test" })) >= 1);
    assert.equal((await client.get("routing.queue", { id })).source, "UPSTREAM");
  });

  test("watch on a key receives INVALIDATED", async () => {
    const { key } = await client.get("routing.queue", { id: queue() });
    const stream = client.watch({ keys: [key], timeoutMs: 15_000 });
    try {
      assert.equal(await stream.waitReady(10_000), true, "Watch did not start");
      const got: WatchEvent[] = [];
      const reader = (async () => {
        for await (const ev of stream) {
          got.push(ev);
          if (ev.type === "INVALIDATED") return ev;
        }
        return undefined;
      })();
      assert.ok((await client.invalidate({ keys: [key], reason: "node watch test" })) >= 1);
      const ev = await Promise.race([reader, sleep(10_000).then(() => undefined)]);
      assert.ok(ev, `no INVALIDATED event, got ${JSON.stringify(got)}`);
      assert.equal(ev.key, key);
      assert.equal(ev.kind, "routing.queue");
      assert.equal(ev.reason, "node watch test");
      // HEARTBEATs are not yielded (no `heartbeats: true`), but they take sequence numbers too.
      assert.ok(got.every((e) => e.type !== "HEARTBEAT"), JSON.stringify(got));
      assert.ok(got[0].sequence >= 1);
      assert.ok(ev.position, "events carry a position");
      assert.ok(stream.position, "the stream tracks the last position");
      assert.ok(ev.time instanceof Date);
    } finally {
      stream.cancel();
    }
  });
});
