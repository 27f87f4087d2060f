"""The part of the clients that does not depend on how the stub is called.

:class:`ClientCore` holds the public methods of both clients: it builds the
requests from the keyword arguments, resolves timeouts and metadata, and turns
replies and gRPC errors into the plain-Python results and typed exceptions.
:class:`~cxcache.CacheClient` and :class:`~cxcache.AsyncCacheClient` only say how
a prepared :class:`UnaryCall` is run (blocking or awaited) and which watch stream
wraps a Watch call; :class:`WatchStreamCore` is what their watch streams share.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    ClassVar,
    Generic,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
    cast,
)

import grpc
from google.protobuf import duration_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from ._errors import CacheError, from_rpc_error
from ._types import EventType, GetResult, Seconds, Source, WatchEvent
from .v1 import cache_pb2, cache_pb2_grpc

Metadata = Sequence[Tuple[str, Union[str, bytes]]]
StrList = Union[str, Iterable[str], None]

DEFAULT_TARGET = "127.0.0.1:50051"

_T = TypeVar("_T")
_E = TypeVar("_E", Source, EventType)
_ChannelT = TypeVar("_ChannelT")
_GetT = TypeVar("_GetT")
_CountT = TypeVar("_CountT")
_StreamT = TypeVar("_StreamT")


# ---------------------------------------------------------------- requests


def resolve_timeout(value: Optional[Seconds], default: Optional[float]) -> Optional[float]:
    """A call's deadline in seconds: ``value`` (float or timedelta), else ``default``."""
    if value is None:
        return default
    if hasattr(value, "total_seconds"):
        return value.total_seconds()  # type: ignore[union-attr]
    return float(value)


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


def _param_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _body_json(body: Any) -> str:
    if isinstance(body, (bytes, bytearray)):
        return bytes(body).decode("utf-8")
    if isinstance(body, str):
        return body
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def _as_list(x: StrList) -> List[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    return list(x)


# ---------------------------------------------------------------- replies


def _seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def _enum(cls: Type[_E], pb_enum: EnumTypeWrapper, prefix: str, number: int) -> _E:
    """The member of ``cls`` named like ``pb_enum``'s value ``number`` without ``prefix``."""
    try:
        name = pb_enum.Name(number)
    except ValueError:  # a value newer than these stubs
        return cls("UNSPECIFIED")
    return cls(name[len(prefix) :])


def get_result(resp: cache_pb2.GetResponse) -> GetResult:
    return GetResult(
        raw=bytes(resp.value),
        source=_enum(Source, cache_pb2.Source, "SOURCE_", resp.source),
        key=resp.key,
        age=_seconds(resp.age),
        ttl_remaining=_seconds(resp.ttl_remaining),
        tags=list(resp.tags),
    )


def purged(resp: cache_pb2.InvalidateResponse) -> int:
    return int(resp.purged)


def watch_event(ev: cache_pb2.WatchEvent) -> WatchEvent:
    return WatchEvent(
        type=_enum(EventType, cache_pb2.WatchEvent.Type, "TYPE_", ev.type),
        key=ev.key,
        prefix=ev.prefix,
        tag=ev.tag,
        kind=ev.kind,
        reason=ev.reason,
        time=ev.time.ToDatetime(tzinfo=_dt.timezone.utc) if ev.HasField("time") else None,
        sequence=ev.sequence,
    )


# ---------------------------------------------------------------- calls


@dataclass(frozen=True)
class UnaryCall(Generic[_T]):
    """One unary RPC, ready to start: the stub method, the request, the resolved
    deadline and metadata, and how to read the reply."""

    method: Callable[..., Any]
    request: Any
    deadline: Optional[float]
    metadata: Metadata
    parse: Callable[[Any], _T]

    def start(self) -> Any:
        """Call the stub: the reply (sync stub) or the call to await (grpc.aio stub)."""
        return self.method(self.request, timeout=self.deadline, metadata=self.metadata)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Re-raise a gRPC error from the block as the matching CacheError."""
        try:
            yield
        except grpc.RpcError as err:
            raise from_rpc_error(err, self.deadline is not None) from err


class ClientCore(Generic[_ChannelT, _GetT, _CountT, _StreamT]):
    """The methods the sync and asyncio clients share.

    A subclass sets ``_channel_api`` (``grpc`` or ``grpc.aio``) and implements
    ``_run_unary`` and ``_open_watch``. ``get`` and ``invalidate`` hand
    ``_run_unary`` a function that prepares the call, so that the asyncio client,
    like an ``async def``, does nothing (not even check its arguments) until its
    coroutine is awaited.
    """

    _channel_api: ClassVar[Any]

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        channel: Optional[_ChannelT] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        options: Optional[Sequence[Tuple[str, Any]]] = None,
        default_timeout: Optional[float] = None,
        metadata: Optional[Metadata] = None,
    ) -> None:
        self._owns_channel = channel is None
        if channel is None:
            if credentials is not None:
                channel = self._channel_api.secure_channel(target, credentials, options=options)
            else:
                channel = self._channel_api.insecure_channel(target, options=options)
        self._channel: _ChannelT = channel
        self._stub = cache_pb2_grpc.CacheStub(channel)
        self._default_timeout = default_timeout
        self._metadata = tuple(metadata or ())

    def _run_unary(self, prepare: Callable[[], UnaryCall[Any]]) -> Any:
        """Prepare and run one unary call: its parsed reply, or (asyncio) a coroutine of it."""
        raise NotImplementedError

    def _open_watch(self, call: Any, had_deadline: bool) -> _StreamT:
        """Wrap a started Watch call in the client's watch stream."""
        raise NotImplementedError

    def _unary_call(
        self, method: Callable[..., Any], request: Any, timeout: Optional[Seconds], parse: Callable[[Any], _T]
    ) -> UnaryCall[_T]:
        deadline = resolve_timeout(timeout, self._default_timeout)
        return UnaryCall(method, request, deadline, self._metadata, parse)

    def get(
        self,
        kind: str,
        id: Optional[str] = None,
        variant: Optional[str] = None,
        params: Optional[Mapping[str, Any]] = None,
        body: Any = None,
        max_age: Optional[Seconds] = None,
        allow_stale: bool = False,
        force_refresh: bool = False,
        timeout: Optional[Seconds] = None,
    ) -> _GetT:
        """Read one entry of ``kind``; returns a :class:`cxcache.GetResult`."""

        def prepare() -> UnaryCall[GetResult]:
            req = cache_pb2.GetRequest(kind=kind, id=id or "", variant=variant or "")
            if params:
                for k, v in params.items():
                    req.params[str(k)] = _param_str(v)
            if body is not None:
                req.body_json = _body_json(body)
            if max_age is not None or allow_stale or force_refresh:
                fr = req.freshness
                fr.SetInParent()
                if max_age is not None:
                    fr.max_age.CopyFrom(_duration(max_age))
                fr.allow_stale = bool(allow_stale)
                fr.force_refresh = bool(force_refresh)
            return self._unary_call(self._stub.Get, req, timeout, get_result)

        return cast(_GetT, self._run_unary(prepare))

    def invalidate(
        self,
        keys: StrList = None,
        prefixes: StrList = None,
        tags: StrList = None,
        reason: Optional[str] = None,
        timeout: Optional[Seconds] = None,
    ) -> _CountT:
        """Purge entries by exact key, key prefix or tag; returns the number purged."""

        def prepare() -> UnaryCall[int]:
            req = cache_pb2.InvalidateRequest(
                keys=_as_list(keys), prefixes=_as_list(prefixes), tags=_as_list(tags), reason=reason or ""
            )
            return self._unary_call(self._stub.Invalidate, req, timeout, purged)

        return cast(_CountT, self._run_unary(prepare))

    def watch(
        self,
        keys: StrList = None,
        prefixes: StrList = None,
        kinds: StrList = None,
        timeout: Optional[Seconds] = None,
        tags: StrList = None,
    ) -> _StreamT:
        """Subscribe to events; iterate the returned stream. ``timeout`` bounds the
        whole subscription (no default timeout applies to watches)."""
        req = cache_pb2.WatchRequest(
            keys=_as_list(keys), prefixes=_as_list(prefixes), kinds=_as_list(kinds), tags=_as_list(tags)
        )
        deadline = resolve_timeout(timeout, None)
        call = self._stub.Watch(req, timeout=deadline, metadata=self._metadata)
        return self._open_watch(call, deadline is not None)


class WatchStreamCore:
    """What the sync and asyncio watch streams share: the call, cancellation, and
    the conversion of its messages and errors."""

    def __init__(self, call: Any, had_deadline: bool = False) -> None:
        self._call = call
        self._cancelled = False
        self._had_deadline = had_deadline

    def cancel(self) -> None:
        """End the subscription; iteration then stops cleanly."""
        self._cancelled = True
        self._call.cancel()

    def _ended_by_cancel(self, code: grpc.StatusCode) -> bool:
        """Whether a call that ended with ``code`` was ended by :meth:`cancel`."""
        return self._cancelled and code == grpc.StatusCode.CANCELLED

    def _error(self, err: Any) -> CacheError:
        return from_rpc_error(err, self._had_deadline)

    @staticmethod
    def _event(msg: cache_pb2.WatchEvent) -> WatchEvent:
        return watch_event(msg)
