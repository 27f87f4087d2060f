"""The near cache: an in-process, byte-bounded LRU of Get replies kept coherent by one
Watch stream per client.

:class:`NearCache` is the user's configuration. :class:`NearState` is everything that
does not depend on how the stream is read (sync thread or asyncio task): the entries
and their indexes, the health clock, the race rule for fills, and what each Watch
message does. Both clients drive the same NearState; only the stream loop differs
(``_client.NearStreamThread`` / ``_client.NearStreamTask``).
"""

from __future__ import annotations

import collections
import random
import threading
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from cachetools import LRUCache

from ._types import GetResult, Source
from .v1 import cache_pb2

_WatchType = cache_pb2.WatchEvent.Type

RequestId = Tuple[str, str, str, Tuple[Tuple[str, str], ...], str, int]
"""(kind, id, variant, sorted params, body_json, value_format): a Get's identity."""


@dataclass(frozen=True)
class NearCache:
    """Opt-in near cache configuration (``CacheClient(..., near_cache=NearCache())``).

    * ``max_bytes``: bound on value bytes + ``key_overhead`` + the key strings of every
      entry; least recently used entries are evicted past it.
    * ``kinds``: the kinds to near-cache (None: all). The Watch stream then filters by
      these kinds; otherwise it watches every key (``prefixes=[""]``).
    * ``max_staleness``: a near entry is served only while the last HEARTBEAT or event
      of the stream is younger than this (seconds). The stream asks the server for
      heartbeats every ``max_staleness / 4`` (at least 100 ms).
    * ``invalidated_only``: watch INVALIDATED only (by default an UPDATED also drops the
      entry: another instance stored a newer value).
    * ``ready_wait``: how long the first near-cacheable Get waits for the stream to be
      subscribed before it goes to the server anyway (its reply is then not kept).
    * ``event_log``: how many recent event keys are remembered for the fill race rule.
    * ``reconnect_initial`` / ``reconnect_max``: backoff of the stream's reconnects
      (exponential, with jitter).
    """

    max_bytes: int = 64 << 20
    kinds: Optional[Sequence[str]] = None
    max_staleness: float = 1.0
    invalidated_only: bool = False
    key_overhead: int = 256
    ready_wait: float = 1.0
    event_log: int = 4096
    reconnect_initial: float = 0.05
    reconnect_max: float = 2.0

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if self.max_staleness <= 0:
            raise ValueError("max_staleness must be positive")
        if self.event_log < 1:
            raise ValueError("event_log must be at least 1")

    @property
    def heartbeat_interval(self) -> float:
        return max(self.max_staleness / 4, 0.1)


@dataclass
class NearStats:
    """Counters of one client's near cache."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    flushes: int = 0
    rejected_fills: int = 0
    fills: int = 0
    events: int = 0
    heartbeats: int = 0
    resets: int = 0
    reconnects: int = 0
    resumes: int = 0
    entries: int = 0
    bytes: int = 0


@dataclass
class _Entry:
    result: GetResult
    sent_at: float  # the request's send time: age and TTL are measured from it (conservative)
    expires_at: float
    size: int


@dataclass
class FillTicket:
    """What a Get remembered when it was sent, to judge its reply."""

    rid: RequestId
    sent_at: float
    gen: int
    counter: int
    connected: bool


@dataclass
class _Health:
    last_heard: Optional[float] = None  # monotonic time of the last HEARTBEAT or event
    connected: bool = False  # the current Watch call delivered its first message
    position: str = ""  # the last position received


class _Entries(LRUCache):  # type: ignore[type-arg]
    """cachetools' LRU that reports the entries it evicts."""

    def __init__(self, maxsize: int, on_evict: Callable[[RequestId, _Entry], None]) -> None:
        super().__init__(maxsize, getsizeof=lambda e: e.size)
        self._on_evict = on_evict

    def popitem(self) -> Tuple[Any, Any]:
        k, v = super().popitem()
        self._on_evict(k, v)
        return k, v


def request_id(req: cache_pb2.GetRequest) -> RequestId:
    return (
        req.kind,
        req.id,
        req.variant,
        tuple(sorted(req.params.items())),
        req.body_json,
        int(req.value_format),
    )


class NearState:
    """The entries, indexes, health and race bookkeeping of one client's near cache.
    Thread-safe (one lock; every operation is short and never blocks on I/O)."""

    def __init__(self, config: NearCache, clock: Callable[[], float], rng: Optional[random.Random] = None) -> None:
        self.config = config
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._entries = _Entries(config.max_bytes, self._evicted)
        self._by_key: Dict[str, Set[RequestId]] = {}
        self._gen = 0  # bumped by flushes, disconnects and local broad purges: in-flight fills are dropped
        self._counter = 0  # key events applied so far
        self._log: Deque[Tuple[int, str]] = collections.deque(maxlen=config.event_log)
        self._health = _Health()
        self._failures = 0
        self._resuming = False
        self._calls = 0
        self.stats = NearStats()
        self.closed = False
        self._listeners: List[Callable[[cache_pb2.WatchEvent], None]] = []

    # ------------------------------------------------------------ requests

    def cacheable(self, req: cache_pb2.GetRequest) -> bool:
        kinds = self.config.kinds
        return kinds is None or req.kind in kinds

    def lookup(self, rid: RequestId, max_age: Optional[float]) -> Optional[GetResult]:
        """A near hit for ``rid`` (source NEAR), or None (counted as a miss)."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(rid) if self._healthy(now) else None
            if entry is not None and now < entry.expires_at:
                age = entry.result.age + (now - entry.sent_at)
                if max_age is None or max_age <= 0 or age <= max_age:
                    self.stats.hits += 1
                    r = entry.result
                    return GetResult(
                        raw=r.raw,
                        source=Source.NEAR,
                        key=r.key,
                        age=age,
                        ttl_remaining=entry.expires_at - now,
                        tags=list(r.tags),
                    )
            self.stats.misses += 1
            return None

    def begin_fill(self, rid: RequestId) -> FillTicket:
        with self._lock:
            return FillTicket(rid, self._clock(), self._gen, self._counter, self._health.connected)

    def finish_fill(self, ticket: FillTicket, result: GetResult) -> bool:
        """Keep ``result`` if nothing may have changed it since the ticket was taken."""
        if result.source is Source.STALE or result.ttl_remaining <= 0 or not result.key:
            return False
        with self._lock:
            if not self._fill_safe(ticket, result.key):
                self.stats.rejected_fills += 1
                return False
            size = len(result.raw) + self.config.key_overhead + len(result.key) + sum(len(t) for t in result.tags)
            size += sum(len(p) for p in ticket.rid[:3]) + len(ticket.rid[4])
            entry = _Entry(result, ticket.sent_at, ticket.sent_at + result.ttl_remaining, size)
            self._remove(ticket.rid)
            try:
                self._entries[ticket.rid] = entry
            except ValueError:  # larger than the whole cache
                return False
            self._by_key.setdefault(result.key, set()).add(ticket.rid)
            self.stats.fills += 1
            return True

    def _fill_safe(self, t: FillTicket, key: str) -> bool:
        if self.closed or not t.connected or t.gen != self._gen:
            return False
        if self._counter == t.counter:
            return True
        if not self._log or self._log[0][0] > t.counter + 1:
            return False  # the log no longer reaches back to the send
        return not any(k == key for c, k in self._log if c > t.counter)

    # ------------------------------------------------------------ local purges

    def invalidated(self, keys: Iterable[str], prefixes: Iterable[str], tags: Iterable[str]) -> None:
        """The client's own Invalidate returned OK: drop what it purged, at once."""
        keys, prefixes, tags = list(keys), list(prefixes), set(tags)
        with self._lock:
            for k in keys:
                self._drop_key(k)
            if prefixes or tags:
                doomed = [
                    rid
                    for rid, e in self._entries.items()
                    if any(e.result.key.startswith(p) for p in prefixes) or tags.intersection(e.result.tags)
                ]
                for rid in doomed:
                    self._remove(rid)
                self._gen += 1  # in-flight fills cannot be matched to a prefix or tag: drop them

    def flush(self) -> None:
        with self._lock:
            self._flush()

    # ------------------------------------------------------------ the stream

    def watch_request(self) -> cache_pb2.WatchRequest:
        c = self.config
        req = cache_pb2.WatchRequest(invalidated_only=c.invalidated_only)
        if c.kinds is not None:
            req.kinds.extend(c.kinds)
        else:
            req.prefixes.append("")
        hb = c.heartbeat_interval
        req.heartbeat_interval.seconds = int(hb)
        req.heartbeat_interval.nanos = int(round((hb - int(hb)) * 1e9))
        with self._lock:
            req.resume_after = self._health.position
        return req

    def connecting(self) -> None:
        """A new Watch call is about to start."""
        with self._lock:
            self._health.connected = False
            self._resuming = bool(self._health.position)
            if self._calls:
                self.stats.reconnects += 1
            self._calls += 1

    def on_message(self, msg: cache_pb2.WatchEvent) -> None:
        now = self._clock()
        with self._lock:
            h = self._health
            first = not h.connected
            h.connected = True
            if msg.position:
                h.position = msg.position
            t = msg.type
            if first and self._resuming and t != _WatchType.TYPE_RESET:
                self.stats.resumes += 1  # resumed: the server replays what was missed
            if t == _WatchType.TYPE_HEARTBEAT:
                self.stats.heartbeats += 1
                h.last_heard = now
            elif t == _WatchType.TYPE_RESET:
                self.stats.resets += 1
                self._flush()
            elif t == _WatchType.TYPE_LAGGED:
                self._flush()
            elif t in (_WatchType.TYPE_INVALIDATED, _WatchType.TYPE_UPDATED):
                self.stats.events += 1
                h.last_heard = now
                self._counter += 1
                self._log.append((self._counter, msg.key))
                self._drop_key(msg.key)
            self._failures = 0
            listeners = list(self._listeners)
        for fn in listeners:
            fn(msg)

    def on_break(self) -> float:
        """The Watch call failed or ended: in-flight fills are void; the backoff
        before the next call (exponential with jitter). Without a position to resume
        from, the entries are flushed now (the next stream could not replay)."""
        with self._lock:
            self._health.connected = False
            self._gen += 1
            if not self._health.position:
                self._flush()
            self._failures += 1
            c = self.config
            base = min(c.reconnect_max, c.reconnect_initial * 2 ** (self._failures - 1))
            return base * (0.5 + 0.5 * self._rng.random())

    def add_listener(self, fn: Callable[[cache_pb2.WatchEvent], None]) -> None:
        """Call ``fn(msg)`` after each Watch message is applied (tests, tools)."""
        with self._lock:
            self._listeners.append(fn)

    @property
    def connected(self) -> bool:
        return self._health.connected

    @property
    def last_heard(self) -> Optional[float]:
        return self._health.last_heard

    @property
    def position(self) -> str:
        return self._health.position

    def healthy(self) -> bool:
        with self._lock:
            return self._healthy(self._clock())

    def snapshot(self) -> NearStats:
        with self._lock:
            s = NearStats(**self.stats.__dict__)
            s.entries = len(self._entries)
            s.bytes = int(self._entries.currsize)
            return s

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._flush(count=False)

    # ------------------------------------------------------------ internals (lock held)

    def _healthy(self, now: float) -> bool:
        last = self._health.last_heard
        return not self.closed and last is not None and now - last < self.config.max_staleness

    def _flush(self, count: bool = True) -> None:
        self._entries = _Entries(self.config.max_bytes, self._evicted)  # (clear() would count evictions)
        self._by_key.clear()
        self._gen += 1
        if count:
            self.stats.flushes += 1

    def _drop_key(self, key: str) -> None:
        for rid in self._by_key.pop(key, ()):
            self._entries.pop(rid, None)

    def _remove(self, rid: RequestId) -> None:
        e = self._entries.pop(rid, None)
        if e is not None:
            self._unindex(rid, e)

    def _unindex(self, rid: RequestId, e: _Entry) -> None:
        rids = self._by_key.get(e.result.key)
        if rids is not None:
            rids.discard(rid)
            if not rids:
                del self._by_key[e.result.key]

    def _evicted(self, rid: RequestId, e: _Entry) -> None:
        self.stats.evictions += 1
        self._unindex(rid, e)


__all__ = ["NearCache", "NearStats", "NearState", "FillTicket", "request_id"]
