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
  watchEvent_TypeToJSON,
} from "./gen/cxcache/v1/cache.js";
import { Duration } from "./gen/google/protobuf/duration.js";
import { CacheError, toCacheError } from "./errors.js";

/** Where a Get reply's value came from (cxcache.v1.Source without the prefix). */
export type Source = "UNSPECIFIED" | "L1" | "STORE" | "UPSTREAM" | "STALE" | "COALESCED" | "REVALIDATED";

/** cxcache.v1.WatchEvent.Type without the prefix. */
export type EventType = "UNSPECIFIED" | "INVALIDATED" | "UPDATED" | "LAGGED";

export interface ClientOptions {
  /** Channel credentials; plaintext (insecure) when omitted. */
  credentials?: ChannelCredentials;
  /** Options passed to the grpc-js channel. */
  channelOptions?: Partial<GrpcClientOptions>;
  /** Deadline applied to get/invalidate calls without their own timeoutMs. */
  defaultTimeoutMs?: number;
  /** Metadata sent with every call. */
  metadata?: Record<string, string>;
}

export interface CallSettings {
  /** Per-call deadline in milliseconds. */
  timeoutMs?: number;
  /** Aborting cancels the call (it then rejects with CancelledError). */
  signal?: AbortSignal;
}

export interface GetOptions extends CallSettings {
  /** Entity id, required when the kind's path has an {id}. */
  id?: string;
  /** Named projection declared by the kind. */
  variant?: string;
  /** Query parameters (values are sent as strings). */
  params?: Record<string, string | number | boolean>;
  /** Request body for query-style kinds: objects are JSON-encoded, strings sent as-is. */
  body?: unknown;
  /** Accept a cached value only if at most this old. */
  maxAgeMs?: number;
  /** Accept a stale value when a fresh one cannot be had. */
  allowStale?: boolean;
  /** Skip the cache and fetch upstream. */
  forceRefresh?: boolean;
}

export interface GetResult<T = unknown> {
  /** The parsed JSON value. */
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

export interface WatchOptions extends CallSettings {
  keys?: string[];
  prefixes?: string[];
  kinds?: string[];
  /** Tags such as `queue:<id>`: events for every key carrying one. */
  tags?: string[];
}

export interface WatchEvent {
  type: EventType;
  key: string;
  prefix: string;
  tag: string;
  kind: string;
  reason: string;
  time: Date | undefined;
  sequence: number;
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

export function toGetResult<T>(resp: GetResponse): GetResult<T> {
  const raw = Buffer.from(resp.value);
  return {
    value: (raw.length ? JSON.parse(raw.toString("utf8")) : null) as T,
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
  };
}

export function buildGetRequest(kind: string, o: GetOptions = {}): GetRequest {
  const params: Record<string, string> = {};
  for (const [k, v] of Object.entries(o.params ?? {})) params[k] = String(v);
  let bodyJson = "";
  if (o.body !== undefined && o.body !== null) {
    if (typeof o.body === "string") bodyJson = o.body;
    else if (Buffer.isBuffer(o.body) || o.body instanceof Uint8Array) bodyJson = Buffer.from(o.body).toString("utf8");
    else bodyJson = JSON.stringify(o.body);
  }
  const wantsFreshness = o.maxAgeMs !== undefined || !!o.allowStale || !!o.forceRefresh;
  return {
    kind,
    id: o.id ?? "",
    variant: o.variant ?? "",
    params,
    bodyJson,
    freshness: wantsFreshness
      ? {
          maxAge: o.maxAgeMs !== undefined ? toDuration(o.maxAgeMs) : undefined,
          allowStale: !!o.allowStale,
          forceRefresh: !!o.forceRefresh,
        }
      : undefined,
  };
}

/**
 * One Watch subscription: an async iterable of events. `cancel()` (or leaving a
 * `for await` loop early) ends it; iteration then finishes without an error.
 */
export class WatchStream implements AsyncIterable<WatchEvent> {
  private cancelled = false;
  private headers = false;
  private failure: CacheError | undefined;
  private ended = false;
  private waiters: Array<() => void> = [];

  constructor(
    private readonly call: ClientReadableStream<PbWatchEvent>,
    private readonly hadDeadline = false,
  ) {
    call.on("metadata", () => {
      this.headers = true;
      this.wake();
    });
    call.on("error", (err: ServiceError) => {
      if (!(this.cancelled && err.code === Status.CANCELLED)) this.failure = toCacheError(err, this.hadDeadline);
      this.ended = true;
      this.wake();
    });
    call.on("status", () => {
      this.ended = true;
      this.wake();
    });
  }

  private wake(): void {
    // Let a status that arrived with the headers (trailers-only reply) land first.
    setImmediate(() => {
      const ws = this.waiters;
      this.waiters = [];
      for (const w of ws) w();
    });
  }

  /**
   * Resolves true once the server has accepted the subscription (response headers
   * received), false on timeout or cancel; rejects with the call's CacheError when
   * the server refused it (e.g. UnimplementedError, InvalidArgumentError).
   */
  waitReady(timeoutMs?: number): Promise<boolean> {
    return new Promise<boolean>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const check = (): boolean => {
        if (this.failure) {
          reject(this.failure);
        } else if (this.cancelled || this.ended) {
          resolve(this.headers && !this.cancelled);
        } else if (this.headers) {
          resolve(true);
        } else {
          return false;
        }
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
      // Give a trailers-only reply that is already buffered a chance to land.
      if (this.headers || this.ended) setImmediate(wait);
      else wait();
    });
  }

  cancel(): void {
    if (!this.cancelled) {
      this.cancelled = true;
      this.call.cancel();
      this.wake();
    }
  }

  async *[Symbol.asyncIterator](): AsyncIterator<WatchEvent> {
    try {
      for await (const ev of this.call as AsyncIterable<PbWatchEvent>) {
        yield toWatchEvent(ev);
      }
    } catch (err) {
      if (this.cancelled && (err as ServiceError).code === Status.CANCELLED) return;
      throw toCacheError(err, this.hadDeadline);
    } finally {
      if (!this.ended) this.cancel();
    }
  }
}

/**
 * Promise-based client for cxcache.v1.Cache. Failed calls reject with a
 * CacheError subclass carrying field violations / retry delay from the
 * google.rpc status details.
 */
export class CacheClient {
  private readonly stub: GeneratedCacheClient;
  private readonly defaultTimeoutMs: number | undefined;
  private readonly baseMetadata: Record<string, string>;

  constructor(target = "127.0.0.1:50051", options: ClientOptions = {}) {
    this.stub = new GeneratedCacheClient(
      target,
      options.credentials ?? grpcCredentials.createInsecure(),
      options.channelOptions,
    );
    this.defaultTimeoutMs = options.defaultTimeoutMs;
    this.baseMetadata = options.metadata ?? {};
  }

  private metadata(): Metadata {
    const md = new Metadata();
    for (const [k, v] of Object.entries(this.baseMetadata)) md.set(k, v);
    return md;
  }

  private callOptions(timeoutMs: number | undefined): Partial<CallOptions> {
    return timeoutMs === undefined ? {} : { deadline: new Date(Date.now() + timeoutMs) };
  }

  private unary<Req, Res>(
    method: (
      req: Req,
      md: Metadata,
      opts: Partial<CallOptions>,
      cb: (err: ServiceError | null, res: Res) => void,
    ) => { cancel(): void },
    req: Req,
    settings: CallSettings,
  ): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      if (settings.signal?.aborted) {
        reject(new CacheError(Status.CANCELLED, "aborted before start") as CacheError);
        return;
      }
      const timeoutMs = settings.timeoutMs ?? this.defaultTimeoutMs;
      const call = method.call(
        this.stub,
        req,
        this.metadata(),
        this.callOptions(timeoutMs),
        (err, res) => {
          settings.signal?.removeEventListener("abort", onAbort);
          if (err) reject(toCacheError(err, timeoutMs !== undefined));
          else resolve(res);
        },
      );
      const onAbort = () => call.cancel();
      settings.signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Get one catalog resource. */
  async get<T = unknown>(kind: string, options: GetOptions = {}): Promise<GetResult<T>> {
    const resp = await this.unary<GetRequest, GetResponse>(this.stub.get, buildGetRequest(kind, options), options);
    return toGetResult<T>(resp);
  }

  /** Purge entries by key, prefix or tag; resolves to the number purged. */
  async invalidate(options: InvalidateOptions): Promise<number> {
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
    return resp.purged;
  }

  /** Subscribe to events; iterate the returned stream with `for await`. */
  watch(options: WatchOptions = {}): WatchStream {
    const call = this.stub.watch(
      {
        keys: options.keys ?? [],
        prefixes: options.prefixes ?? [],
        kinds: options.kinds ?? [],
        tags: options.tags ?? [],
      },
      this.metadata(),
      this.callOptions(options.timeoutMs),
    );
    const stream = new WatchStream(call, options.timeoutMs !== undefined);
    options.signal?.addEventListener("abort", () => stream.cancel(), { once: true });
    return stream;
  }

  /** Close the channel. */
  close(): void {
    this.stub.close();
  }
}
