// Live tests against the secure instances of scripts/live-server.sh --secure (clients/run-tests.sh
// starts them): TLS + API key, scopes, mutual TLS, plaintext against TLS.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { CacheClient, PermissionDeniedError, UnauthenticatedError, UnavailableError, type ClientOptions, type WatchEvent } from "../src/index.js";

const E = process.env;
const ADDR = E.CXCACHE_ADDR;

describe("live secure instances (TLS, API keys, mutual TLS)", { skip: !ADDR ? "needs CXCACHE_ADDR (clients/run-tests.sh)" : false }, () => {
  const clients: CacheClient[] = [];
  const make = (addr: string, o: ClientOptions) => {
    const c = new CacheClient(addr, { defaultTimeoutMs: 10_000, ...o });
    clients.push(c);
    return c;
  };
  let tlsAddr: string;
  let mtlsAddr: string;
  let ca: string;
  before(() => {
    for (const v of ["CXCACHE_TLS_ADDR", "CXCACHE_MTLS_ADDR", "CXCACHE_TLS_CA", "CXCACHE_TLS_CLIENT_CERT", "CXCACHE_TLS_CLIENT_KEY", "CXCACHE_API_KEY", "CXCACHE_ROUTING_KEY"]) {
      assert.ok(E[v], `${v} is not set: start the server with scripts/live-server.sh start --secure (clients/run-tests.sh does)`);
    }
    tlsAddr = E.CXCACHE_TLS_ADDR!;
    mtlsAddr = E.CXCACHE_MTLS_ADDR!;
    ca = E.CXCACHE_TLS_CA!;
  });
  after(() => {
    for (const c of clients) c.close();
  });

  test("TLS + API key: Get, Invalidate and Watch work", async () => {
    const c = make(tlsAddr, { tls: { caFile: ca }, apiKey: E.CXCACHE_API_KEY });
    const list = await c.get("routing.queues");
    assert.ok(list.key);
    const ids = (list.value as { entities: Array<{ id: string }> }).entities.map((e) => e.id);
    const q = await c.get("routing.queue", { id: ids[2 % ids.length] });
    const w = c.watch({ keys: [q.key], timeoutMs: 15_000 });
    try {
      assert.equal(await w.waitReady(10_000), true, "Watch over TLS with the key did not start");
      const got = (async () => {
        for await (const ev of w) if (ev.type === "INVALIDATED") return ev;
        return undefined;
      })();
      assert.ok((await c.invalidate({ keys: [q.key], reason: "node tls test" })) >= 1);
      const ev: WatchEvent | undefined = await got;
      assert.equal(ev?.key, q.key);
    } finally {
      w.cancel();
    }
  });

  test("TLS + API key: the near cache's Watch stream is authorized too (near hits)", async () => {
    const c = make(tlsAddr, { tls: { caFile: ca }, apiKey: E.CXCACHE_API_KEY, nearCache: { maxStalenessMs: 1000 } });
    const ids = ((await c.get("routing.queues")).value as { entities: Array<{ id: string }> }).entities.map((e) => e.id);
    let source = "";
    for (let i = 0; i < 5 && source !== "NEAR"; i++) source = (await c.get("routing.queue", { id: ids[3 % ids.length] })).source;
    assert.equal(source, "NEAR", JSON.stringify(c.nearCacheStats()));
    assert.ok(c.nearCacheStats()!.heartbeats >= 1);
  });

  test("no key: UnauthenticatedError", async () => {
    const c = make(tlsAddr, { tls: { caFile: ca } });
    await assert.rejects(c.get("routing.queues"), (e: unknown) => {
      assert.ok(e instanceof UnauthenticatedError, String(e));
      return true;
    });
    const w = c.watch({ prefixes: [""], reconnect: false });
    await assert.rejects(w.waitReady(10_000), UnauthenticatedError);
  });

  test("a wrong key: UnauthenticatedError", async () => {
    const c = make(tlsAddr, { tls: { caFile: ca }, apiKey: "not-a-key" });
    await assert.rejects(c.get("routing.queues"), UnauthenticatedError);
  });

  test("routing key: Get of kind user is PermissionDenied naming the scope", async () => {
    const c = make(tlsAddr, { tls: { caFile: ca }, apiKey: E.CXCACHE_ROUTING_KEY });
    assert.ok((await c.get("routing.queues")).key, "routing.* is allowed");
    await assert.rejects(c.get("user", { id: "00000000-0000-0000-0000-000000000000" }), (e: unknown) => {
      assert.ok(e instanceof PermissionDeniedError, String(e));
      assert.equal(e.scope, "get");
      assert.equal(e.caller, "routing");
      assert.match(e.message, /scope get for kind user/);
      return true;
    });
  });

  test("routing key: purging prefix dev:user is PermissionDenied", async () => {
    const c = make(tlsAddr, { tls: { caFile: ca }, apiKey: E.CXCACHE_ROUTING_KEY });
    await assert.rejects(c.invalidate({ prefixes: ["dev:user"], reason: "node scope test" }), (e: unknown) => {
      assert.ok(e instanceof PermissionDeniedError, String(e));
      assert.equal(e.scope, "invalidate_prefixes");
      assert.match(e.message, /dev:user/);
      return true;
    });
  });

  test("mutual TLS: a client certificate works without a key; without the certificate it fails", async () => {
    const ok = make(mtlsAddr, { tls: { caFile: ca, certFile: E.CXCACHE_TLS_CLIENT_CERT, keyFile: E.CXCACHE_TLS_CLIENT_KEY } });
    assert.ok((await ok.get("routing.queues")).key);
    const none = make(mtlsAddr, { tls: { caFile: ca }, retry: false, defaultTimeoutMs: 5000 });
    await assert.rejects(none.get("routing.queues"), (e: unknown) => {
      assert.ok(e instanceof UnavailableError, String(e));
      assert.match(e.message, /certificate required/);
      assert.match(e.hint ?? "", /client certificate/);
      return true;
    });
  });

  test("plaintext client against the TLS port fails with a clear error", async () => {
    const c = make(tlsAddr, { retry: false, defaultTimeoutMs: 5000 });
    await assert.rejects(c.get("routing.queues"), (e: unknown) => {
      assert.ok(e instanceof UnavailableError, String(e));
      assert.match(e.hint ?? "", /without TLS/);
      assert.match(e.message, /pass `tls/);
      return true;
    });
  });

  test("a certificate without its key is refused at construction", () => {
    assert.throws(() => new CacheClient(mtlsAddr, { tls: { caFile: ca, certFile: E.CXCACHE_TLS_CLIENT_CERT } }), /cert and key together/);
    assert.throws(() => new CacheClient(mtlsAddr, { tls: { caFile: "/nonexistent/ca.pem" } }), /cannot read/);
    assert.throws(() => new CacheClient(mtlsAddr, { apiKey: "two words" }), /apiKey/);
  });
});
