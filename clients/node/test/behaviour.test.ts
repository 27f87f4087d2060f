// Offline tests of the helping behaviours: retries (RetryInfo, backoff, bounds,
// opt-out), wait-for-ready, typed parse, the platform's error on CacheError,
// trace-context propagation and the reconnecting Watch. An in-process fake
// server is the transport; sleeps and jitter are injected.
import assert from "node:assert/strict";
import { AsyncLocalStorage } from "node:async_hooks";
import { after, before, describe, test } from "node:test";
import { Metadata, Server, ServerCredentials, ServerWritableStream, status } from "@grpc/grpc-js";
import * as otel from "@opentelemetry/api";
import {
  CacheClient,
  CancelledError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  UnavailableError,
  ValueParseError,
  backoffDelay,
  guard,
  type RetryOptions,
  type WatchEvent,
} from "../src/index.js";
import { CacheServer, CacheService, GetResponse, Source, WatchEvent_Type, WatchRequest, WatchEvent as PbWatchEvent } from "../src/gen/cxcache/v1/cache.js";
import { Any } from "../src/gen/google/protobuf/any.js";
import { ErrorInfo, RetryInfo } from "../src/gen/google/rpc/error_details.js";
import { Status } from "../src/gen/google/rpc/status.js";
import { badRequest, pack, richError } from "./helpers.js";

const retryInfo = (ms: number) =>
  pack("google.rpc.RetryInfo", RetryInfo.encode({ retryDelay: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 } }).finish());
const ok = (value: unknown, key = "k") =>
  GetResponse.fromPartial({ value: Buffer.from(JSON.stringify(value)), source: Source.SOURCE_STORE, key });

const calls = new Map<string, number>();
const count = (tok: string) => {
  const n = (calls.get(tok) ?? 0) + 1;
  calls.set(tok, n);
  return n;
};
const watchOpens = new Map<string, number>();

const fake: CacheServer = {
  get(call, cb) {
    const r = call.request;
    switch (r.kind) {
      case "flaky": {
        // id = token:failures:code:retryDelayMs (0: no RetryInfo)
        const [tok, failures, code, delay] = r.id.split(":");
        const n = count(tok);
        if (n <= Number(failures)) {
          cb(richError(Number(code), `attempt ${n} failed`, Number(delay) ? [retryInfo(Number(delay))] : []));
        } else {
          cb(null, ok({ attempts: n }));
        }
        return;
      }
      case "headers": {
        const md = call.metadata.getMap();
        cb(null, ok(Object.fromEntries(Object.entries(md).map(([k, v]) => [k, String(v)]))));
        return;
      }
      case "queue":
        count(`queue:${r.id}`);
        cb(null, ok({ id: r.id, name: "Support" }, `routing.queue:${r.id}`));
        return;
      case "not-json":
        cb(null, GetResponse.fromPartial({ value: Buffer.from("{nope"), key: "nj" }));
        return;
      case "upstream404":
        cb(
          richError(status.NOT_FOUND, "upstream 404", [
            pack(
              "google.rpc.ErrorInfo",
              ErrorInfo.encode({
                reason: "not.found",
                domain: "cxcache.upstream",
                metadata: { status: "404", message: "Queue 42 not found" },
              }).finish(),
            ),
          ]),
        );
        return;
      case "violations":
        cb(
          badRequest("bad request", [
            ["id", "required", "MISSING"],
            ["params.pageSize", "must be <= 500"],
            ["params.pageSize", "must be a number"],
          ]),
        );
        return;
      default:
        cb({ code: status.UNIMPLEMENTED, details: "kind not faked" });
    }
  },
  invalidate(_call, cb) {
    cb(null, { purged: 1 });
  },
  watch(call: ServerWritableStream<WatchRequest, PbWatchEvent>) {
    const r = call.request;
    const ev = (key: string, sequence: number): PbWatchEvent => ({
      type: WatchEvent_Type.TYPE_INVALIDATED, key, prefix: "", tag: "", kind: "routing.queue", reason: "t", time: undefined, sequence, position: "",
    });
    const [mode, tok] = (r.prefixes[0] ?? "").split(":");
    const n = (watchOpens.get(tok) ?? 0) + 1;
    watchOpens.set(tok, n);
    if (mode === "flap") {
      // 1st subscription: one event, then the stream breaks; later ones: one event, then stay open.
      call.sendMetadata(new Metadata());
      call.write(ev(`k${n}`, 1));
      if (n === 1) setTimeout(() => call.emit("error", { code: status.UNAVAILABLE, details: "server going away" }), 20);
      else {
        const t = setTimeout(() => call.end(), 5000);
        call.on("cancelled", () => clearTimeout(t));
      }
      return;
    }
    if (mode === "down") {
      call.emit("error", richError(status.UNAVAILABLE, "not yet", [retryInfo(1234)]));
      return;
    }
    call.end();
  },
};

function recorder(random = 0) {
  const delays: number[] = [];
  const opts: RetryOptions = { sleep: async (ms) => void delays.push(ms), random: () => random };
  return { delays, opts };
}

async function startServer(port = 0): Promise<{ server: Server; port: number }> {
  const server = new Server();
  server.addService(CacheService, fake);
  const p = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${port}`, ServerCredentials.createInsecure(), (err, got) => (err ? reject(err) : resolve(got))),
  );
  return { server, port: p };
}

describe("client behaviours", () => {
  let server: Server;
  let addr: string;
  let client: CacheClient;
  let tok = 0;
  const token = () => `t${++tok}`;

  before(async () => {
    const s = await startServer();
    server = s.server;
    addr = `127.0.0.1:${s.port}`;
    client = new CacheClient(addr, { defaultTimeoutMs: 10_000 });
  });
  after(() => {
    client.close();
    server.forceShutdown();
  });

  describe("retries", () => {
    test("UNAVAILABLE is retried, waiting what RetryInfo says", async () => {
      const { delays, opts } = recorder(0);
      const r = await client.get("flaky", { id: `${token()}:2:${status.UNAVAILABLE}:700`, retry: opts });
      assert.deepEqual(r.value, { attempts: 3 });
      assert.deepEqual(delays, [700, 700]);
    });

    test("RetryInfo delay gets at most 10% jitter on top, never less", async () => {
      const { delays, opts } = recorder(0.999);
      await client.get("flaky", { id: `${token()}:1:${status.RESOURCE_EXHAUSTED}:1000`, retry: opts });
      assert.equal(delays.length, 1);
      assert.ok(delays[0] >= 1000 && delays[0] <= 1100, String(delays[0]));
    });

    test("without RetryInfo: exponential backoff with jitter, bounded attempts, last error thrown", async () => {
      const { delays, opts } = recorder(0.5);
      const onRetry: number[] = [];
      await assert.rejects(
        client.get("flaky", {
          id: `${token()}:9:${status.UNAVAILABLE}:0`,
          retry: { ...opts, maxAttempts: 4, onRetry: (i) => onRetry.push(i.attempt) },
        }),
        (e: unknown) => {
          assert.ok(e instanceof UnavailableError);
          assert.equal(e.attempts, 4);
          assert.equal(e.details, "attempt 4 failed");
          return true;
        },
      );
      // base 100, 200, 400; equal jitter at random=0.5 -> 3/4 of the base
      assert.deepEqual(delays, [75, 150, 300]);
      assert.deepEqual(onRetry, [1, 2, 3]);
    });

    test("backoffDelay caps at maxBackoffMs and stays within [base/2, base]", () => {
      const p = { initialBackoffMs: 100, maxBackoffMs: 1000, multiplier: 2 };
      assert.equal(backoffDelay(10, p, () => 0), 500);
      assert.equal(backoffDelay(10, p, () => 0.9999), 1000);
      assert.equal(backoffDelay(1, p, () => 0), 50);
      assert.equal(backoffDelay(3, p, () => 0, 2500), 2500);
    });

    test("retries are on by default (RESOURCE_EXHAUSTED)", async () => {
      const c = new CacheClient(addr, { defaultTimeoutMs: 5000 });
      try {
        const r = await c.get("flaky", { id: `${token()}:1:${status.RESOURCE_EXHAUSTED}:50` });
        assert.deepEqual(r.value, { attempts: 2 });
      } finally {
        c.close();
      }
    });

    test("opt-out per call and per client", async () => {
      await assert.rejects(client.get("flaky", { id: `${token()}:1:${status.UNAVAILABLE}:0`, retry: false }), (e: unknown) => {
        assert.ok(e instanceof UnavailableError);
        assert.equal(e.attempts, 1);
        return true;
      });
      const c = new CacheClient(addr, { retry: false });
      try {
        await assert.rejects(c.get("flaky", { id: `${token()}:1:${status.UNAVAILABLE}:0` }), UnavailableError);
      } finally {
        c.close();
      }
    });

    test("other codes are not retried", async () => {
      const { delays, opts } = recorder();
      await assert.rejects(client.get("flaky", { id: `${token()}:1:${status.INVALID_ARGUMENT}:0`, retry: opts }), InvalidArgumentError);
      assert.deepEqual(delays, []);
    });

    test("no retry whose wait would end past the caller's deadline", async () => {
      const t0 = Date.now();
      const id = `${token()}:1:${status.RESOURCE_EXHAUSTED}:3000`;
      await assert.rejects(client.get("flaky", { id, timeoutMs: 1000 }), (e: unknown) => {
        assert.ok(e instanceof ResourceExhaustedError);
        assert.equal(e.retryAfterMs, 3000);
        assert.equal(e.attempts, 1);
        return true;
      });
      assert.ok(Date.now() - t0 < 900, "gave up at once");
    });

    test("maxElapsedMs bounds the total time", async () => {
      const { delays, opts } = recorder(0);
      await assert.rejects(
        client.get("flaky", { id: `${token()}:9:${status.UNAVAILABLE}:400`, retry: { ...opts, maxAttempts: 10, maxElapsedMs: 1000 } }),
        UnavailableError,
      );
      // the injected sleep does not pass time, so the budget counts the planned waits
      assert.ok(delays.length >= 1 && delays.length < 9, String(delays.length));
    });

    test("abort during the wait between attempts cancels", async () => {
      const ac = new AbortController();
      const p = client.get("flaky", { id: `${token()}:9:${status.UNAVAILABLE}:2000`, signal: ac.signal });
      setTimeout(() => ac.abort(), 100);
      const t0 = Date.now();
      await assert.rejects(p, CancelledError);
      assert.ok(Date.now() - t0 < 1500);
    });

    test("invalidate is retried too", async () => {
      const c = new CacheClient(addr);
      try {
        assert.equal(await c.invalidate({ keys: ["a"] }), 1);
      } finally {
        c.close();
      }
    });
  });

  describe("waitForReady", () => {
    test("fails fast without it, waits for the server with it", async () => {
      const probe = await startServer();
      const port = probe.port;
      probe.server.forceShutdown();
      const target = `127.0.0.1:${port}`;

      const fast = new CacheClient(target, { retry: false });
      try {
        const t0 = Date.now();
        await assert.rejects(fast.get("queue", { id: "1", timeoutMs: 3000 }), UnavailableError);
        assert.ok(Date.now() - t0 < 2500);
      } finally {
        fast.close();
      }

      const patient = new CacheClient(target, { retry: false, waitForReady: true });
      let late: Server | undefined;
      try {
        setTimeout(() => {
          void startServer(port).then((s) => (late = s.server));
        }, 300);
        const r = await patient.get("queue", { id: "7", timeoutMs: 8000 });
        assert.equal(r.key, "routing.queue:7");
      } finally {
        patient.close();
        late?.forceShutdown();
      }
    });
  });

  describe("typed parse", () => {
    interface Queue {
      id: string;
      name: string;
    }
    const isQueue = (v: unknown): v is Queue =>
      typeof v === "object" && v !== null && typeof (v as Queue).id === "string" && typeof (v as Queue).name === "string";

    test("parse types and checks the value", async () => {
      const r = await client.get("queue", { id: "q1", parse: guard(isQueue, "a queue") });
      const name: string = r.value.name; // typed without a cast
      assert.equal(name, "Support");
      const upper = await client.get("queue", { id: "q1", parse: (v) => (isQueue(v) ? v.name.toUpperCase() : "") });
      assert.equal(upper.value, "SUPPORT");
    });

    test("a rejected value is ValueParseError (with cause, key and raw), not retried", async () => {
      const before = calls.get("queue:q2") ?? 0;
      const isNumber = (v: unknown): v is number => typeof v === "number";
      await assert.rejects(client.get("queue", { id: "q2", parse: guard(isNumber, "a number") }), (e: unknown) => {
        assert.ok(e instanceof ValueParseError);
        assert.equal(e.kind, "queue");
        assert.equal(e.key, "routing.queue:q2");
        assert.deepEqual(JSON.parse(e.raw.toString()), { id: "q2", name: "Support" });
        assert.ok(e.cause instanceof TypeError);
        assert.match(e.message, /not a number/);
        return true;
      });
      assert.equal((calls.get("queue:q2") ?? 0) - before, 1);
    });

    test("bytes that are not JSON are ValueParseError", async () => {
      await assert.rejects(client.get("not-json"), ValueParseError);
    });

    test("without parse the value is unknown", async () => {
      const r = await client.get("queue", { id: "q3" });
      const v: unknown = r.value;
      assert.deepEqual(v, { id: "q3", name: "Support" });
    });
  });

  describe("error details", () => {
    test("the platform's error from ErrorInfo (domain cxcache.upstream)", async () => {
      await assert.rejects(client.get("upstream404"), (e: unknown) => {
        assert.ok(e instanceof NotFoundError);
        assert.equal(e.upstreamMessage, "Queue 42 not found");
        assert.equal(e.upstreamCode, "not.found");
        assert.equal(e.upstreamStatus, 404);
        assert.deepEqual(e.upstream, { code: "not.found", status: 404, message: "Queue 42 not found", metadata: { status: "404", message: "Queue 42 not found" } });
        assert.equal(e.errorInfo?.domain, "cxcache.upstream");
        return true;
      });
    });

    test("field violations are named and grouped by field", async () => {
      await assert.rejects(client.get("violations"), (e: unknown) => {
        assert.ok(e instanceof InvalidArgumentError);
        assert.equal(e.upstream, undefined);
        assert.equal(e.upstreamMessage, undefined);
        assert.deepEqual(e.fieldViolations[0], { field: "id", description: "required", reason: "MISSING" });
        assert.deepEqual(e.fieldErrors, { id: ["required"], "params.pageSize": ["must be <= 500", "must be a number"] });
        return true;
      });
    });
  });

  describe("trace context", () => {
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    const spanId = "00f067aa0ba902b7";
    class AlsContextManager implements otel.ContextManager {
      private als = new AsyncLocalStorage<otel.Context>();
      active(): otel.Context {
        return this.als.getStore() ?? otel.ROOT_CONTEXT;
      }
      with<A extends unknown[], F extends (...args: A) => ReturnType<F>>(ctx: otel.Context, fn: F, thisArg?: ThisParameterType<F>, ...args: A): ReturnType<F> {
        return this.als.run(ctx, () => fn.apply(thisArg, args));
      }
      bind<T>(_ctx: otel.Context, target: T): T {
        return target;
      }
      enable(): this {
        return this;
      }
      disable(): this {
        this.als.disable();
        return this;
      }
    }
    before(() => otel.context.setGlobalContextManager(new AlsContextManager()));
    after(() => {
      otel.context.disable();
      otel.propagation.disable();
    });
    const spanCtx = () => otel.trace.setSpanContext(otel.ROOT_CONTEXT, { traceId, spanId, traceFlags: otel.TraceFlags.SAMPLED });
    const headers = (c: CacheClient) =>
      c.get("headers", { parse: (v) => v as Record<string, string> }).then((r) => r.value);

    test("traceparent from the active span is sent (no propagator registered)", async () => {
      const h = await otel.context.with(spanCtx(), () => headers(client));
      assert.equal(h.traceparent, `00-${traceId}-${spanId}-01`);
    });

    test("nothing without an active span, or with tracing: false", async () => {
      assert.equal((await headers(client)).traceparent, undefined);
      const c = new CacheClient(addr, { tracing: false });
      try {
        assert.equal((await otel.context.with(spanCtx(), () => headers(c))).traceparent, undefined);
      } finally {
        c.close();
      }
    });

    test("a registered propagator is used", async () => {
      otel.propagation.setGlobalPropagator({
        inject: (ctx, carrier, setter) => {
          const sc = otel.trace.getSpanContext(ctx);
          if (sc) setter.set(carrier, "traceparent", `00-${sc.traceId}-${sc.spanId}-00`);
          setter.set(carrier, "baggage", "team=cx");
        },
        extract: (ctx) => ctx,
        fields: () => ["traceparent", "baggage"],
      });
      try {
        const h = await otel.context.with(spanCtx(), () => headers(client));
        assert.equal(h.traceparent, `00-${traceId}-${spanId}-00`);
        assert.equal(h.baggage, "team=cx");
      } finally {
        otel.propagation.disable();
      }
    });
  });

  describe("caller credential", () => {
    test("apiKey is sent as authorization: Bearer on every call; a function is called per call", async () => {
      const headersOf = (c: CacheClient) => c.get("headers", { parse: (v) => v as Record<string, string> }).then((r) => r.value);
      const c = new CacheClient(addr, { apiKey: "k-123", tracing: false });
      let n = 0;
      const r = new CacheClient(addr, { apiKey: () => `rot-${++n}`, tracing: false });
      try {
        assert.equal((await headersOf(c)).authorization, "Bearer k-123");
        assert.equal((await headersOf(r)).authorization, "Bearer rot-1");
        assert.equal((await headersOf(r)).authorization, "Bearer rot-2");
      } finally {
        c.close();
        r.close();
      }
      assert.throws(() => new CacheClient(addr, { apiKey: "" }), /apiKey/);
    });
  });

  describe("reconnecting watch", () => {
    test("a broken stream is resubscribed and a RESYNC event marks the gap", async () => {
      const delays: number[] = [];
      const s = client.watch({
        prefixes: [`flap:${token()}`],
        timeoutMs: 10_000,
        reconnect: { sleep: async (ms) => void delays.push(ms), random: () => 0 },
      });
      assert.equal(await s.waitReady(5000), true);
      const got: WatchEvent[] = [];
      for await (const ev of s) {
        got.push(ev);
        if (got.length === 3) break;
      }
      assert.deepEqual(got.map((e) => [e.type, e.key]), [["INVALIDATED", "k1"], ["RESYNC", ""], ["INVALIDATED", "k2"]]);
      assert.match(got[1].reason, /UNAVAILABLE: server going away/);
      assert.equal(s.reconnects, 1);
      assert.deepEqual(delays, [125]); // 250 ms base, equal jitter at random=0
    });

    test("a stream the server ends (shutdown) is resubscribed too", async () => {
      const tk = token();
      const s = client.watch({ prefixes: [`end:${tk}`], reconnect: { sleep: async () => undefined, maxAttempts: 2 } });
      await assert.rejects(async () => {
        for await (const _ of s) {
          /* none */
        }
      }, (e: unknown) => e instanceof UnavailableError && /ended the stream/.test(e.message));
      assert.equal(watchOpens.get(tk), 3);
    });

    test("reconnect: false ends the iteration with the error", async () => {
      await assert.rejects(async () => {
        for await (const _ of client.watch({ prefixes: [`flap:${token()}`], reconnect: false })) {
          /* k1, then the break */
        }
      }, UnavailableError);
    });

    test("gives up after maxAttempts, honouring RetryInfo; waitReady rejects", async () => {
      const delays: number[] = [];
      const tk = token();
      const s = client.watch({ prefixes: [`down:${tk}`], reconnect: { maxAttempts: 2, sleep: async (ms) => void delays.push(ms), random: () => 0 } });
      await assert.rejects(s.waitReady(5000), (e: unknown) => {
        assert.ok(e instanceof UnavailableError);
        assert.equal(e.attempts, 3);
        return true;
      });
      assert.equal(watchOpens.get(tk), 3);
      assert.deepEqual(delays, [1234, 1234]);
    });

    test("cancel during the reconnect wait ends the stream quietly", async () => {
      const s = client.watch({ prefixes: [`down:${token()}`] }); // real sleep of ~1.2 s
      setTimeout(() => s.cancel(), 100);
      const got: WatchEvent[] = [];
      for await (const ev of s) got.push(ev);
      assert.deepEqual(got, []);
      assert.equal(await s.waitReady(100), false);
    });
  });
});
