// Client behaviour against an in-process fake server: request encoding, result
// decoding and the error model (google.rpc details in grpc-status-details-bin).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Metadata, Server, ServerCredentials, status } from "@grpc/grpc-js";
import {
  CacheError,
  CacheClient,
  CancelledError,
  DeadlineExceededError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnavailableError,
  type WatchEvent,
} from "../src/index.js";
import { CacheServer, CacheService, GetResponse, Source, WatchEvent_Type } from "../src/gen/cxcache/v1/cache.js";
import { Any } from "../src/gen/google/protobuf/any.js";
import { ErrorInfo, RetryInfo } from "../src/gen/google/rpc/error_details.js";
import { Status } from "../src/gen/google/rpc/status.js";
import { badRequest, pack, richError } from "./helpers.js";



const fake: CacheServer = {
  get(call, cb) {
    const r = call.request;
    switch (r.kind) {
      case "echo": {
        const echo = {
          kind: r.kind,
          id: r.id,
          variant: r.variant,
          params: r.params,
          bodyJson: r.bodyJson,
          freshness: r.freshness ?? null,
        };
        cb(null, {
          value: Buffer.from(JSON.stringify(echo)),
          source: Source.SOURCE_UPSTREAM,
          key: "test:echo",
          age: { seconds: 1, nanos: 500_000_000 },
          ttlRemaining: { seconds: 30, nanos: 0 },
          tags: ["queue:1"],
          json: undefined,
        });
        return;
      }
      case "l1":
        cb(null, GetResponse.fromPartial({ value: Buffer.from("[1,2]"), source: Source.SOURCE_L1, key: "k" }));
        return;
      case "bad":
        cb(badRequest("unknown kind", [["kind", "unknown kind 'bad'"]]));
        return;
      case "quota":
        cb(
          richError(status.RESOURCE_EXHAUSTED, "upstream quota spent", [
            pack("google.rpc.RetryInfo", RetryInfo.encode({ retryDelay: { seconds: 7, nanos: 250_000_000 } }).finish()),
            pack("google.rpc.ErrorInfo", ErrorInfo.encode({ reason: "UPSTREAM_429", domain: "cxcache", metadata: {} }).finish()),
            pack("example.Unknown", Buffer.from([1, 2, 3])),
          ]),
        );
        return;
      case "down":
        cb(
          richError(status.UNAVAILABLE, "upstream failing", [
            pack("google.rpc.RetryInfo", RetryInfo.encode({ retryDelay: { seconds: 0, nanos: 500_000_000 } }).finish()),
          ]),
        );
        return;
      case "missing":
        cb({ code: status.NOT_FOUND, details: "no such queue" });
        return;
      case "server-timeout":
        cb({ code: status.CANCELLED, details: "Timeout expired" });
        return;
      case "slow":
        setTimeout(() => cb(null, GetResponse.fromPartial({})), 1500);
        return;
      default:
        cb({ code: status.UNIMPLEMENTED, details: "kind not faked" });
    }
  },
  invalidate(call, cb) {
    const r = call.request;
    cb(null, { purged: r.keys.length + 10 * r.prefixes.length + 100 * r.tags.length });
  },
  watch(call) {
    const r = call.request;
    if (r.kinds.includes("forbidden")) {
      call.emit("error", { code: status.PERMISSION_DENIED, details: "no" });
      return;
    }
    call.sendMetadata(new Metadata());
    let seq = 0;
    for (const key of r.keys) {
      call.write({
        type: WatchEvent_Type.TYPE_INVALIDATED,
        key,
        prefix: "",
        tag: "",
        kind: "routing.queue",
        reason: "test",
        time: new Date(Date.UTC(2026, 0, 2, 3, 4, 5)),
        sequence: ++seq,
        position: "",
      });
    }
    if (r.prefixes.includes("lag")) {
      call.write({ type: WatchEvent_Type.TYPE_LAGGED, key: "", prefix: "", tag: "", kind: "", reason: "", time: undefined, sequence: ++seq, position: "" });
    }
    if (r.prefixes.includes("hang")) {
      const t = setTimeout(() => call.end(), 3000);
      call.on("cancelled", () => clearTimeout(t));
      return;
    }
    call.end();
  },
};

describe("CacheClient against a fake server", () => {
  let server: Server;
  let client: CacheClient;
  let addr: string;

  before(async () => {
    server = new Server();
    server.addService(CacheService, fake);
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    addr = `127.0.0.1:${port}`;
    client = new CacheClient(addr, { defaultTimeoutMs: 5000 });
  });

  after(() => {
    client.close();
    server.forceShutdown();
  });

  test("get encodes the request and decodes the result", async () => {
    const r = await client.get("echo", {
      parse: (v) => v as Record<string, unknown>,
      id: "q1",
      variant: "summary",
      params: { pageSize: 25, expand: true },
      body: { a: [1, 2] },
      maxAgeMs: 2500,
      allowStale: true,
    });
    assert.equal(r.source, "UPSTREAM");
    assert.equal(r.key, "test:echo");
    assert.equal(r.ageMs, 1500);
    assert.equal(r.ttlRemainingMs, 30000);
    assert.deepEqual(r.tags, ["queue:1"]);
    assert.deepEqual(JSON.parse(r.raw.toString()), r.value);
    assert.deepEqual(r.value, {
      kind: "echo",
      id: "q1",
      variant: "summary",
      params: { pageSize: "25", expand: "true" },
      bodyJson: '{"a":[1,2]}',
      freshness: { maxAge: { seconds: 2, nanos: 500000000 }, allowStale: true, forceRefresh: false },
    });
  });

  test("get without freshness options sends none", async () => {
    const r = await client.get("echo", { body: '{"raw":true}', parse: (v) => v as { freshness: unknown; bodyJson: string } });
    assert.equal(r.value.freshness, null);
    assert.equal(r.value.bodyJson, '{"raw":true}');
  });

  test("non-object values and other sources", async () => {
    const r = await client.get("l1");
    assert.deepEqual(r.value, [1, 2]);
    assert.equal(r.source, "L1");
  });

  test("INVALID_ARGUMENT carries field violations", async () => {
    await assert.rejects(client.get("bad"), (e: unknown) => {
      assert.ok(e instanceof InvalidArgumentError && e instanceof CacheError);
      assert.equal(e.code, status.INVALID_ARGUMENT);
      assert.equal(e.codeName, "INVALID_ARGUMENT");
      assert.equal(e.details, "unknown kind");
      assert.deepEqual(e.fieldViolations, [{ field: "kind", description: "unknown kind 'bad'", reason: "" }]);
      assert.deepEqual(e.fieldErrors, { kind: ["unknown kind 'bad'"] });
      assert.equal(e.retryAfterMs, undefined);
      return true;
    });
  });

  test("RESOURCE_EXHAUSTED carries the retry delay and other details", async () => {
    await assert.rejects(client.get("quota"), (e: unknown) => {
      assert.ok(e instanceof ResourceExhaustedError);
      assert.equal(e.retryAfterMs, 7250);
      assert.deepEqual(
        e.errorDetails.map((d) => d.type),
        ["google.rpc.RetryInfo", "google.rpc.ErrorInfo", "example.Unknown"],
      );
      assert.equal((e.errorDetails[1].message as ErrorInfo).reason, "UPSTREAM_429");
      return true;
    });
  });

  test("UNAVAILABLE carries the retry delay", async () => {
    await assert.rejects(client.get("down"), (e: unknown) => e instanceof UnavailableError && e.retryAfterMs === 500);
  });

  test("plain status without details", async () => {
    await assert.rejects(client.get("missing"), (e: unknown) => {
      assert.ok(e instanceof NotFoundError);
      assert.deepEqual(e.errorDetails, []);
      assert.deepEqual(e.fieldViolations, []);
      return true;
    });
  });

  test("deadline", async () => {
    const t0 = Date.now();
    await assert.rejects(client.get("slow", { timeoutMs: 200 }), DeadlineExceededError);
    assert.ok(Date.now() - t0 < 1400);
  });

  test("a server-enforced deadline (tonic CANCELLED 'Timeout expired') is DEADLINE_EXCEEDED", async () => {
    await assert.rejects(client.get("server-timeout", { timeoutMs: 5000 }), DeadlineExceededError);
    const noDeadline = new CacheClient(addr);
    try {
      await assert.rejects(noDeadline.get("server-timeout"), (e: unknown) => e instanceof CancelledError);
    } finally {
      noDeadline.close();
    }
  });

  test("abort signal cancels a call", async () => {
    const ac = new AbortController();
    const p = client.get("slow", { signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    await assert.rejects(p, (e: unknown) => e instanceof CacheError && e.code === status.CANCELLED);
  });

  test("unreachable server is UNAVAILABLE", async () => {
    const c = new CacheClient("127.0.0.1:1", { defaultTimeoutMs: 2000 });
    try {
      await assert.rejects(c.get("echo"), UnavailableError);
    } finally {
      c.close();
    }
  });

  test("invalidate resolves to the purged count", async () => {
    assert.equal(await client.invalidate({ keys: ["a", "b"], prefixes: ["p:"], tags: ["t"], reason: "r" }), 112);
  });

  test("watch is an async iterator of events", async () => {
    const events: WatchEvent[] = [];
    for await (const ev of client.watch({ keys: ["k1", "k2"], prefixes: ["lag"], timeoutMs: 5000, reconnect: false })) events.push(ev);
    assert.deepEqual(
      events.map((e) => [e.type, e.key, e.sequence]),
      [
        ["INVALIDATED", "k1", 1],
        ["INVALIDATED", "k2", 2],
        ["LAGGED", "", 3],
      ],
    );
    assert.equal(events[0].kind, "routing.queue");
    assert.equal(events[0].reason, "test");
    assert.equal(events[0].time?.toISOString(), "2026-01-02T03:04:05.000Z");
    assert.equal(events[2].time, undefined);
  });

  test("watch refused by the server rejects waitReady and iteration", async () => {
    const s = client.watch({ kinds: ["forbidden"] });
    await assert.rejects(s.waitReady(5000), PermissionDeniedError);
    const s2 = client.watch({ kinds: ["forbidden"] });
    await assert.rejects(async () => {
      for await (const _ of s2) {
        /* nothing */
      }
    }, PermissionDeniedError);
  });

  test("watch cancel ends iteration quietly; leaving the loop cancels", async () => {
    const s = client.watch({ prefixes: ["hang"] });
    assert.equal(await s.waitReady(5000), true);
    setTimeout(() => s.cancel(), 50);
    const got: WatchEvent[] = [];
    for await (const ev of s) got.push(ev);
    assert.deepEqual(got, []);

    const s2 = client.watch({ keys: ["k"], prefixes: ["hang"] });
    for await (const ev of s2) {
      assert.equal(ev.key, "k");
      break;
    }
  });

  test("watch deadline", async () => {
    await assert.rejects(async () => {
      for await (const _ of client.watch({ prefixes: ["hang"], timeoutMs: 300 })) {
        /* nothing */
      }
    }, DeadlineExceededError);
  });
});
