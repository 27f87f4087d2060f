// The opt-in near cache: values kept in this process, served without a call while one Watch
// stream per client proves (by its heartbeats) that no purge is being missed.
import { EventEmitter } from "node:events";
import { LRUCache } from "lru-cache";
import { GetResponse, Source as PbSource, WatchEvent as PbWatchEvent, WatchEvent_Type, WatchRequest } from "./gen/cxcache/v1/cache.js";

/** Options of the near cache (`new CacheClient(addr, { nearCache: {...} })`). */
export interface NearCacheOptions {
  /** Byte bound: value bytes plus key and bookkeeping overhead per entry (default 64 MiB). */
  maxBytes?: number;
  /** Kinds to near-cache (default: every kind). The Watch then filters on these kinds. */
  kinds?: string[];
  /**
   * How long near entries stay servable after the last message (HEARTBEAT or event) on the
   * Watch stream (default 1000 ms). Heartbeats are asked for every maxStaleness/4 (>= 100 ms).
   */
  maxStalenessMs?: number;
  /** Watch INVALIDATED events only (default false: an UPDATED, a newer value stored elsewhere, drops the entry too). */
  invalidatedOnly?: boolean;
  /** Reconnect backoff of the Watch stream: first wait (default 50 ms), doubling up to maxBackoffMs (default 2000 ms), with jitter. */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** How many recent event keys are kept, at least, to judge racing fills (default 4096; up to twice as many). */
  eventLogSize?: number;
  /** How long the first near-cacheable Gets wait for the Watch stream to start (default maxStalenessMs). */
  startWaitMs?: number;
  /** Test hook: a monotonic clock in ms (default performance.now). */
  now?: () => number;
  /** Test hook: a number in [0, 1) for jitter (default Math.random). */
  random?: () => number;
}

/** Counters of the near cache (CacheClient.nearCacheStats()). */
export interface NearCacheStats {
  /** Gets served from the near cache (source "NEAR"). */
  hits: number;
  /** Near-cacheable Gets that went to the server. */
  misses: number;
  /** Replies stored. */
  fills: number;
  /** Replies not stored because an event, flush or reconnect raced them (the race rule). */
  rejectedFills: number;
  /** Entries evicted by the byte bound. */
  evictions: number;
  /** Whole-cache flushes (RESET, LAGGED, a resume the server could not honour). */
  flushes: number;
  /** INVALIDATED / UPDATED events received. */
  events: number;
  heartbeats: number;
  /** Watch streams opened after the first. */
  reconnects: number;
  /** Reconnects the server resumed (missed events replayed, no flush). */
  resumes: number;
  entries: number;
  bytes: number;
  /** Near hits possible now: the last message on the stream is younger than maxStaleness. */
  healthy: boolean;
  /** The current stream has delivered its first message. */
  connected: boolean;
}

/** The part of a grpc-js ClientReadableStream the near cache uses. */
export interface WatchCall {
  on(event: "data", listener: (ev: PbWatchEvent) => void): unknown;
  on(event: "error", listener: (err: Error) => void): unknown;
  on(event: "status", listener: (status: unknown) => void): unknown;
  cancel(): void;
}

/** A near cache entry. */
export interface NearEntry {
  raw: Buffer;
  /** The decoded JSON, deep-frozen (shared by every hit). */
  value: unknown;
  key: string;
  tags: string[];
  filledAt: number;
  ageMs: number;
  ttlMs: number;
}

/** What a Get saw when it was sent: undefined when its reply may not be stored. */
export interface FillTicket {
  gen: number;
  seq: number;
}

interface LoggedChange {
  seq: number;
  key: string;
  prefix: string;
  tag: string;
}

function durationMs(d: { seconds: number; nanos: number } | undefined): number {
  return d ? d.seconds * 1000 + d.nanos / 1e6 : 0;
}

function deepFreeze(v: unknown): unknown {
  if (typeof v === "object" && v !== null && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v)) deepFreeze(x);
  }
  return v;
}

/**
 * Events: "live" (a stream delivered its first message), "event" (INVALIDATED / UPDATED applied:
 * the PbWatchEvent), "flush" (reason), "disconnect" (error or undefined), "resume" (a reconnect the
 * server resumed), "streamError" (the error that ended a stream).
 */
export class NearCache extends EventEmitter {
  private readonly entries: LRUCache<string, NearEntry>;
  private readonly byKey = new Map<string, Set<string>>();
  private readonly byTag = new Map<string, Set<string>>();
  private readonly kinds: Set<string> | undefined;
  readonly maxStalenessMs: number;
  private readonly invalidatedOnly: boolean;
  private readonly initialBackoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly logSize: number;
  private readonly startWaitMs: number;
  readonly now: () => number;
  private readonly random: () => number;

  private log: LoggedChange[] = [];
  /** The log holds every change with seq > logFloor. */
  private logFloor = 0;
  private seq = 0;
  /** Bumped by every flush and every stream break: tickets of an older generation are void. */
  private gen = 0;
  private call: WatchCall | undefined;
  private started = false;
  private closed = false;
  private live = false;
  private everLive = false;
  private lastMessageAt = -Infinity;
  private position = "";
  private failures = 0;
  private sawHeartbeat = false;
  private resumeSent = false;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private starting: Promise<void> | undefined;
  private startDone = false;
  private wakeStart: (() => void) | undefined;
  private readonly c = { hits: 0, misses: 0, fills: 0, rejectedFills: 0, evictions: 0, flushes: 0, events: 0, heartbeats: 0, reconnects: 0, resumes: 0 };

  constructor(
    options: NearCacheOptions,
    private readonly openWatch: (req: WatchRequest) => WatchCall,
  ) {
    super();
    const maxBytes = Math.max(1024, Math.floor(options.maxBytes ?? 64 * 1024 * 1024));
    this.kinds = options.kinds && options.kinds.length ? new Set(options.kinds) : undefined;
    this.maxStalenessMs = options.maxStalenessMs ?? 1000;
    if (!(this.maxStalenessMs > 0)) throw new RangeError("nearCache.maxStalenessMs must be > 0");
    this.invalidatedOnly = options.invalidatedOnly ?? false;
    this.initialBackoffMs = options.initialBackoffMs ?? 50;
    this.maxBackoffMs = options.maxBackoffMs ?? 2000;
    this.logSize = Math.max(16, options.eventLogSize ?? 4096);
    this.startWaitMs = options.startWaitMs ?? this.maxStalenessMs;
    this.now = options.now ?? (() => performance.now());
    this.random = options.random ?? Math.random;
    this.entries = new LRUCache<string, NearEntry>({
      maxSize: maxBytes,
      sizeCalculation: (e, id) => {
        let n = 160 + e.raw.length + 2 * (id.length + e.key.length);
        for (const t of e.tags) n += 2 * t.length + 40;
        return n;
      },
      dispose: (e, id, reason) => {
        if (reason === "evict") this.c.evictions++;
        this.unindex(id, e);
      },
    });
  }

  /** Whether Gets of this kind go through the near cache. */
  covers(kind: string): boolean {
    return this.kinds === undefined || this.kinds.has(kind);
  }

  /** Near hits are allowed now (the stream's last message is younger than maxStaleness). */
  healthy(now = this.now()): boolean {
    return now - this.lastMessageAt < this.maxStalenessMs;
  }

  /** The servable entry for a request identity, or undefined (counted as a miss). */
  lookup(id: string, maxAgeMs: number | undefined): { entry: NearEntry; elapsed: number } | undefined {
    const entry = this.entries.get(id);
    if (entry !== undefined) {
      const now = this.now();
      const elapsed = now - entry.filledAt;
      if (elapsed >= entry.ttlMs) {
        this.entries.delete(id);
      } else if (now - this.lastMessageAt < this.maxStalenessMs && (maxAgeMs === undefined || entry.ageMs + elapsed <= maxAgeMs)) {
        this.c.hits++;
        return { entry, elapsed };
      }
    }
    this.c.misses++;
    return undefined;
  }

  /**
   * Opens the stream on first use. Returns a promise while the first stream is starting (the
   * first Gets wait for it, up to startWaitMs, so their replies can be stored), else undefined.
   */
  ready(): Promise<void> | undefined {
    if (this.startDone || this.closed) return undefined;
    if (!this.started) {
      this.started = true;
      this.starting = new Promise<void>((resolve) => {
        const t = setTimeout(done, this.startWaitMs);
        const self = this;
        function done() {
          clearTimeout(t);
          self.startDone = true;
          self.wakeStart = undefined;
          resolve();
        }
        this.wakeStart = done;
      });
      this.open();
    }
    return this.starting;
  }

  /** Taken just before a Get is sent; undefined when its reply may not be stored. */
  ticket(): FillTicket | undefined {
    return this.live && !this.closed ? { gen: this.gen, seq: this.seq } : undefined;
  }

  /** Store a reply if the race rule allows it. Returns whether it was stored. */
  fill(id: string, resp: GetResponse, ticket: FillTicket | undefined): boolean {
    if (!ticket || this.closed || resp.source === PbSource.SOURCE_STALE) return false;
    const ttlMs = durationMs(resp.ttlRemaining);
    if (!(ttlMs > 0)) return false;
    if (!this.keepable(ticket, resp.key, resp.tags)) {
      this.c.rejectedFills++;
      return false;
    }
    const raw = Buffer.from(resp.value);
    let value: unknown;
    try {
      value = deepFreeze(raw.length ? JSON.parse(raw.toString("utf8")) : null);
    } catch {
      return false;
    }
    const entry: NearEntry = {
      raw,
      value,
      key: resp.key,
      tags: Object.freeze([...resp.tags]) as string[],
      filledAt: this.now(),
      ageMs: durationMs(resp.age),
      ttlMs,
    };
    this.entries.set(id, entry);
    if (this.entries.peek(id) !== entry) return false; // larger than the whole bound
    this.index(this.byKey, entry.key, id);
    for (const t of entry.tags) this.index(this.byTag, t, id);
    this.c.fills++;
    return true;
  }

  private keepable(t: FillTicket, key: string, tags: string[]): boolean {
    if (t.gen !== this.gen || !this.live) return false;
    if (t.seq === this.seq) return true;
    if (t.seq < this.logFloor) return false; // the log no longer reaches back to the send
    for (let i = this.log.length - 1; i >= 0; i--) {
      const ch = this.log[i];
      if (ch.seq <= t.seq) break;
      if (ch.key === key || (ch.prefix !== "" && key.startsWith(ch.prefix)) || (ch.tag !== "" && tags.includes(ch.tag))) return false;
    }
    return true;
  }

  /** The client's own Invalidate: drop matching entries now, and void racing fills of them. */
  invalidateLocal(o: { keys?: string[]; prefixes?: string[]; tags?: string[] }): void {
    for (const k of o.keys ?? []) this.change(k, "", "");
    for (const p of o.prefixes ?? []) this.change("", p, "");
    for (const t of o.tags ?? []) this.change("", "", t);
  }

  private change(key: string, prefix: string, tag: string): void {
    this.seq++;
    this.log.push({ seq: this.seq, key, prefix, tag });
    if (this.log.length >= 2 * this.logSize) {
      // trimmed in batches (between logSize and 2 * logSize changes kept)
      const cut = this.log.length - this.logSize;
      this.logFloor = this.log[cut - 1].seq;
      this.log = this.log.slice(cut);
    }
    if (key !== "") this.dropAll(this.byKey.get(key));
    if (tag !== "") this.dropAll(this.byTag.get(tag));
    if (prefix !== "") {
      for (const [k, ids] of [...this.byKey]) if (k.startsWith(prefix)) this.dropAll(ids);
    }
  }

  private dropAll(ids: Set<string> | undefined): void {
    if (ids) for (const id of [...ids]) this.entries.delete(id);
  }

  private index(map: Map<string, Set<string>>, k: string, id: string): void {
    let s = map.get(k);
    if (!s) map.set(k, (s = new Set()));
    s.add(id);
  }

  private unindex(id: string, e: NearEntry): void {
    const drop = (map: Map<string, Set<string>>, k: string) => {
      const s = map.get(k);
      if (s && s.delete(id) && s.size === 0) map.delete(k);
    };
    drop(this.byKey, e.key);
    for (const t of e.tags) drop(this.byTag, t);
  }

  /** Drop everything and void every fill in flight. */
  flush(reason: string): void {
    this.gen++;
    this.c.flushes++;
    this.entries.clear();
    this.byKey.clear();
    this.byTag.clear();
    this.log = [];
    this.logFloor = this.seq;
    this.emit("flush", reason);
  }

  stats(): NearCacheStats {
    return {
      ...this.c,
      entries: this.entries.size,
      bytes: this.entries.calculatedSize,
      healthy: this.healthy(),
      connected: this.live,
    };
  }

  /** The last position received on the stream ("" before any). */
  get lastPosition(): string {
    return this.position;
  }

  private open(): void {
    if (this.closed) return;
    this.reconnectTimer = undefined;
    const hb = Math.max(100, this.maxStalenessMs / 4);
    const seconds = Math.floor(hb / 1000);
    const req = WatchRequest.fromPartial({
      prefixes: this.kinds ? [] : [""],
      kinds: this.kinds ? [...this.kinds] : [],
      invalidatedOnly: this.invalidatedOnly,
      heartbeatInterval: { seconds, nanos: Math.round((hb - seconds * 1000) * 1e6) },
      resumeAfter: this.position,
    });
    this.resumeSent = this.position !== "";
    this.live = false;
    let call: WatchCall;
    try {
      call = this.openWatch(req);
    } catch (e) {
      this.broken(undefined, e as Error);
      return;
    }
    this.call = call;
    let ended = false;
    call.on("data", (ev) => {
      if (this.call === call && !this.closed) this.message(ev);
    });
    call.on("error", (err) => {
      if (!ended) {
        ended = true;
        this.broken(call, err);
      }
    });
    call.on("status", () => {
      if (!ended) {
        ended = true;
        this.broken(call, undefined);
      }
    });
  }

  private message(ev: PbWatchEvent): void {
    this.lastMessageAt = this.now();
    if (ev.position !== "") this.position = ev.position;
    if (!this.live) {
      this.live = true;
      this.failures = 0;
      const reconnect = this.everLive;
      this.everLive = true;
      if (reconnect && ev.type !== WatchEvent_Type.TYPE_RESET) {
        if (this.resumeSent && this.sawHeartbeat) {
          this.c.resumes++;
          this.emit("resume");
        } else {
          // No position to resume from, or a server that never sent a HEARTBEAT (no resume contract).
          this.flush("reconnected without a resume");
        }
      }
      this.emit("live");
      this.wakeStart?.();
    }
    switch (ev.type) {
      case WatchEvent_Type.TYPE_HEARTBEAT:
        this.sawHeartbeat = true;
        this.c.heartbeats++;
        break;
      case WatchEvent_Type.TYPE_RESET:
        this.flush("reset");
        break;
      case WatchEvent_Type.TYPE_LAGGED:
        this.flush("lagged");
        break;
      case WatchEvent_Type.TYPE_INVALIDATED:
      case WatchEvent_Type.TYPE_UPDATED:
        this.c.events++;
        this.change(ev.key, "", "");
        this.emit("event", ev);
        break;
      default:
        break;
    }
  }

  private broken(call: WatchCall | undefined, err: Error | undefined): void {
    if (call !== undefined && this.call !== call) return;
    this.call = undefined;
    this.live = false;
    this.gen++; // fills in flight across a break are not kept
    if (this.closed) return;
    if (err) this.emit("streamError", err);
    this.emit("disconnect", err);
    this.failures++;
    const base = Math.min(this.maxBackoffMs, this.initialBackoffMs * Math.pow(2, this.failures - 1));
    const delay = Math.round(base / 2 + (base / 2) * this.random());
    this.reconnectTimer = setTimeout(() => {
      this.c.reconnects++;
      this.open();
    }, delay);
  }

  /** Stop the stream and drop everything. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.wakeStart?.();
    const call = this.call;
    this.call = undefined;
    this.live = false;
    call?.cancel();
    this.entries.clear();
    this.byKey.clear();
    this.byTag.clear();
  }

  /** Test hook: cut the current stream as if it broke. */
  cutStream(): void {
    this.call?.cancel();
  }
}
