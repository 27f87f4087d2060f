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
import importlib
import datetime as _dt
import json
import os
import random
import time
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    FrozenSet,
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

from ._errors import CacheError, UnavailableError, from_rpc_error
from ._near import NearCache, NearState, RequestId, request_id
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


# ---------------------------------------------------------------- retries


RETRYABLE_CODES: FrozenSet[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


@dataclass(frozen=True)
class RetryPolicy:
    """How the clients retry a failed Get or Invalidate (both are safe to repeat) and
    reconnect a broken Watch.

    A call that fails with one of ``codes`` is made again after a delay: exponential
    backoff (``initial_backoff * multiplier**(n-1)``, at most ``max_backoff``) with
    ``jitter`` (each delay is drawn from ``[d*(1-jitter), d]``); when the error carries
    a google.rpc.RetryInfo the delay is never shorter than the server's
    ``retry_delay`` (plus up to ``jitter`` of it, so that clients told the same delay
    do not come back at once). At most ``max_attempts`` calls in all, and no retry
    whose delay would end after ``max_elapsed`` seconds from the first call or after
    the caller's deadline (``timeout``): the deadline bounds the whole call, retries
    included, and each attempt gets what is left of it. When it gives up the client
    raises the last error (``e.attempts`` says how many calls were made).

    A Watch that breaks with one of ``codes`` is resubscribed after the same backoff,
    up to ``watch_max_reconnects`` consecutive failed resubscriptions (None: no limit),
    within the watch's own ``timeout`` if it has one.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_elapsed: Optional[float] = 10.0
    codes: FrozenSet[grpc.StatusCode] = field(default=RETRYABLE_CODES)
    watch_max_reconnects: Optional[int] = 10

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must not be negative and multiplier must be >= 1")

    def backoff(self, failures: int, retry_after: Optional[float], rng: random.Random) -> float:
        """The delay before the next try after ``failures`` (>= 1) failed ones."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (failures - 1))
        delay = base * (1 - self.jitter * rng.random())
        if retry_after is not None and retry_after > 0:
            delay = max(delay, retry_after * (1 + self.jitter * rng.random()))
        return delay


NO_RETRY = RetryPolicy(max_attempts=1, watch_max_reconnects=0)

RetryOption = Union[RetryPolicy, bool, None]
"""A ``retry`` argument: a policy, True (the default policy), False (no retries), or
None (the client's setting)."""


def resolve_retry(value: RetryOption, default: RetryPolicy) -> RetryPolicy:
    if value is None:
        return default
    if value is True:  # the client's policy, or the default one if the client has none
        return default if default is not NO_RETRY else RetryPolicy()
    if value is False:
        return NO_RETRY
    return value


class Attempts:
    """The retry bookkeeping of one call (or, for a Watch, of its reconnects)."""

    def __init__(
        self,
        policy: RetryPolicy,
        deadline: Optional[float],
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.rng = rng
        self.started = clock()
        self.deadline = deadline
        self.deadline_at = None if deadline is None else self.started + deadline
        self.made = 0  # calls made so far
        self.failures = 0  # consecutive failures (for the backoff)

    def next_timeout(self) -> Optional[float]:
        """Count one more call; the time left of the caller's deadline for it."""
        self.made += 1
        if self.deadline_at is None or self.made == 1:
            return self.deadline
        return max(self.deadline_at - self.clock(), 0.0)

    def delay(self, err: CacheError, limit: Optional[int], bound_elapsed: bool = True) -> Optional[float]:
        """How long to wait before trying again after ``err``, or None to give up.
        ``limit`` bounds the tries (max_attempts for calls, reconnects for watches);
        ``bound_elapsed`` applies max_elapsed (not to watches, which run for long)."""
        p = self.policy
        if err.code not in p.codes:
            return None
        self.failures += 1
        if limit is not None and self.failures >= limit:
            return None
        d = p.backoff(self.failures, err.retry_after, self.rng)
        end = self.clock() + d
        if bound_elapsed and p.max_elapsed is not None and end - self.started > p.max_elapsed:
            return None
        if self.deadline_at is not None and end >= self.deadline_at:
            return None
        return d

    @contextlib.contextmanager
    def trying(self, call: "UnaryCall[Any]") -> Iterator["Try"]:
        """One attempt of ``call``: gRPC errors become typed errors; one that
        is worth retrying is swallowed and its wait left in ``Try.wait``, any
        other is raised (with the attempts made). The sync and async clients
        share this; only how they call and sleep differs."""
        attempt = Try()
        try:
            with call.errors():
                yield attempt
        except CacheError as err:
            err.attempts = self.made
            wait = self.delay(err, call.retry.max_attempts)
            if wait is None:
                raise
            attempt.wait = wait


@dataclass
class Try:
    """What an attempt left behind: how long to wait before the next one."""

    wait: float = 0.0


# ---------------------------------------------------------------- TLS and credentials

PemSource = Union[bytes, str, "os.PathLike[str]"]
"""PEM data (bytes) or the path of a PEM file (str or path-like)."""


def _pem(value: Optional[PemSource]) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    with open(os.fspath(value), "rb") as f:
        return f.read()


@dataclass(frozen=True)
class TLS:
    """TLS options of a client channel.

    ``ca``: the CA certificate(s) that verify the server (PEM bytes or a file path;
    None: the system roots). ``cert`` + ``key``: a client certificate chain and its
    private key, for mutual TLS (both or neither). ``server_name``: the name to verify
    the server certificate against, when it differs from the target's host."""

    ca: Optional[PemSource] = None
    cert: Optional[PemSource] = None
    key: Optional[PemSource] = None
    server_name: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLS: a client certificate needs its key (cert and key together)")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca), private_key=_pem(self.key), certificate_chain=_pem(self.cert)
        )

    def options(self) -> List[Tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def bearer_metadata(api_key: Optional[str]) -> List[Tuple[str, str]]:
    """The ``authorization: Bearer <key>`` metadata of a credential (none for None)."""
    if api_key is None:
        return []
    if not api_key or any(c in api_key for c in "\r\n"):
        raise ValueError("api_key must be a non-empty single-line string")
    return [("authorization", f"Bearer {api_key}")]


# ---------------------------------------------------------------- trace context

_otel_inject: Optional[Callable[..., Any]] = None
_otel_checked = False


def trace_metadata() -> List[Tuple[str, str]]:
    """The current OpenTelemetry context as gRPC metadata (W3C ``traceparent``,
    ``tracestate``, ``baggage``, per the configured propagators), when the optional
    ``opentelemetry-api`` is installed; otherwise nothing."""
    global _otel_inject, _otel_checked
    if not _otel_checked:
        try:
            _otel_inject = getattr(importlib.import_module("opentelemetry.propagate"), "inject", None)
        except ImportError:
            _otel_inject = None
        _otel_checked = True
    if _otel_inject is None:
        return []
    carrier: Dict[str, str] = {}
    try:
        _otel_inject(carrier)
    except Exception:  # a broken propagator must not fail the call
        return []
    return [(k.lower(), v) for k, v in carrier.items() if isinstance(v, str)]


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
        position=ev.position,
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
    retry: RetryPolicy = NO_RETRY
    wait_for_ready: Optional[bool] = None
    plaintext: bool = False

    def start(self, timeout: Optional[float] = None) -> Any:
        """Call the stub (with ``timeout``, what is left of the deadline): the reply
        (sync stub) or the call to await (grpc.aio stub)."""
        return self.method(
            self.request,
            timeout=self.deadline if timeout is None else timeout,
            metadata=self.metadata,
            wait_for_ready=self.wait_for_ready,
        )

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Re-raise a gRPC error from the block as the matching CacheError."""
        try:
            yield
        except grpc.RpcError as err:
            raise with_connection_hint(from_rpc_error(err, self.deadline is not None), self.plaintext) from err


def with_connection_hint(err: CacheError, plaintext: bool) -> CacheError:
    """Say what a TLS mismatch looks like: a plaintext client whose connection the
    server closes (it speaks TLS), or a TLS client the server refuses a certificate."""
    if err.code != grpc.StatusCode.UNAVAILABLE:
        return err
    hint = None
    if plaintext and "Socket closed" in err.message:
        hint = "this client connects without TLS and the server closed the connection: if it serves TLS, pass tls=TLS(ca=...)"
    elif not plaintext and ("TSI_" in err.message or "handshake" in err.message.lower()):
        hint = "the TLS handshake failed: check tls=TLS(ca=...) and, if the server requires one, the client certificate"
    if hint is not None:
        err.message = f"{err.message} ({hint})"
        err.args = (err.message,)
    return err


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
        tls: Union[TLS, bool, None] = None,
        api_key: Optional[str] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        options: Optional[Sequence[Tuple[str, Any]]] = None,
        default_timeout: Optional[float] = None,
        metadata: Optional[Metadata] = None,
        retry: RetryOption = True,
        wait_for_ready: Optional[bool] = None,
        propagate_trace_context: bool = True,
        sleep: Optional[Callable[[float], Any]] = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Optional[random.Random] = None,
        near_cache: Optional[NearCache] = None,
    ) -> None:
        self._retry = resolve_retry(retry, RetryPolicy())
        self._wait_for_ready = wait_for_ready
        self._propagate = propagate_trace_context
        self._sleep = sleep if sleep is not None else self._default_sleep()
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._owns_channel = channel is None
        if tls is not None and tls is not False and credentials is not None:
            raise ValueError("pass either tls or credentials, not both")
        if tls is True:
            tls = TLS()
        if channel is None:
            opts = list(options or ())
            if isinstance(tls, TLS):
                credentials = tls.credentials()
                opts += tls.options()
            if credentials is not None:
                channel = self._channel_api.secure_channel(target, credentials, options=opts)
            else:
                channel = self._channel_api.insecure_channel(target, options=opts)
        self._plaintext = channel is not None and self._owns_channel and credentials is None
        self._channel: _ChannelT = channel
        self._stub = cache_pb2_grpc.CacheStub(channel)
        self._default_timeout = default_timeout
        given = tuple(metadata or ())
        if api_key is not None and any(k.lower() == "authorization" for k, _ in given):
            raise ValueError("pass either api_key or an authorization entry in metadata, not both")
        self._metadata: Tuple[Tuple[str, Union[str, bytes]], ...] = tuple(bearer_metadata(api_key)) + given
        self._near: Optional[NearState] = NearState(near_cache, clock, self._rng) if near_cache else None

    @staticmethod
    def _default_sleep() -> Callable[[float], Any]:
        """time.sleep (sync) or asyncio.sleep (asyncio)."""
        raise NotImplementedError

    def _attempts(self, call: UnaryCall[Any]) -> Attempts:
        return Attempts(call.retry, call.deadline, self._clock, self._rng)

    def _call_metadata(self) -> Metadata:
        """The client's metadata plus the caller's trace context (when enabled)."""
        if not self._propagate:
            return self._metadata
        have = {k.lower() for k, _ in self._metadata}
        extra = [(k, v) for k, v in trace_metadata() if k not in have]
        return self._metadata + tuple(extra) if extra else self._metadata

    def _run_unary(self, prepare: Callable[[], UnaryCall[Any]]) -> Any:
        """Prepare and run one unary call: its parsed reply, or (asyncio) a coroutine of it."""
        raise NotImplementedError

    def _run_get(self, prepare: Callable[[], "GetPlan"]) -> Any:
        """Run one Get through the near cache (if any): a near hit, or the call whose
        reply may fill it; or (asyncio) a coroutine of that."""
        raise NotImplementedError

    def _get_plan(
        self,
        req: cache_pb2.GetRequest,
        make_call: Callable[[], UnaryCall[GetResult]],
        force_refresh: bool,
        max_age: Optional[Seconds],
    ) -> "GetPlan":
        """A near hit (the call is not even built: no metadata, no trace context), or
        the call to make and, if near-cacheable, the request's identity."""
        near = self._near
        if near is None or not near.cacheable(req):
            return GetPlan(make_call())
        rid = request_id(req)
        if not force_refresh:
            hit = near.lookup(rid, resolve_timeout(max_age, None))
            if hit is not None:
                return GetPlan(None, rid, hit)
        return GetPlan(make_call(), rid)

    @property
    def near_cache(self) -> Optional[NearState]:
        """The near cache's state (``.snapshot()`` for its counters), or None."""
        return self._near

    def near_stats(self) -> Any:
        """The near cache's counters (a :class:`cxcache.NearStats`), or None without one."""
        return self._near.snapshot() if self._near is not None else None

    def _open_watch(self, watch: "WatchOpener", event_timeout: Optional[float]) -> _StreamT:
        """Wrap a Watch (its first call started) in the client's watch stream."""
        raise NotImplementedError

    def _unary_call(
        self,
        method: Callable[..., Any],
        request: Any,
        timeout: Optional[Seconds],
        parse: Callable[[Any], _T],
        retry: RetryOption,
        wait_for_ready: Optional[bool],
    ) -> UnaryCall[_T]:
        deadline = resolve_timeout(timeout, self._default_timeout)
        return UnaryCall(
            method,
            request,
            deadline,
            self._call_metadata(),
            parse,
            resolve_retry(retry, self._retry),
            self._wait_for_ready if wait_for_ready is None else wait_for_ready,
            self._plaintext,
        )

    def get(
        self,
        kind: str,
        *,
        id: Optional[str] = None,
        variant: Optional[str] = None,
        params: Optional[Mapping[str, Any]] = None,
        body: Any = None,
        max_age: Optional[Seconds] = None,
        allow_stale: bool = False,
        force_refresh: bool = False,
        timeout: Optional[Seconds] = None,
        retry: RetryOption = None,
        wait_for_ready: Optional[bool] = None,
    ) -> _GetT:
        """Read one entry of ``kind``; returns a :class:`cxcache.GetResult`.

        Every argument after ``kind`` is keyword-only. ``timeout`` bounds the whole
        call including retries; ``retry`` and ``wait_for_ready`` override the client's
        settings for this call."""

        def prepare() -> GetPlan:
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
            return self._get_plan(
                req,
                lambda: self._unary_call(self._stub.Get, req, timeout, get_result, retry, wait_for_ready),
                force_refresh,
                max_age,
            )

        return cast(_GetT, self._run_get(prepare))

    def invalidate(
        self,
        *,
        keys: StrList = None,
        prefixes: StrList = None,
        tags: StrList = None,
        reason: Optional[str] = None,
        timeout: Optional[Seconds] = None,
        retry: RetryOption = None,
        wait_for_ready: Optional[bool] = None,
    ) -> _CountT:
        """Purge entries by exact key, key prefix or tag; returns the number purged.
        All arguments are keyword-only (see :meth:`get` for the last three). With a
        near cache, its matching entries are dropped as soon as the server answers OK."""

        def prepare() -> UnaryCall[int]:
            req = cache_pb2.InvalidateRequest(
                keys=_as_list(keys), prefixes=_as_list(prefixes), tags=_as_list(tags), reason=reason or ""
            )
            near = self._near
            parse: Callable[[Any], int] = purged
            if near is not None:

                def parse(resp: cache_pb2.InvalidateResponse) -> int:
                    near.invalidated(req.keys, req.prefixes, req.tags)
                    return purged(resp)

            return self._unary_call(self._stub.Invalidate, req, timeout, parse, retry, wait_for_ready)

        return cast(_CountT, self._run_unary(prepare))

    def watch(
        self,
        *,
        keys: StrList = None,
        prefixes: StrList = None,
        kinds: StrList = None,
        tags: StrList = None,
        timeout: Optional[Seconds] = None,
        event_timeout: Optional[Seconds] = None,
        reconnect: bool = True,
        retry: RetryOption = None,
        wait_for_ready: Optional[bool] = None,
        resume_after: Optional[str] = None,
        invalidated_only: bool = False,
        heartbeat_interval: Optional[Seconds] = None,
        heartbeats: bool = False,
    ) -> _StreamT:
        """Subscribe to events; iterate the returned stream. All arguments are
        keyword-only.

        ``timeout`` bounds the whole subscription (no default timeout applies to
        watches). ``event_timeout`` (sync client) bounds each wait for the next event
        during iteration: TimeoutError when none came in time (the stream stays usable).
        With ``reconnect`` (the default) a subscription broken by one of the retry
        policy's codes (UNAVAILABLE, RESOURCE_EXHAUSTED), or ended by the server (it
        does so only when it shuts down), is resubscribed with backoff, and the stream
        then yields a synthetic ``LAGGED`` event with ``resync=True``:
        events may have been missed, so re-read what you watch.

        ``resume_after`` (an event's ``position``) asks the server to replay what
        matched since then (a ``RESET`` event comes first when it cannot);
        ``invalidated_only`` drops UPDATED events; ``heartbeat_interval`` asks for
        HEARTBEAT events at that interval, which the stream yields only with
        ``heartbeats=True`` (every event carries ``position`` either way)."""
        req = cache_pb2.WatchRequest(
            keys=_as_list(keys),
            prefixes=_as_list(prefixes),
            kinds=_as_list(kinds),
            tags=_as_list(tags),
            resume_after=resume_after or "",
            invalidated_only=bool(invalidated_only),
        )
        if heartbeat_interval is not None:
            req.heartbeat_interval.CopyFrom(_duration(heartbeat_interval))
        deadline = resolve_timeout(timeout, None)
        policy = resolve_retry(retry, self._retry) if reconnect else NO_RETRY
        opener = WatchOpener(
            method=self._stub.Watch,
            request=req,
            metadata=self._call_metadata(),
            wait_for_ready=self._wait_for_ready if wait_for_ready is None else wait_for_ready,
            attempts=Attempts(policy, deadline, self._clock, self._rng),
            sleep=self._sleep,
            heartbeats=heartbeats,
        )
        return self._open_watch(opener, resolve_timeout(event_timeout, None))


@dataclass(frozen=True)
class GetPlan:
    """A prepared Get: the call, the near-cache identity of its request (None when
    it is not near-cacheable) and the near hit that answers it, if any."""

    call: Optional[UnaryCall[GetResult]]
    rid: Optional[RequestId] = None
    hit: Optional[GetResult] = None


@dataclass
class WatchOpener:
    """How to (re)start one subscription's Watch call."""

    method: Callable[..., Any]
    request: Any
    metadata: Metadata
    wait_for_ready: Optional[bool]
    attempts: Attempts
    sleep: Callable[[float], Any]
    heartbeats: bool = False

    @property
    def had_deadline(self) -> bool:
        return self.attempts.deadline_at is not None

    def open(self) -> Any:
        return self.method(
            self.request,
            timeout=self.attempts.next_timeout(),
            metadata=self.metadata,
            wait_for_ready=self.wait_for_ready,
        )

    def reconnect_delay(self, err: CacheError) -> Optional[float]:
        """The wait before resubscribing after ``err``, or None to give up."""
        limit = self.attempts.policy.watch_max_reconnects
        if limit is not None:
            limit += 1  # ``failures`` counts the break itself too
        return self.attempts.delay(err, limit, bound_elapsed=False)

    @property
    def reconnect_on_end(self) -> bool:
        """Whether a subscription the server ended (OK, as cxcache does when it shuts
        down: a Watch has no other end) is resubscribed."""
        p = self.attempts.policy
        return p.watch_max_reconnects != 0 and grpc.StatusCode.UNAVAILABLE in p.codes

    def subscribed(self) -> None:
        """A (re)subscription was accepted: the next break starts a new backoff."""
        self.attempts.failures = 0


class WatchStreamCore:
    """What the sync and asyncio watch streams share: the call, cancellation,
    reconnecting, and the conversion of its messages and errors."""

    def __init__(self, opener: WatchOpener, event_timeout: Optional[float] = None) -> None:
        self._opener = opener
        self._call = opener.open()
        self._cancelled = False
        self._had_deadline = opener.had_deadline
        self._event_timeout = event_timeout
        self.reconnects = 0
        """How many times the stream resubscribed."""
        self.position = ""
        """The position of the last message received (HEARTBEATs included)."""

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

    def _wanted(self, msg: cache_pb2.WatchEvent) -> bool:
        """Whether the stream yields ``msg`` (HEARTBEATs only when asked for)."""
        self.position = msg.position or self.position
        return self._opener.heartbeats or msg.type != cache_pb2.WatchEvent.TYPE_HEARTBEAT

    @staticmethod
    def _server_ended() -> CacheError:
        return UnavailableError("the server ended the subscription (it shuts down or restarts)")

    @staticmethod
    def _resync_event(err: CacheError) -> WatchEvent:
        return WatchEvent(
            type=EventType.LAGGED,
            key="",
            prefix="",
            tag="",
            kind="",
            reason=f"resync: the client resubscribed after {err.code.name}: {err.message}",
            time=_dt.datetime.now(_dt.timezone.utc),
            sequence=0,
            resync=True,
        )
