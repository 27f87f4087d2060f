"""Plain-Python views of the cxcache.v1 messages (built from them in _core)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Type, TypeVar, Union, cast

Seconds = Union[int, float, _dt.timedelta]

JSONValue = Union[Dict[str, Any], List[Any], str, int, float, bool, None]
"""What a JSON document parses to (the type of :meth:`GetResult.json`)."""

_T = TypeVar("_T")


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
    NEAR = "NEAR"
    """Served by the client's own near cache (client-side only; not in the proto)."""


class EventType(_NameEnum):
    """cxcache.v1.WatchEvent.Type without the prefix."""

    UNSPECIFIED = "UNSPECIFIED"
    INVALIDATED = "INVALIDATED"
    UPDATED = "UPDATED"
    LAGGED = "LAGGED"
    HEARTBEAT = "HEARTBEAT"
    """Nothing was missed up to ``position`` (only yielded by ``watch(heartbeats=True)``)."""
    RESET = "RESET"
    """The requested resume position could not be honoured: treat everything as changed."""


_UNSET = object()


@dataclass(frozen=True)
class GetResult:
    """A Get reply. ``raw`` is the canonical JSON bytes; ``json()`` (or the untyped
    ``value``) the parsed document; ``value_as(T)`` the document checked as, or built
    into, a ``T``."""

    raw: bytes
    source: Source
    key: str
    age: float
    ttl_remaining: float
    tags: List[str] = field(default_factory=list)
    _parsed: Any = field(default=_UNSET, repr=False, compare=False)

    @property
    def value(self) -> Any:
        """The parsed JSON (``Any``, for brevity: see :meth:`json` and :meth:`value_as`)."""
        if self._parsed is _UNSET:
            object.__setattr__(self, "_parsed", json.loads(self.raw) if self.raw else None)
        return self._parsed

    def json(self) -> JSONValue:
        """The parsed JSON document (None for an empty value); parsed once, then cached."""
        return cast(JSONValue, self.value)

    def value_as(self, type_: Type[_T]) -> _T:
        """The document as a ``type_``, statically typed as one.

        * a dataclass: built from the JSON object's keys that are its init fields
          (other keys, e.g. ones the platform adds later, are ignored; nested values
          stay as parsed JSON);
        * a class with ``model_validate`` (a pydantic v2 model): ``type_.model_validate(doc)``;
        * a TypedDict: the JSON object itself, after checking it is an object;
        * a plain type (``dict``, ``list``, ``str``, ``int``, ``float``, ``bool``): the
          document, after an isinstance check (an int is accepted as a float).

        Raises TypeError when the document is not of that shape.
        """
        doc = self.value
        validate = getattr(type_, "model_validate", None)
        if callable(validate):
            return cast(_T, validate(doc))
        if dataclasses.is_dataclass(type_):
            if not isinstance(doc, dict):
                raise TypeError(f"value is {type(doc).__name__}, not a JSON object for {type_.__name__}")
            names = {f.name for f in dataclasses.fields(type_) if f.init}
            return cast(_T, type_(**{k: v for k, v in doc.items() if k in names}))
        if hasattr(type_, "__required_keys__"):  # a TypedDict
            if not isinstance(doc, dict):
                raise TypeError(f"value is {type(doc).__name__}, not a JSON object")
            return cast(_T, doc)
        if type_ is float and isinstance(doc, int) and not isinstance(doc, bool):
            return cast(_T, float(doc))
        if isinstance(type_, type) and isinstance(doc, type_):
            if type_ is int and isinstance(doc, bool):
                raise TypeError("value is bool, not int")
            return doc
        raise TypeError(f"value is {type(doc).__name__}, not {getattr(type_, '__name__', type_)}")


@dataclass(frozen=True)
class WatchEvent:
    """One Watch event (``position``: see ``watch(resume_after=...)``). ``resync`` is True on the LAGGED event the client itself
    yields after it reconnected a broken subscription: events may have been missed
    in between, so re-read what you watch (as for a server-sent LAGGED)."""

    type: EventType
    key: str
    prefix: str
    tag: str
    kind: str
    reason: str
    time: Optional[_dt.datetime]
    sequence: int
    resync: bool = False
    position: str = ""
    """Where the event stands in the server instance's log: pass it as
    ``watch(resume_after=...)`` to resume after it (opaque)."""


__all__ = [
    "EventType",
    "GetResult",
    "JSONValue",
    "Seconds",
    "Source",
    "WatchEvent",
]
