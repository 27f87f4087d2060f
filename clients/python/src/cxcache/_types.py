"""Plain-Python views of the cxcache.v1 messages."""

from __future__ import annotations

import datetime as _dt
import enum
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

from google.protobuf import duration_pb2

from .v1 import cache_pb2

Seconds = Union[int, float, _dt.timedelta]


class Source(str, enum.Enum):
    """Where a Get reply's value came from (cxcache.v1.Source without the prefix)."""

    UNSPECIFIED = "UNSPECIFIED"
    L1 = "L1"
    STORE = "STORE"
    UPSTREAM = "UPSTREAM"
    STALE = "STALE"
    COALESCED = "COALESCED"
    REVALIDATED = "REVALIDATED"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _from_pb(cls, number: int) -> "Source":
        try:
            name = cache_pb2.Source.Name(number)
        except ValueError:
            return cls.UNSPECIFIED
        return cls(name[len("SOURCE_") :])


class EventType(str, enum.Enum):
    """cxcache.v1.WatchEvent.Type without the prefix."""

    UNSPECIFIED = "UNSPECIFIED"
    INVALIDATED = "INVALIDATED"
    UPDATED = "UPDATED"
    LAGGED = "LAGGED"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _from_pb(cls, number: int) -> "EventType":
        try:
            name = cache_pb2.WatchEvent.Type.Name(number)
        except ValueError:
            return cls.UNSPECIFIED
        return cls(name[len("TYPE_") :])


def _seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def _duration(value: Seconds) -> duration_pb2.Duration:
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    if value < 0:
        raise ValueError("durations must not be negative")
    d = duration_pb2.Duration()
    d.seconds = int(value)
    d.nanos = int(round((value - int(value)) * 1e9))
    if d.nanos >= 1_000_000_000:
        d.seconds += 1
        d.nanos -= 1_000_000_000
    return d


_UNSET = object()


@dataclass(frozen=True)
class GetResult:
    """A Get reply. ``value`` is the parsed JSON, ``raw`` the canonical bytes."""

    raw: bytes
    source: Source
    key: str
    age: float
    ttl_remaining: float
    tags: List[str] = field(default_factory=list)
    _parsed: Any = field(default=_UNSET, repr=False, compare=False)

    @property
    def value(self) -> Any:
        if self._parsed is _UNSET:
            object.__setattr__(self, "_parsed", json.loads(self.raw) if self.raw else None)
        return self._parsed

    @classmethod
    def _from_pb(cls, resp: cache_pb2.GetResponse) -> "GetResult":
        return cls(
            raw=bytes(resp.value),
            source=Source._from_pb(resp.source),
            key=resp.key,
            age=_seconds(resp.age),
            ttl_remaining=_seconds(resp.ttl_remaining),
            tags=list(resp.tags),
        )


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    key: str
    prefix: str
    tag: str
    kind: str
    reason: str
    time: Optional[_dt.datetime]
    sequence: int

    @classmethod
    def _from_pb(cls, ev: cache_pb2.WatchEvent) -> "WatchEvent":
        return cls(
            type=EventType._from_pb(ev.type),
            key=ev.key,
            prefix=ev.prefix,
            tag=ev.tag,
            kind=ev.kind,
            reason=ev.reason,
            time=ev.time.ToDatetime(tzinfo=_dt.timezone.utc) if ev.HasField("time") else None,
            sequence=ev.sequence,
        )


def _param_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def build_get_request(
    kind: str,
    id: Optional[str] = None,
    variant: Optional[str] = None,
    params: Optional[Mapping[str, Any]] = None,
    body: Any = None,
    max_age: Optional[Seconds] = None,
    allow_stale: bool = False,
    force_refresh: bool = False,
) -> cache_pb2.GetRequest:
    req = cache_pb2.GetRequest(kind=kind, id=id or "", variant=variant or "")
    if params:
        for k, v in params.items():
            req.params[str(k)] = _param_str(v)
    if body is not None:
        if isinstance(body, (bytes, bytearray)):
            req.body_json = bytes(body).decode("utf-8")
        elif isinstance(body, str):
            req.body_json = body
        else:
            req.body_json = json.dumps(body, separators=(",", ":"), sort_keys=True)
    if max_age is not None or allow_stale or force_refresh:
        fr = req.freshness
        fr.SetInParent()
        if max_age is not None:
            fr.max_age.CopyFrom(_duration(max_age))
        fr.allow_stale = bool(allow_stale)
        fr.force_refresh = bool(force_refresh)
    return req


def build_invalidate_request(keys=None, prefixes=None, tags=None, reason=None) -> cache_pb2.InvalidateRequest:
    return cache_pb2.InvalidateRequest(
        keys=_as_list(keys), prefixes=_as_list(prefixes), tags=_as_list(tags), reason=reason or ""
    )


def build_watch_request(keys=None, prefixes=None, kinds=None, tags=None) -> cache_pb2.WatchRequest:
    return cache_pb2.WatchRequest(
        keys=_as_list(keys), prefixes=_as_list(prefixes), kinds=_as_list(kinds), tags=_as_list(tags)
    )


def _as_list(x: Any) -> List[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    return list(x)


__all__ = [
    "EventType",
    "GetResult",
    "Seconds",
    "Source",
    "WatchEvent",
]
