import { readFileSync } from "node:fs";
import {
  CallOptions,
  ChannelCredentials,
  ClientOptions as GrpcClientOptions,
  ClientReadableStream,
  credentials as grpcCredentials,
  Metadata,
  ServiceError,
  status as Status,
} from "@grpc/grpc-js";
import {
  CacheClient as GeneratedCacheClient,
  GetRequest,
  GetResponse,
  Source as PbSource,
  sourceToJSON,
  WatchEvent as PbWatchEvent,
  WatchEvent_Type,
  watchEvent_TypeToJSON,
  WatchRequest,
  ValueFormat,
} from "./gen/cxcache/v1/cache.js";
import { Duration } from "./gen/google/protobuf/duration.js";
import { CacheError, CancelledError, toCacheError, UnavailableError, ValueParseError } from "./errors.js";
import { NearCache, type NearCacheOptions, type NearCacheStats } from "./near.js";
import { traceHeaders, traceHeadersSync, warmTracing } from "./tracing.js";

/**
 * Where a Get reply's value came from (cxcache.v1.Source without the prefix), plus NEAR: served
 * by this client's near cache without a call (client-side only; the proto has no NEAR).
 */
export type Source = "UNSPECIFIED" | "L1" | "STORE" | "UPSTREAM" | "STALE" | "COALESCED" | "REVALIDATED" | "NEAR";

/**
 * cxcache.v1.WatchEvent.Type without the prefix, plus RESYNC: emitted by this client after it
 * reconnected without a resume. HEARTBEAT is only yielded with `WatchOptions.heartbeats`.
 */
export type EventType = "UNSPECIFIED" | "INVALIDATED" | "UPDATED" | "LAGGED" | "HEARTBEAT" | "RESET" | "RESYNC";

/** Retry policy for unary calls (get, invalidate). */
export interface RetryOptions {
  /** Total attempts including the first (default 4; 1 disables retrying). */
  maxAttempts?: number;
  /** Backoff before the 2nd attempt (default 100 ms); it grows by `multiplier` per attempt. */
  initialBackoffMs?: number;
  /** Cap on one backoff (default 5000 ms). */
  maxBackoffMs?: number;
  /** Backoff growth factor (default 2). */
  multiplier?: number;
  /**
   * Budget for the whole call, attempts and waits together (default 30000 ms). The
   * call's deadline (timeoutMs) bounds it too: no retry is started, nor a wait
   * begun, that cannot finish before the deadline.
   */
  maxElapsedMs?: number;
  /** Status codes that are retried (default UNAVAILABLE and RESOURCE_EXHAUSTED). */
  retryOn?: Status[];
  /** Called before each wait: the failed attempt's number, its error and the wait. */
  onRetry?: (info: { attempt: number; error: CacheError; delayMs: number }) => void;
  /** Test hook: how to wait (default setTimeout, cut short by the call's signal). */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** Test hook: a number in [0, 1) for jitter (default Math.random). */
  random?: () => number;
}

/** How a Watch reconnects after its stream breaks. */
export interface ReconnectOptions {
  /** Reconnect attempts in a row, without a successful one between, before giving up (default Infinity; 0 = never). */
  maxAttempts?: number;
  /** First backoff (default 250 ms), growing by `multiplier` per consecutive failure. */
  initialBackoffMs?: number;
  /** Cap on one backoff (default 10000 ms). */
  maxBackoffMs?: number;
  /** Backoff growth factor (default 2). */
  multiplier?: number;
  /** Status codes that trigger a reconnect (default UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED, INTERNAL). */
  retryOn?: Status[];
  /** Test hook: how to wait (default setTimeout, cut short by cancel()). */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** Test hook: a number in [0, 1) for jitter (default Math.random). */
  random?: () => number;
}

/** TLS for the channel. PEM contents as Buffer/string, or file paths (`*File`). */
export interface TlsOptions {
  /** CA certificate(s) that signed the server's certificate (default: the system roots). */
  ca?: Buffer | string;
  caFile?: string;
  /** Client certificate chain for mutual TLS (needs `key`). */
  cert?: Buffer | string;
  certFile?: string;
  /** Private key of the client certificate. */
  key?: Buffer | string;
  keyFile?: string;
  /** Name to check the server certificate against instead of the target's host. */
  serverName?: string;
}

export interface ClientOptions {
  /**
   * Channel credentials (grpc-js `credentials.createSsl(...)` etc.); plaintext (insecure) when
   * neither this nor `tls` is given.
   */
  credentials?: ChannelCredentials;
  /** TLS (and mutual TLS) for the channel; ignored when `credentials` is given. `true`: TLS with the system roots. */
  tls?: TlsOptions | true;
  /**
   * The caller's credential (API key or bearer token), sent as `authorization: Bearer <key>` on
   * every call, Watch included. A function is called for each call (key rotation).
   */
  apiKey?: string | (() => string);
  /** Opt-in near cache kept coherent by one Watch stream (see NearCacheOptions); `true` for the defaults. */
  nearCache?: NearCacheOptions | true;
  /** Options passed to the grpc-js channel, e.g. `{ "grpc.keepalive_time_ms": 30000 }`. */
  channelOptions?: Partial<GrpcClientOptions>;
  /** Deadline applied to get/invalidate calls without their own timeoutMs. */
  defaultTimeoutMs?: number;
  /** Metadata sent with every call. */
  metadata?: Record<string, string>;
  /** Retry policy for get/invalidate (on by default; `false` turns it off). */
  retry?: RetryOptions | false;
  /** Reconnect policy for watches (on by default; `false` turns it off). */
  reconnect?: ReconnectOptions | false;
  /**
   * Wait for the channel to connect instead of failing fast with UNAVAILABLE while
   * it is connecting or in backoff (gRPC wait-for-ready); bounded by the deadline.
   * Default false. Per-call `waitForReady` overrides it.
   */
  waitForReady?: boolean;
  /**
   * Inject W3C trace context (`traceparent`, plus whatever the registered
   * propagator writes) into each call's metadata when `@opentelemetry/api` is
   * installed (default true; without the package nothing happens).
   */
  tracing?: boolean;
}

export interface CallSettings {
  /** Per-call deadline in milliseconds; covers all retries of the call. */
  timeoutMs?: number;
  /** Aborting cancels the call, and any wait between retries (it then rejects with CancelledError). */
  signal?: AbortSignal;
  /** Per-call retry policy, merged over the client's; `false` turns retrying off for this call. */
  retry?: RetryOptions | false;
  /** Per-call wait-for-ready (see ClientOptions.waitForReady). */
  waitForReady?: boolean;
  /** Extra metadata for this call (added to ClientOptions.metadata). */
  metadata?: Record<string, string>;
}

export interface GetOptions<T = unknown> extends CallSettings {
  /** Entity id, required when the kind's path has an {id}. */
  id?: string;
  /** Named projection declared by the kind. */
  variant?: string;
  /** Query parameters (values are sent as strings). */
  params?: Record<string, string | number | boolean>;
  /**
   * Request body for query-style kinds (POST queries): objects are JSON-encoded,
   * strings and Buffers sent as-is (they must be JSON).
   */
  body?: unknown;
  /** Accept a cached value only if at most this old. */
  maxAgeMs?: number;
  /** Accept a stale value when a fresh one cannot be had. */
  allowStale?: boolean;
  /** Skip the cache and fetch upstream. */
  forceRefresh?: boolean;
  /**
   * Turns the decoded JSON into a T, throwing if it is not one (a schema
   * validator's parse, or `guard(isT)`); the call then rejects with
   * ValueParseError. Without it the value is `unknown`.
   */
  parse?: (value: unknown) => T;
}

export interface GetResult<T = unknown> {
  /** The parsed JSON value (the output of `parse` when given, else `unknown`). */
  value: T;
  /** Canonical JSON bytes as sent by the server. */
  raw: Buffer;
  source: Source;
  /** Cache key, usable with invalidate and watch. */
  key: string;
  ageMs: number;
  ttlRemainingMs: number;
  tags: string[];
}

export interface InvalidateOptions extends CallSettings {
  keys?: string[];
  prefixes?: string[];
  tags?: string[];
  reason?: string;
}

export interface WatchOptions {
  /**
   * Start after this position (a WatchEvent.position): missed events are replayed, or the
   * stream starts with a RESET event when the server cannot resume from it.
   */
  resumeAfter?: string;
  /** Only INVALIDATED events (no UPDATED). */
  invalidatedOnly?: boolean;
  /** Ask the server for HEARTBEAT events at this interval (server default when unset). */
  heartbeatIntervalMs?: number;
  /** Yield HEARTBEAT events too (default false: they only advance `position`). */
  heartbeats?: boolean;
  keys?: string[];
  prefixes?: string[];
  kinds?: string[];
  /** Tags such as `queue:<id>`: events for every key carrying one. */
  tags?: string[];
  /** Deadline for the whole subscription, reconnects included. */
  timeoutMs?: number;
  /** Aborting cancels the subscription (like cancel()). */
  signal?: AbortSignal;
  /** Reconnect policy, merged over the client's; `false` ends the stream on the first break. */
  reconnect?: ReconnectOptions | false;
  /** Wait-for-ready for each (re)connect (see ClientOptions.waitForReady). */
  waitForReady?: boolean;
  /** Extra metadata for this subscription. */
  metadata?: Record<string, string>;
}

export interface WatchEvent {
  /**
   * INVALIDATED / UPDATED: the key changed. LAGGED (from the server) and RESYNC (from
   * this client, after it reconnected a broken stream): events may have been missed,
   * so treat everything the subscription covers as possibly stale.
   */
  type: EventType;
  key: string;
  prefix: string;
  tag: string;
  kind: string;
  reason: string;
  time: Date | undefined;
  sequence: number;
  /** Where the event stands in the server's log: pass it as `resumeAfter` ("" for RESYNC). */
  position: string;
}

/** Turn a type guard into a `parse` function for get(): throws TypeError when the guard rejects. */
export function guard<T>(isT: (value: unknown) => value is T, what = "the expected type"): (value: unknown) => T {
  return (value: unknown): T => {
    if (!isT(value)) throw new TypeError(`value is not ${what}`);
    return value;
  };
}

const DEFAULT_RETRY = {
  maxAttempts: 4,
  initialBackoffMs: 100,
  maxBackoffMs: 5000,
  multiplier: 2,
  maxElapsedMs: 30_000,
  retryOn: [Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED] as Status[],
};

const DEFAULT_RECONNECT = {
  maxAttempts: Infinity,
  initialBackoffMs: 250,
  maxBackoffMs: 10_000,
  multiplier: 2,
  retryOn: [Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED, Status.ABORTED, Status.INTERNAL] as Status[],
};

/** setTimeout as a promise; rejects with CancelledError when the signal aborts. */
export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) {
      reject(new CancelledError(Status.CANCELLED, "aborted"));
      return;
    }
    const onAbort = () => {
      clearTimeout(t);
      reject(new CancelledError(Status.CANCELLED, "aborted while waiting to retry"));
    };
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * The wait before retry number `failures` (1 = after the first failure):
 * exponential backoff with "equal jitter" (half fixed, half random), or the
 * server's RetryInfo delay when it sent one (never shorter, plus up to 10% jitter).
 */
export function backoffDelay(
  failures: number,
  p: { initialBackoffMs: number; maxBackoffMs: number; multiplier: number },
  random: () => number,
  serverDelayMs?: number,
): number {
  if (serverDelayMs !== undefined) return Math.round(serverDelayMs * (1 + 0.1 * random()));
  const base = Math.min(p.maxBackoffMs, p.initialBackoffMs * Math.pow(p.multiplier, failures - 1));
  return Math.round(base / 2 + (base / 2) * random());
}

function durationMs(d: Duration | undefined): number {
  return d ? d.seconds * 1000 + d.nanos / 1e6 : 0;
}

function toDuration(ms: number): Duration {
  if (!(ms >= 0)) throw new RangeError("durations must be non-negative numbers");
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: Math.round((ms - seconds * 1000) * 1e6) };
}

function stripPrefix(name: string, prefix: string): string {
  return name.startsWith(prefix) ? name.slice(prefix.length) : "UNSPECIFIED";
}

/**
 * Decode a GetResponse. The value is the decoded JSON passed through `parse` when
 * given; JSON or parse failures throw ValueParseError.
 */
export function toGetResult<T = unknown>(resp: GetResponse, kind = "", parse?: (value: unknown) => T): GetResult<T> {
  const raw = Buffer.from(resp.value);
  let json: unknown;
  try {
    json = raw.length ? JSON.parse(raw.toString("utf8")) : null;
  } catch (e) {
    throw new ValueParseError(`${kind}: the value is not JSON`, kind, resp.key, raw, e);
  }
  let value: T;
  if (parse) {
    try {
      value = parse(json);
    } catch (e) {
      throw new ValueParseError(`${kind}: ${(e as Error)?.message ?? String(e)}`, kind, resp.key, raw, e);
    }
  } else {
    value = json as T; // T defaults to unknown: get() offers no other T without parse
  }
  return {
    value,
    raw,
    source: stripPrefix(sourceToJSON(resp.source), "SOURCE_") as Source,
    key: resp.key,
    ageMs: durationMs(resp.age),
    ttlRemainingMs: durationMs(resp.ttlRemaining),
    tags: resp.tags,
  };
}

export function toWatchEvent(ev: PbWatchEvent): WatchEvent {
  return {
    type: stripPrefix(watchEvent_TypeToJSON(ev.type), "TYPE_") as EventType,
    key: ev.key,
    prefix: ev.prefix,
    tag: ev.tag,
    kind: ev.kind,
    reason: ev.reason,
    time: ev.time,
    sequence: ev.sequence,
    position: ev.position,
  };
}

export function buildGetRequest(kind: string, o: GetOptions = {}): GetRequest {
  const params: Record<string, string> = {};
  for (const [k, v] of Object.entries(o.params ?? {})) params[k] = String(v);
  const body = o.body !== undefined && o.body !== null ? bodyJson(o.body) : "";
  const wantsFreshness = o.maxAgeMs !== undefined || !!o.allowStale || !!o.forceRefresh;
  return {
    kind,
    id: o.id ?? "",
    variant: o.variant ?? "",
    params,
    bodyJson: body,
    freshness: wantsFreshness
      ? {
          maxAge: o.maxAgeMs !== undefined ? toDuration(o.maxAgeMs) : undefined,
          allowStale: !!o.allowStale,
          forceRefresh: !!o.forceRefresh,
        }
      : undefined,
    // The client always reads canonical bytes (and parses them itself).
    valueFormat: ValueFormat.VALUE_FORMAT_UNSPECIFIED,
  };
}

type ReconnectPolicy = typeof DEFAULT_RECONNECT & Pick<ReconnectOptions, "sleep" | "random">;

const HIGH_WATER = 256;

/**
 * One Watch subscription: an async iterable of events. `cancel()` (or leaving a
 * `for await` loop early) ends it; iteration then finishes without an error.
 *
 * When the stream breaks with a retryable status (UNAVAILABLE etc., see
 * ReconnectOptions), or the server ends it (it does so when shutting down), it resubscribes by itself with exponential backoff + jitter
 * (honouring RetryInfo), resuming after the last position received. When the server
 * resumes it (it has sent HEARTBEATs, and the new stream does not start with RESET) the
 * missed events are replayed and nothing else is yielded; otherwise, once the new
 * subscription is accepted, it yields a `RESYNC` event, because events may have been
 * missed in the gap. A stream that
 * cannot be re-established (attempts spent, deadline, non-retryable status) throws
 * the last CacheError from the iteration.
 */
export class WatchStream implements AsyncIterable<WatchEvent> {
  private call: ClientReadableStream<PbWatchEvent> | undefined;
  private queue: WatchEvent[] = [];
  private failure: CacheError | undefined;
  private finished = false;
  private cancelled = false;
  private isReady = false;
  private everReady = false;
  private failures = 0;
  private lastError: CacheError | undefined;
  private readonly sleepAbort = new AbortController();
  private waiters: Array<() => void> = [];
  private lastPosition: string;
  private sawHeartbeat = false;
  /** How many times the stream was re-established. */
  reconnects = 0;
  /** Of those, how many the server resumed (missed events replayed, no RESYNC). */
  resumes = 0;

  /** @internal use CacheClient.watch() */
  constructor(
    private readonly open: (resumeAfter: string) => ClientReadableStream<PbWatchEvent>,
    private readonly hadDeadline = false,
    private readonly policy: ReconnectPolicy | undefined = undefined,
    private readonly deadline: number | undefined = undefined,
    resumeAfter = "",
    private readonly heartbeats = false,
  ) {
    this.lastPosition = resumeAfter;
    this.attach(open(resumeAfter), resumeAfter !== "");
  }

  /** The position of the last message received (HEARTBEATs included): resume a later watch() after it. */
  get position(): string {
    return this.lastPosition;
  }

  /** True while the current subscription is accepted by the server (the ready signal; see waitReady). */
  get ready(): boolean {
    return this.isReady;
  }

  private attach(call: ClientReadableStream<PbWatchEvent>, resumeSent = false): void {
    this.call = call;
    let settled = false;
    let accepted = false;
    // A reconnect the server may resume: the first message tells (RESET: it could not).
    const reconnecting = this.everReady;
    let judging = reconnecting && resumeSent && this.sawHeartbeat;
    // The subscription counts as accepted with its first event, or one turn after the
    // headers (letting a status that came with them, a trailers-only refusal, land first).
    const accept = () => {
      if (accepted || this.call !== call || settled || this.cancelled) return;
      accepted = true;
      this.isReady = true;
      this.failures = 0;
      if (this.everReady) this.reconnects++;
      if (this.everReady && !judging) {
        this.queue.push(this.resync());
      }
      this.everReady = true;
      this.wake();
    };
    call.on("metadata", () => setImmediate(accept));
    call.on("data", (ev: PbWatchEvent) => {
      if (this.call !== call || this.cancelled) return;
      accept();
      if (ev.position !== "") this.lastPosition = ev.position;
      if (judging) {
        judging = false;
        if (ev.type === WatchEvent_Type.TYPE_RESET) {
          this.queue.push(this.resync("the server could not resume the stream (RESET)"));
          this.wake();
          return;
        }
        this.resumes++;
      }
      if (ev.type === WatchEvent_Type.TYPE_HEARTBEAT) {
        this.sawHeartbeat = true;
        if (!this.heartbeats) return;
      }
      this.queue.push(toWatchEvent(ev));
      if (this.queue.length >= HIGH_WATER) call.pause();
      this.wake();
    });
    call.on("error", (err: ServiceError) => {
      if (settled) return;
      settled = true;
      this.ended(call, err);
    });
    call.on("status", () => {
      if (settled) return;
      settled = true;
      this.ended(call, undefined);
    });
  }

  private resync(why?: string): WatchEvent {
    return {
      type: "RESYNC",
      key: "",
      prefix: "",
      tag: "",
      kind: "",
      reason: why ?? `reconnected after ${this.lastError?.message ?? "a broken stream"}`,
      time: new Date(),
      sequence: 0,
      position: "",
    };
  }

  private ended(call: ClientReadableStream<PbWatchEvent>, err: ServiceError | undefined): void {
    if (this.call !== call) return;
    this.isReady = false;
    const p = this.policy;
    if (this.cancelled || (!err && !p)) {
      this.finished = true;
      this.wake();
      return;
    }
    // A Watch has no end: a server that ends it with OK is going away (tonic does so on
    // shutdown), so a reconnecting stream treats that as a break too.
    const e = err ? toCacheError(err, this.hadDeadline) : new UnavailableError(Status.UNAVAILABLE, "the server ended the stream");
    if (p && (!err || p.retryOn.includes(e.code)) && this.failures < p.maxAttempts) {
      this.failures++;
      const delay = backoffDelay(this.failures, p, p.random ?? Math.random, e.retryAfterMs);
      if (this.deadline === undefined || Date.now() + delay < this.deadline) {
        this.lastError = e;
        (p.sleep ?? abortableSleep)(delay, this.sleepAbort.signal).then(
          () => {
            if (!this.cancelled) this.attach(this.open(this.lastPosition), this.lastPosition !== "");
          },
          () => {
            /* cancelled while waiting */
          },
        );
        return;
      }
    }
    e.attempts = this.failures + 1;
    this.failure = e;
    this.finished = true;
    this.wake();
  }

  private wake(): void {
    setImmediate(() => {
      const ws = this.waiters;
      this.waiters = [];
      for (const w of ws) w();
    });
  }

  /**
   * The Watch-ready signal: resolves true once the server has accepted the
   * subscription (response headers received; while reconnecting, once it is
   * accepted again), false on timeout, cancel or a stream that ended; rejects with
   * the CacheError when the server refused it (e.g. UnimplementedError,
   * InvalidArgumentError) or reconnecting gave up.
   */
  waitReady(timeoutMs?: number): Promise<boolean> {
    return new Promise<boolean>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const check = (): boolean => {
        if (this.failure) reject(this.failure);
        else if (this.isReady) resolve(true);
        else if (this.cancelled || this.finished) resolve(false);
        else return false;
        if (timer) clearTimeout(timer);
        return true;
      };
      const wait = () => {
        if (!check()) this.waiters.push(wait);
      };
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== wait);
          resolve(false);
        }, timeoutMs);
      }
      setImmediate(wait);
    });
  }

  cancel(): void {
    if (!this.cancelled) {
      this.cancelled = true;
      this.finished = true;
      this.isReady = false;
      this.queue = [];
      this.sleepAbort.abort();
      this.call?.cancel();
      this.wake();
    }
  }

  async *[Symbol.asyncIterator](): AsyncIterator<WatchEvent> {
    try {
      for (;;) {
        const ev = this.queue.shift();
        if (ev) {
          if (this.queue.length < HIGH_WATER / 2 && this.call?.isPaused()) this.call.resume();
          yield ev;
          continue;
        }
        if (this.failure) throw this.failure;
        if (this.finished) return;
        await new Promise<void>((r) => this.waiters.push(r));
      }
    } finally {
      if (!this.finished) this.cancel();
    }
  }
}

type UnaryMethod<Req, Res> = (
  req: Req,
  md: Metadata,
  opts: Partial<CallOptions>,
  cb: (err: ServiceError | null, res: Res) => void,
) => { cancel(): void };

/**
 * Promise-based client for cxcache.v1.Cache. Failed calls reject with a
 * CacheError subclass carrying field violations, the retry delay and the
 * platform's error from the google.rpc status details. get/invalidate retry
 * UNAVAILABLE and RESOURCE_EXHAUSTED (see RetryOptions); watches reconnect.
 */
export class CacheClient {
  private readonly stub: GeneratedCacheClient;
  private readonly defaultTimeoutMs: number | undefined;
  private readonly baseMetadata: Record<string, string>;
  private readonly retry: RetryOptions | false;
  private readonly reconnect: ReconnectOptions | false;
  private readonly waitForReady: boolean;
  private readonly tracing: boolean;
  private readonly apiKey: string | (() => string) | undefined;
  private readonly plaintext: boolean;
  private readonly near: NearCache | undefined;

  constructor(target = "127.0.0.1:50051", options: ClientOptions = {}) {
    const channelOptions: Partial<GrpcClientOptions> = { ...(options.channelOptions ?? {}) };
    let creds = options.credentials;
    if (!creds && options.tls) {
      creds = tlsCredentials(options.tls === true ? {} : options.tls);
      if (options.tls !== true && options.tls.serverName) channelOptions["grpc.ssl_target_name_override"] = options.tls.serverName;
    }
    this.plaintext = !creds;
    this.stub = new GeneratedCacheClient(target, creds ?? grpcCredentials.createInsecure(), channelOptions);
    this.apiKey = options.apiKey;
    if (typeof this.apiKey === "string") checkApiKey(this.apiKey);
    this.defaultTimeoutMs = options.defaultTimeoutMs;
    this.baseMetadata = options.metadata ?? {};
    this.retry = options.retry ?? {};
    this.reconnect = options.reconnect ?? {};
    this.waitForReady = options.waitForReady ?? false;
    this.tracing = options.tracing ?? true;
    if (this.tracing) warmTracing();
    if (options.nearCache) {
      const trace = this.tracing ? traceHeadersSync() : {};
      this.near = new NearCache(options.nearCache === true ? {} : options.nearCache, (req: WatchRequest) =>
        this.stub.watch(req, this.metadata(undefined, trace, false)),
      );
    }
  }

  /** The near cache's counters (undefined without `nearCache`). */
  nearCacheStats(): NearCacheStats | undefined {
    return this.near?.stats();
  }

  /**
   * The near cache itself (undefined without `nearCache`): an EventEmitter of "live", "event",
   * "flush", "disconnect", "resume", "streamError", and `stats()`.
   */
  get nearCache(): NearCache | undefined {
    return this.near;
  }

  private metadata(extra: Record<string, string> | undefined, trace: Record<string, string>, waitForReady: boolean | undefined): Metadata {
    const md = new Metadata({ waitForReady: waitForReady ?? this.waitForReady });
    if (this.apiKey !== undefined) {
      const key = typeof this.apiKey === "string" ? this.apiKey : checkApiKey(this.apiKey());
      md.set("authorization", `Bearer ${key}`);
    }
    for (const [k, v] of Object.entries(this.baseMetadata)) md.set(k, v);
    for (const [k, v] of Object.entries(extra ?? {})) md.set(k, v);
    for (const [k, v] of Object.entries(trace)) if (!md.get(k).length) md.set(k, v);
    return md;
  }

  private retryPolicy(perCall: RetryOptions | false | undefined): (typeof DEFAULT_RETRY & RetryOptions) | undefined {
    if (perCall === false || this.retry === false) return undefined;
    return { ...DEFAULT_RETRY, ...this.retry, ...(perCall ?? {}) };
  }

  private attempt<Req, Res>(
    method: UnaryMethod<Req, Res>,
    req: Req,
    md: Metadata,
    deadline: number | undefined,
    signal: AbortSignal | undefined,
  ): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      if (signal?.aborted) {
        reject(new CancelledError(Status.CANCELLED, "aborted before start"));
        return;
      }
      const call = method.call(
        this.stub,
        req,
        md,
        deadline === undefined ? {} : { deadline: new Date(deadline) },
        (err, res) => {
          signal?.removeEventListener("abort", onAbort);
          if (err) reject(this.explain(toCacheError(err, deadline !== undefined)));
          else resolve(res);
        },
      );
      const onAbort = () => call.cancel();
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  private async unary<Req, Res>(method: UnaryMethod<Req, Res>, req: Req, settings: CallSettings): Promise<Res> {
    const start = Date.now();
    const timeoutMs = settings.timeoutMs ?? this.defaultTimeoutMs;
    const deadline = timeoutMs === undefined ? undefined : start + timeoutMs;
    const trace = this.tracing ? await traceHeaders() : {};
    const policy = this.retryPolicy(settings.retry);
    let waitedMs = 0;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.attempt(method, req, this.metadata(settings.metadata, trace, settings.waitForReady), deadline, settings.signal);
      } catch (err) {
        const e = err as CacheError;
        e.attempts = attempt;
        if (!policy || !(e instanceof CacheError) || attempt >= policy.maxAttempts || !policy.retryOn.includes(e.code)) throw e;
        const delayMs = backoffDelay(attempt, policy, policy.random ?? Math.random, e.retryAfterMs);
        const now = Date.now();
        // Retry only if the wait ends inside the deadline and the time budget (the
        // budget counts the planned waits too, whatever the sleep function does).
        if (deadline !== undefined && now + delayMs >= deadline) throw e;
        if (Math.max(now - start, waitedMs) + delayMs > policy.maxElapsedMs) throw e;
        policy.onRetry?.({ attempt, error: e, delayMs });
        waitedMs += delayMs;
        await (policy.sleep ?? abortableSleep)(delayMs, settings.signal);
        if (settings.signal?.aborted) throw new CancelledError(Status.CANCELLED, "aborted while waiting to retry");
      }
    }
  }

  /**
   * Get one catalog resource. With `parse` the value is checked and typed by it
   * (`get(kind, { parse: (v): T => ... })`, or `parse: guard(isT)`); without it the
   * value is `unknown`. There is no unchecked `get<T>()`.
   */
  get<T>(kind: string, options: GetOptions<T> & { parse: (value: unknown) => T }): Promise<GetResult<T>>;
  get(kind: string, options?: GetOptions<unknown>): Promise<GetResult<unknown>>;
  async get<T>(kind: string, options: GetOptions<T> = {}): Promise<GetResult<T>> {
    const near = this.near;
    if (near !== undefined && near.covers(kind)) return this.nearGet(near, kind, options);
    const resp = await this.unary<GetRequest, GetResponse>(this.stub.get, buildGetRequest(kind, options), options);
    return toGetResult<T>(resp, kind, options.parse);
  }

  private async nearGet<T>(near: NearCache, kind: string, options: GetOptions<T>): Promise<GetResult<T>> {
    const id = requestIdentity(kind, options);
    if (!options.forceRefresh) {
      const hit = near.lookup(id, options.maxAgeMs);
      if (hit !== undefined) {
        const e = hit.entry;
        let value: T;
        if (options.parse) {
          try {
            value = options.parse(e.value);
          } catch (err) {
            throw new ValueParseError(`${kind}: ${(err as Error)?.message ?? String(err)}`, kind, e.key, e.raw, err);
          }
        } else {
          value = e.value as T;
        }
        return {
          value,
          raw: e.raw,
          source: "NEAR",
          key: e.key,
          ageMs: e.ageMs + hit.elapsed,
          ttlRemainingMs: e.ttlMs - hit.elapsed,
          tags: e.tags,
        };
      }
    } else {
      near.lookup("", undefined); // counted as a miss
    }
    const starting = near.ready();
    if (starting !== undefined) await starting;
    const ticket = near.ticket();
    const resp = await this.unary<GetRequest, GetResponse>(this.stub.get, buildGetRequest(kind, options), options);
    const result = toGetResult<T>(resp, kind, options.parse);
    near.fill(id, resp, ticket);
    return result;
  }

  /** A plaintext channel that meets a TLS port fails with an opaque UNAVAILABLE: say why. */
  private explain(e: CacheError): CacheError {
    if (this.plaintext && e.code === Status.UNAVAILABLE && /Protocol error|Connection dropped|ECONNRESET|Received HTTP status code|Failed to connect|Connection closed/i.test(e.details)) {
      e.hint = "this client connects without TLS: if the server is TLS-only, pass `tls: { ca }` (or `credentials`)";
      e.message = `${e.message} (${e.hint})`;
    } else if (!this.plaintext && e.code === Status.UNAVAILABLE && /certificate required/i.test(e.details)) {
      e.hint = "the server requires a client certificate (mutual TLS): pass `tls: { cert, key }` (or certFile/keyFile)";
      e.message = `${e.message} (${e.hint})`;
    }
    return e;
  }

  /** Purge entries by key, prefix or tag; resolves to the number purged. */
  async invalidate(options: InvalidateOptions): Promise<number> {
    this.near?.invalidateLocal(options);
    const resp = await this.unary(
      this.stub.invalidate,
      {
        keys: options.keys ?? [],
        prefixes: options.prefixes ?? [],
        tags: options.tags ?? [],
        reason: options.reason ?? "",
      },
      options,
    );
    // Again once the purge is acknowledged: a Get that raced the call cannot have kept the old value.
    this.near?.invalidateLocal(options);
    return resp.purged;
  }

  /** Subscribe to events; iterate the returned stream with `for await`. */
  watch(options: WatchOptions = {}): WatchStream {
    const base = WatchRequest.fromPartial({
      keys: options.keys ?? [],
      prefixes: options.prefixes ?? [],
      kinds: options.kinds ?? [],
      tags: options.tags ?? [],
      invalidatedOnly: !!options.invalidatedOnly,
      heartbeatInterval: options.heartbeatIntervalMs !== undefined ? toDuration(options.heartbeatIntervalMs) : undefined,
    });
    const deadline = options.timeoutMs === undefined ? undefined : Date.now() + options.timeoutMs;
    const trace = this.tracing ? traceHeadersSync() : {};
    const open = (resumeAfter: string) =>
      this.stub.watch(
        { ...base, resumeAfter },
        this.metadata(options.metadata, trace, options.waitForReady),
        deadline === undefined ? {} : { deadline: new Date(deadline) },
      );
    const policy =
      options.reconnect === false || this.reconnect === false
        ? undefined
        : { ...DEFAULT_RECONNECT, ...this.reconnect, ...(options.reconnect ?? {}) };
    const stream = new WatchStream(open, deadline !== undefined, policy, deadline, options.resumeAfter ?? "", !!options.heartbeats);
    options.signal?.addEventListener("abort", () => stream.cancel(), { once: true });
    return stream;
  }

  /** Close the channel (and the near cache's Watch stream). */
  close(): void {
    this.near?.close();
    this.stub.close();
  }
}

function pem(v: Buffer | string | undefined, file: string | undefined, what: string): Buffer | undefined {
  if (v !== undefined) return Buffer.isBuffer(v) ? v : Buffer.from(v);
  if (file === undefined) return undefined;
  try {
    return readFileSync(file);
  } catch (e) {
    throw new TypeError(`tls.${what}File: cannot read ${file}: ${(e as Error).message}`);
  }
}

/** grpc-js SSL credentials from TlsOptions (a client certificate needs its key and the other way round). */
export function tlsCredentials(t: TlsOptions): ChannelCredentials {
  const ca = pem(t.ca, t.caFile, "ca");
  const cert = pem(t.cert, t.certFile, "cert");
  const key = pem(t.key, t.keyFile, "key");
  if ((cert === undefined) !== (key === undefined)) throw new TypeError("tls: a client certificate needs its key (cert and key together)");
  return grpcCredentials.createSsl(ca ?? null, key ?? null, cert ?? null);
}

function checkApiKey(k: string): string {
  if (!k || /[\s\x00-\x1f\x7f]/.test(k)) throw new TypeError("apiKey must be a non-empty token without whitespace or control characters");
  return k;
}

/** A Get's identity for the near cache: kind, id, variant, params, body (the value format is always bytes). */
export function requestIdentity(kind: string, o: GetOptions<unknown>): string {
  let s = `${kind}\u0000${o.id ?? ""}\u0000${o.variant ?? ""}\u0000`;
  if (o.params) {
    const names = Object.keys(o.params);
    if (names.length) {
      names.sort();
      s += JSON.stringify(names.map((n) => [n, String(o.params![n])]));
    }
  }
  if (o.body !== undefined && o.body !== null) s += `\u0000${bodyJson(o.body)}`;
  return s;
}

function bodyJson(body: unknown): string {
  if (typeof body === "string") return body;
  if (Buffer.isBuffer(body) || body instanceof Uint8Array) return Buffer.from(body).toString("utf8");
  return JSON.stringify(body);
}
