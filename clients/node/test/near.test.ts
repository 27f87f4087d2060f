// Offline tests of the near cache (fake Watch stream, fake clock) and of Watch resume
// (an in-process fake server).
import assert from "node:assert/strict";
import { EventEmitter, once } from "node:events";
import { after, before, describe, test } from "node:test";
import { Metadata, Server, ServerCredentials, ServerWritableStream } from "@grpc/grpc-js";
import { CacheClient, NearCache, requestIdentity, type NearCacheOptions, type WatchEvent } from "../src/index.js";
import {
  CacheServer,
  CacheService,
  GetResponse,
  Source,
  WatchEvent as PbWatchEvent,
  WatchEvent_Type as T,
  WatchRequest,
} from "../src/gen/cxcache/v1/cache.js";

class FakeCall extends EventEmitter {
  cancelled = false;
  constructor(readonly req: WatchRequest) {
    super();
  }
  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    this.emit("error", Object.assign(new Error("CANCELLED"), { code: 1 }));
  }
  send(type: T, key = "", position = ""): void {
    this.emit("data", PbWatchEvent.fromPartial({ type, key, position }));
  }
  fail(): void {
    this.emit("error", Object.assign(new Error("UNAVAILABLE"), { code: 14 }));
  }
}

function harness(o: NearCacheOptions = {}) {
  let t = 1000;
  const calls: FakeCall[] = [];
  const near = new NearCache(
    { maxStalenessMs: 1000, now: () => t, random: () => 0, initialBackoffMs: 1, maxBackoffMs: 4, startWaitMs: 5000, ...o },
    (req) => {
      const c = new FakeCall(req);
      calls.push(c);
      return c;
    },
  );
  return {
    near,
    calls,
    last: () => calls[calls.length - 1],
    advance: (ms: number) => void (t += ms),
  };
}

const reply = (key: string, value: unknown, o: { ttlMs?: number; ageMs?: number; tags?: string[]; source?: Source } = {}) =>
  GetResponse.fromPartial({
    value: Buffer.from(JSON.stringify(value)),
    key,
    source: o.source ?? Source.SOURCE_L1,
    ttlRemaining: { seconds: Math.floor((o.ttlMs ?? 60_000) / 1000), nanos: ((o.ttlMs ?? 60_000) % 1000) * 1e6 },
    age: { seconds: 0, nanos: (o.ageMs ?? 0) * 1e6 },
    tags: o.tags ?? [],
  });

/** Start the stream and deliver its first HEARTBEAT. */
async function started(h: ReturnType<typeof harness>, position = "p1") {
  const p = h.near.ready();
  assert.ok(p, "the first Get waits for the stream");
  h.last().send(T.TYPE_HEARTBEAT, "", position);
  await p;
  assert.equal(h.near.ready(), undefined);
}

describe("near cache (fake stream)", () => {
  test("the stream asks for every key (or the kinds), heartbeats at maxStaleness/4, clamped to 100 ms", async () => {
    const h = harness({ maxStalenessMs: 2000 });
    await started(h);
    const r = h.calls[0].req;
    assert.deepEqual(r.prefixes, [""]);
    assert.deepEqual(r.kinds, []);
    assert.equal(r.invalidatedOnly, false);
    assert.deepEqual(r.heartbeatInterval, { seconds: 0, nanos: 500e6 });
    assert.equal(r.resumeAfter, "");
    const k = harness({ maxStalenessMs: 200, kinds: ["routing.queue"], invalidatedOnly: true });
    await started(k);
    assert.deepEqual(k.calls[0].req.kinds, ["routing.queue"]);
    assert.deepEqual(k.calls[0].req.prefixes, []);
    assert.equal(k.calls[0].req.invalidatedOnly, true);
    assert.deepEqual(k.calls[0].req.heartbeatInterval, { seconds: 0, nanos: 100e6 });
    assert.equal(k.near.covers("routing.queue"), true);
    assert.equal(k.near.covers("user"), false);
    h.near.close();
    k.near.close();
  });

  test("a fill is served while heartbeats come, within TTL and max age; not once the stream is quiet", async () => {
    const h = harness();
    await started(h);
    assert.equal(h.near.fill("a", reply("K", { n: 1 }, { ttlMs: 5000, ageMs: 100 }), h.near.ticket()), true);
    const hit = h.near.lookup("a", undefined);
    assert.ok(hit);
    assert.deepEqual(hit.entry.value, { n: 1 });
    assert.ok(Object.isFrozen(hit.entry.value));
    h.advance(900);
    assert.ok(h.near.lookup("a", undefined), "900 ms after the last heartbeat");
    assert.equal(h.near.lookup("a", 900), undefined, "age 100 + 900 > max age 900");
    h.advance(100);
    assert.equal(h.near.lookup("a", undefined), undefined, "1000 ms after the last heartbeat: unhealthy");
    h.last().send(T.TYPE_HEARTBEAT, "", "p2");
    assert.ok(h.near.lookup("a", undefined));
    h.advance(900);
    h.last().send(T.TYPE_HEARTBEAT, "", "p3");
    h.advance(3100);
    h.last().send(T.TYPE_HEARTBEAT, "", "p4");
    assert.equal(h.near.lookup("a", undefined), undefined, "past its TTL");
    const s = h.near.stats();
    assert.equal(s.hits, 3);
    assert.equal(s.fills, 1);
    assert.equal(s.entries, 0);
    h.near.close();
  });

  test("STALE replies and replies without TTL are not kept", async () => {
    const h = harness();
    await started(h);
    assert.equal(h.near.fill("a", reply("K", 1, { source: Source.SOURCE_STALE }), h.near.ticket()), false);
    assert.equal(h.near.fill("b", reply("K", 1, { ttlMs: 0 }), h.near.ticket()), false);
    assert.equal(h.near.stats().entries, 0);
    h.near.close();
  });

  test("an event drops every request entry of its key", async () => {
    const h = harness();
    await started(h);
    h.near.fill("a", reply("K", 1), h.near.ticket());
    h.near.fill("b", reply("K", 1), h.near.ticket());
    h.near.fill("c", reply("L", 2), h.near.ticket());
    h.last().send(T.TYPE_INVALIDATED, "K", "p2");
    assert.equal(h.near.lookup("a", undefined), undefined);
    assert.equal(h.near.lookup("b", undefined), undefined);
    assert.ok(h.near.lookup("c", undefined));
    h.last().send(T.TYPE_UPDATED, "L", "p3");
    assert.equal(h.near.lookup("c", undefined), undefined);
    assert.equal(h.near.stats().events, 2);
    assert.equal(h.near.lastPosition, "p3");
    h.near.close();
  });

  test("race rule: an event for the key between send and reply voids the fill; others do not", async () => {
    const h = harness({ eventLogSize: 16 });
    await started(h);
    const t1 = h.near.ticket();
    h.last().send(T.TYPE_INVALIDATED, "other", "p2");
    assert.equal(h.near.fill("a", reply("K", 1), t1), true, "an event for another key");
    const t2 = h.near.ticket();
    h.last().send(T.TYPE_INVALIDATED, "K", "p3");
    assert.equal(h.near.fill("a", reply("K", 1), t2), false);
    const t3 = h.near.ticket();
    for (let i = 0; i < 40; i++) h.last().send(T.TYPE_INVALIDATED, `x${i}`, `q${i}`);
    assert.equal(h.near.fill("a", reply("K", 1), t3), false, "the log no longer reaches back");
    assert.equal(h.near.stats().rejectedFills, 2);
    h.near.close();
  });

  test("race rule: a local prefix or tag invalidation voids racing fills it covers", async () => {
    const h = harness();
    await started(h);
    const t1 = h.near.ticket();
    h.near.invalidateLocal({ prefixes: ["dev:routing."] });
    assert.equal(h.near.fill("a", reply("dev:routing.queue:1", 1), t1), false);
    assert.equal(h.near.fill("b", reply("dev:user:1", 1), t1), true);
    const t2 = h.near.ticket();
    h.near.invalidateLocal({ tags: ["queue:1"] });
    assert.equal(h.near.fill("c", reply("dev:x", 1, { tags: ["queue:1"] }), t2), false);
    h.near.close();
  });

  test("the client's own invalidate drops keys, prefixes and tags at once", async () => {
    const h = harness();
    await started(h);
    const tk = () => h.near.ticket();
    h.near.fill("a", reply("dev:routing.queue:1", 1, { tags: ["queue:1"] }), tk());
    h.near.fill("b", reply("dev:routing.queue:2", 1, { tags: ["queue:2"] }), tk());
    h.near.fill("c", reply("dev:user:1", 1, { tags: ["user:1"] }), tk());
    h.near.fill("d", reply("dev:user:2", 1), tk());
    h.near.invalidateLocal({ keys: ["dev:user:2"] });
    assert.equal(h.near.lookup("d", undefined), undefined);
    h.near.invalidateLocal({ tags: ["queue:1"] });
    assert.equal(h.near.lookup("a", undefined), undefined);
    assert.ok(h.near.lookup("b", undefined));
    h.near.invalidateLocal({ prefixes: ["dev:routing."] });
    assert.equal(h.near.lookup("b", undefined), undefined);
    assert.ok(h.near.lookup("c", undefined));
    assert.equal(h.near.stats().entries, 1);
    h.near.close();
  });

  test("RESET and LAGGED mid-stream flush everything and void fills in flight", async () => {
    for (const type of [T.TYPE_RESET, T.TYPE_LAGGED]) {
      const h = harness();
      await started(h);
      h.near.fill("a", reply("K", 1), h.near.ticket());
      const t = h.near.ticket();
      h.last().send(type, "", "p9");
      assert.equal(h.near.stats().entries, 0);
      assert.equal(h.near.stats().flushes, 1);
      assert.equal(h.near.fill("b", reply("M", 1), t), false);
      assert.equal(h.near.fill("b", reply("M", 1), h.near.ticket()), true);
      h.near.close();
    }
  });

  test("a break: no fill across it, reconnect resumes after the last position, a resume keeps the entries", async () => {
    const h = harness();
    await started(h, "p1");
    h.near.fill("a", reply("K", 1), h.near.ticket());
    h.near.fill("b", reply("L", 1), h.near.ticket());
    h.last().send(T.TYPE_HEARTBEAT, "", "p2");
    const t = h.near.ticket();
    const reconnected = once(h.near, "live");
    h.last().fail();
    assert.equal(h.near.ticket(), undefined, "no fill while down");
    assert.equal(h.near.fill("c", reply("M", 1), t), false);
    assert.ok(h.near.lookup("a", undefined), "within maxStaleness of the last message: still served");
    // the reconnect (1-4 ms backoff)
    for (let i = 0; i < 200 && h.calls.length < 2; i++) await new Promise((r) => setTimeout(r, 5));
    assert.equal(h.calls.length, 2);
    assert.equal(h.last().req.resumeAfter, "p2");
    h.last().send(T.TYPE_INVALIDATED, "K", "p3"); // replayed
    h.last().send(T.TYPE_HEARTBEAT, "", "p4");
    await reconnected;
    const s = h.near.stats();
    assert.equal(s.flushes, 0);
    assert.equal(s.resumes, 1);
    assert.equal(s.reconnects, 1);
    assert.equal(h.near.lookup("a", undefined), undefined, "dropped by the replayed event");
    assert.ok(h.near.lookup("b", undefined), "kept");
    h.near.close();
  });

  test("a reconnect the server cannot resume (RESET first) flushes; no near hit once maxStaleness passed while down", async () => {
    const h = harness();
    await started(h, "p1");
    h.near.fill("a", reply("K", 1), h.near.ticket());
    h.last().fail();
    h.advance(1000);
    assert.equal(h.near.lookup("a", undefined), undefined, "down for maxStaleness");
    for (let i = 0; i < 200 && h.calls.length < 2; i++) await new Promise((r) => setTimeout(r, 5));
    assert.equal(h.last().req.resumeAfter, "p1");
    h.last().send(T.TYPE_RESET, "", "r1");
    h.last().send(T.TYPE_HEARTBEAT, "", "r2");
    assert.equal(h.near.stats().flushes, 1);
    assert.equal(h.near.stats().entries, 0);
    h.near.close();
  });

  test("a reconnect to a server that never sent a HEARTBEAT (no resume contract) flushes", async () => {
    const h = harness();
    const p = h.near.ready()!;
    h.last().send(T.TYPE_INVALIDATED, "x", ""); // an old server: events, no heartbeats, no positions
    await p;
    assert.equal(h.near.fill("a", reply("K", 1), h.near.ticket()), true);
    h.last().fail();
    for (let i = 0; i < 200 && h.calls.length < 2; i++) await new Promise((r) => setTimeout(r, 5));
    assert.equal(h.last().req.resumeAfter, "");
    h.last().send(T.TYPE_INVALIDATED, "y", "");
    assert.equal(h.near.stats().flushes, 1);
    assert.equal(h.near.lookup("a", undefined), undefined);
    h.near.close();
  });

  test("byte bound: least recently used entries are evicted and counted", async () => {
    const h = harness({ maxBytes: 4096 });
    await started(h);
    const big = "x".repeat(900);
    for (let i = 0; i < 10; i++) {
      h.near.fill(`r${i}`, reply(`K${i}`, big), h.near.ticket());
      h.near.lookup("r0", undefined); // keep r0 recent
    }
    const s = h.near.stats();
    assert.ok(s.bytes <= 4096, String(s.bytes));
    assert.ok(s.evictions >= 5, String(s.evictions));
    assert.ok(h.near.lookup("r0", undefined), "the recently used entry stays");
    assert.equal(h.near.lookup("r1", undefined), undefined);
    h.last().send(T.TYPE_INVALIDATED, "K1", "p2"); // index of an evicted entry is gone: no throw
    h.near.close();
  });

  test("close stops the stream and no reconnect follows", async () => {
    const h = harness();
    await started(h);
    h.near.close();
    assert.equal(h.calls[0].cancelled, true);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(h.calls.length, 1);
  });

  test("request identity: params order does not matter, every field does", () => {
    const a = requestIdentity("k", { id: "1", params: { a: 1, b: "x" } });
    assert.equal(a, requestIdentity("k", { id: "1", params: { b: "x", a: "1" } }));
    assert.notEqual(a, requestIdentity("k", { id: "1", params: { a: 2, b: "x" } }));
    assert.notEqual(requestIdentity("k", { id: "1" }), requestIdentity("k", { id: "1", variant: "summary" }));
    assert.notEqual(requestIdentity("k", {}), requestIdentity("k", { body: { q: 1 } }));
    assert.equal(requestIdentity("k", { body: { q: 1 } }), requestIdentity("k", { body: '{"q":1}' }));
  });
});

// ---------------------------------------------------------------- fake server
let gets = 0;
const watches: WatchRequest[] = [];
const fake: CacheServer = {
  get(call, cb) {
    gets++;
    const r = call.request;
    cb(null, reply(`dev:${r.kind}:${r.id}`, { id: r.id, n: gets }, { tags: [`queue:${r.id}`], source: r.id === "stale" ? Source.SOURCE_STALE : Source.SOURCE_L1 }));
  },
  invalidate(_call, cb) {
    cb(null, { purged: 1 });
  },
  watch(call: ServerWritableStream<WatchRequest, PbWatchEvent>) {
    const r = call.request;
    watches.push(r);
    const ev = (type: T, key: string, position: string, sequence: number) =>
      PbWatchEvent.fromPartial({ type, key, position, sequence });
    call.sendMetadata(new Metadata());
    const mode = r.keys[0] ?? "near";
    if (mode === "resume" || mode === "reset") {
      if (r.resumeAfter === "") {
        call.write(ev(T.TYPE_HEARTBEAT, "", "p1", 1));
        call.write(ev(T.TYPE_INVALIDATED, "k1", "p2", 2));
        setTimeout(() => call.emit("error", { code: 14, details: "going away" }), 20);
        return;
      }
      if (mode === "resume") {
        call.write(ev(T.TYPE_INVALIDATED, "k2", "p3", 1));
        call.write(ev(T.TYPE_HEARTBEAT, "", "p3", 2));
      } else {
        call.write(ev(T.TYPE_RESET, "", "r1", 1));
        call.write(ev(T.TYPE_HEARTBEAT, "", "r1", 2));
      }
      call.write(ev(T.TYPE_INVALIDATED, "k3", "p4", 3));
    } else {
      // near: a heartbeat every 50 ms until cancelled
      let seq = 0;
      call.write(ev(T.TYPE_HEARTBEAT, "", `h${seq}`, ++seq));
      const t = setInterval(() => call.write(ev(T.TYPE_HEARTBEAT, "", `h${seq}`, ++seq)), 50);
      call.on("cancelled", () => clearInterval(t));
      call.on("close", () => clearInterval(t));
      return;
    }
    const t = setTimeout(() => call.end(), 5000);
    call.on("cancelled", () => clearTimeout(t));
  },
};

describe("near cache and Watch resume against a fake server", () => {
  let server: Server;
  let addr: string;
  before(async () => {
    server = new Server();
    server.addService(CacheService, fake);
    const port = await new Promise<number>((res, rej) =>
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
    );
    addr = `127.0.0.1:${port}`;
  });
  after(() => server.forceShutdown());

  test("near hit after the first Get (source NEAR, no call); forceRefresh and STALE go to the server", async () => {
    const c = new CacheClient(addr, { nearCache: { maxStalenessMs: 1000 }, defaultTimeoutMs: 5000 });
    try {
      const before = gets;
      const a = await c.get("routing.queue", { id: "q1" });
      assert.equal(a.source, "L1");
      const b = await c.get("routing.queue", { id: "q1", parse: (v) => v as { id: string } });
      assert.equal(b.source, "NEAR");
      assert.equal(b.value.id, "q1");
      assert.equal(b.key, a.key);
      assert.deepEqual(b.tags, ["queue:q1"]);
      assert.equal(gets - before, 1);
      const f = await c.get("routing.queue", { id: "q1", forceRefresh: true });
      assert.equal(f.source, "L1");
      assert.equal(gets - before, 2);
      const g = await c.get("routing.queue", { id: "q1" });
      assert.equal(g.source, "NEAR");
      assert.deepEqual(g.value, f.value, "force_refresh's reply refilled the entry");
      await c.get("routing.queue", { id: "stale" });
      assert.equal((await c.get("routing.queue", { id: "stale" })).source, "STALE");
      await c.invalidate({ tags: ["queue:q1"] });
      assert.equal((await c.get("routing.queue", { id: "q1" })).source, "L1");
      const s = c.nearCacheStats()!;
      assert.equal(s.hits, 2);
      assert.ok(s.healthy && s.connected);
      const w = watches[watches.length - 1];
      assert.deepEqual(w.prefixes, [""]);
    } finally {
      c.close();
    }
  });

  test("watch(): a resumed stream replays without RESYNC; HEARTBEATs hidden unless asked; positions exposed", async () => {
    const c = new CacheClient(addr, { reconnect: { sleep: async () => undefined } });
    try {
      const s = c.watch({ keys: ["resume"], timeoutMs: 5000 });
      const got: WatchEvent[] = [];
      for await (const ev of s) {
        got.push(ev);
        if (got.length === 3) break;
      }
      assert.deepEqual(got.map((e) => [e.type, e.key, e.position]), [["INVALIDATED", "k1", "p2"], ["INVALIDATED", "k2", "p3"], ["INVALIDATED", "k3", "p4"]]);
      assert.equal(watches[watches.length - 1].resumeAfter, "p2");
      assert.equal(s.resumes, 1);
      assert.equal(s.position, "p4");

      const r = c.watch({ keys: ["reset"], timeoutMs: 5000, heartbeats: true });
      const got2: WatchEvent[] = [];
      for await (const ev of r) {
        got2.push(ev);
        if (got2.length === 5) break;
      }
      assert.deepEqual(got2.map((e) => e.type), ["HEARTBEAT", "INVALIDATED", "RESYNC", "HEARTBEAT", "INVALIDATED"]);
      assert.match(got2[2].reason, /RESET/);
      assert.equal(r.resumes, 0);
    } finally {
      c.close();
    }
  });
});
