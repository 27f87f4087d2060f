"""Plain-Python views of the cxcache.v1 messages (built from them in _core)."""

from __future__ import annotations

import datetime as _dt
import enum
import json
from dataclasses import dataclass, field
from typing import Any, List, Optional, Union

Seconds = Union[int, float, _dt.timedelta]


class _NameEnum(str, enum.Enum):
    """A str enum whose members are the names of a proto enum's values without
    their common prefix; str() is that name."""

    def __str__(self) -> str:
        return self.value


class Source(_NameEnum):
    """Where a Get reply's value came from (cxcache.v1.Source without the prefix)."""

    UNSPECIFIED = "UNSPECIFIED"
    L1 = "L1"
    STORE = "STORE"
    UPSTREAM = "UPSTREAM"
    STALE = "STALE"
    COALESCED = "COALESCED"
    REVALIDATED = "REVALIDATED"


class EventType(_NameEnum):
    """cxcache.v1.WatchEvent.Type without the prefix."""

    UNSPECIFIED = "UNSPECIFIED"
    INVALIDATED = "INVALIDATED"
    UPDATED = "UPDATED"
    LAGGED = "LAGGED"


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


__all__ = [
    "EventType",
    "GetResult",
    "Seconds",
    "Source",
    "WatchEvent",
]
