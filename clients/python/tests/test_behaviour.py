"""Offline tests (no server, no sockets, no real sleeps) of the client behaviours:
retries honouring google.rpc.RetryInfo, wait_for_ready, keyword-only options, the
deprecated exception names, typed values, field violations, upstream ErrorInfo,
trace-context propagation, and the reconnecting Watch with its per-event timeout."""

import asyncio
import dataclasses
import sys
import threading
import warnings
from pathlib import Path
from typing import TypedDict

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

import cxcache
from cxcache import (
    AsyncCacheClient,
    CacheClient,
    CacheError,
    EventType,
    FieldViolation,
    GetResult,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RetryPolicy,
    Source,
    UnavailableError,
)
from cxcache import _core
from cxcache._errors import DETAILS_KEY, from_rpc_error
from cxcache.v1 import cache_pb2

UNAVAILABLE, EXHAUSTED = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED
OK_REPLY = cache_pb2.GetResponse(value=b'{"id":"q1","name":"Sales","size":3}', source=cache_pb2.SOURCE_STORE, key="k")


# ---------------------------------------------------------------- fakes


def _status_trailers(code, message, *details):
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    st = status_pb2.Status(code=code.value[0], message=message, details=packed)
    return ((DETAILS_KEY, st.SerializeToString()),)


class FakeRpcError(grpc.RpcError):
    """What a failed sync call raises: code, details and the status-details trailer."""

    def __init__(self, code, message="", *details):
        self._code, self._message = code, message
        self._trailers = _status_trailers(code, message, *details) if details else ()

    def code(self):
        return self._code

    def details(self):
        return self._message

    def trailing_metadata(self):
        return self._trailers

    def initial_metadata(self):
        return ()


def retry_info(seconds):
    return error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=int(seconds), nanos=int(round((seconds % 1) * 1e9)))
    )


class FakeClock:
    """A monotonic clock that only moves when the client sleeps."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds):
        self.sleep(seconds)


class ScriptedChannel:
    """A channel whose unary methods answer from a script (one reply or exception per
    call, the last repeated) and whose Watch calls are made by `watches` (one factory
    per call, the last repeated)."""

    def __init__(self, script=(OK_REPLY,), watches=(lambda: FakeWatchCall(),), is_async=False):
        self.script = list(script)
        self.watches = list(watches)
        self.is_async = is_async
        self.calls = []  # (method, timeout, metadata, wait_for_ready)

    def _next(self, items, n):
        return items[min(n, len(items) - 1)]

    def unary_unary(self, path, **_):
        name = path.rsplit("/", 1)[1]

        def call(request, timeout=None, metadata=None, wait_for_ready=None):
            n = sum(1 for c in self.calls if c[0] == name)
            self.calls.append((name, timeout, metadata, wait_for_ready))
            reply = self._next(self.script, n)
            if name == "Invalidate" and not isinstance(reply, Exception):
                reply = cache_pb2.InvalidateResponse(purged=1)
            if not self.is_async:
                if isinstance(reply, Exception):
                    raise reply
                return reply

            async def answer():
                if isinstance(reply, Exception):
                    raise aio_error(reply)
                return reply

            return answer()

        return call

    def unary_stream(self, path, **_):
        def call(request, timeout=None, metadata=None, wait_for_ready=None):
            n = sum(1 for c in self.calls if c[0] == "Watch")
            self.calls.append(("Watch", timeout, metadata, wait_for_ready))
            return self._next(self.watches, n)()

        return call


def aio_error(err):
    return grpc.aio.AioRpcError(
        err.code(), grpc.aio.Metadata(), grpc.aio.Metadata(*err.trailing_metadata()), details=err.details()
    )


def sync_client(script=(OK_REPLY,), watches=(lambda: FakeWatchCall(),), **kw):
    clock = FakeClock()
    channel = ScriptedChannel(script, watches)
    kw.setdefault("sleep", clock.sleep)
    return CacheClient(channel=channel, clock=clock, **kw), channel, clock


def async_client(script=(OK_REPLY,), watches=(), **kw):
    clock = FakeClock()
    channel = ScriptedChannel(script, watches, is_async=True)
    return AsyncCacheClient(channel=channel, clock=clock, sleep=clock.async_sleep, **kw), channel, clock


def ev(key, seq):
    return cache_pb2.WatchEvent(type=cache_pb2.WatchEvent.TYPE_INVALIDATED, key=key, sequence=seq)


class FakeWatchCall(grpc.RpcError):
    """A sync Watch call: accepted (or refused with `refuse`), yields `events`, then
    ends with `error` (an RpcError) or OK. With `gate`, waits for it before each event;
    with `hang`, stays open after the events until cancelled."""

    def __init__(self, events=(), error=None, refuse=None, gate=None, hang=False):
        self.events, self.error, self.refuse, self.gate, self.hang = list(events), error, refuse, gate, hang
        self.cancelled = threading.Event()

    # the RpcError side (a refused call is its own error)
    def code(self):
        if self.cancelled.is_set():
            return grpc.StatusCode.CANCELLED
        return self.refuse.code() if self.refuse else grpc.StatusCode.OK

    def details(self):
        return self.refuse.details() if self.refuse else ""

    def trailing_metadata(self):
        return self.refuse.trailing_metadata() if self.refuse else ()

    def initial_metadata(self):
        return ()

    def done(self):
        return self.refuse is not None or self.cancelled.is_set()

    def cancel(self):
        self.cancelled.set()
        if self.gate:
            self.gate.set()

    def __iter__(self):
        for e in self.events:
            if self.gate:
                self.gate.wait()
            if self.cancelled.is_set():
                raise FakeRpcError(grpc.StatusCode.CANCELLED, "cancelled")
            yield e
        if self.hang:  # an open subscription with nothing more to say, until cancelled
            self.cancelled.wait()
            raise FakeRpcError(grpc.StatusCode.CANCELLED, "cancelled")
        if self.error is not None:
            raise self.error


# ---------------------------------------------------------------- retries


def test_retry_honours_retry_info_then_backs_off_exponentially():
    script = [
        FakeRpcError(UNAVAILABLE, "restarting", retry_info(0.5)),
        FakeRpcError(EXHAUSTED, "busy"),
        FakeRpcError(EXHAUSTED, "busy"),
        OK_REPLY,
    ]
    client, channel, clock = sync_client(script)
    r = client.get("routing.queue", id="q1")
    assert r.source is Source.STORE and len(channel.calls) == 4
    first, second, third = clock.sleeps
    assert 0.5 <= first <= 0.5 * 1.2  # never before the server's RetryInfo, at most +jitter
    # then initial_backoff * 2**(failures-1), jittered down by at most 20%
    assert 0.2 * 0.8 <= second <= 0.2 and 0.4 * 0.8 <= third <= 0.4


def test_retry_gives_up_after_max_attempts_with_the_last_error():
    client, channel, clock = sync_client([FakeRpcError(UNAVAILABLE, "down")])
    with pytest.raises(UnavailableError) as ei:
        client.get("k")
    assert len(channel.calls) == 4 and len(clock.sleeps) == 3 and ei.value.attempts == 4
    client, channel, clock = sync_client(
        [FakeRpcError(UNAVAILABLE, "down")], retry=RetryPolicy(max_attempts=2, initial_backoff=0.01)
    )
    with pytest.raises(UnavailableError):
        client.invalidate(keys="k")
    assert len(channel.calls) == 2 and len(clock.sleeps) == 1 and clock.sleeps[0] <= 0.01


def test_other_codes_are_not_retried():
    client, channel, clock = sync_client([FakeRpcError(grpc.StatusCode.NOT_FOUND, "gone"), OK_REPLY])
    with pytest.raises(NotFoundError) as ei:
        client.get("k")
    assert len(channel.calls) == 1 and clock.sleeps == [] and ei.value.attempts == 1


def test_retries_stay_inside_the_callers_deadline():
    # RetryInfo says 2s, the caller gave the call 1s: raise at once, do not wait
    client, channel, clock = sync_client([FakeRpcError(EXHAUSTED, "quota", retry_info(2)), OK_REPLY])
    with pytest.raises(ResourceExhaustedError) as ei:
        client.get("k", timeout=1)
    assert ei.value.retry_after == 2 and len(channel.calls) == 1 and clock.sleeps == []
    # a retry that fits gets what is left of the deadline
    client, channel, clock = sync_client([FakeRpcError(EXHAUSTED, "quota", retry_info(0.3)), OK_REPLY])
    client.get("k", timeout=1)
    (_, t1, _, _), (_, t2, _, _) = channel.calls
    assert t1 == 1 and t2 == pytest.approx(1 - clock.sleeps[0])


def test_total_time_is_bounded_without_a_deadline():
    client, channel, clock = sync_client([FakeRpcError(EXHAUSTED, "quota", retry_info(30)), OK_REPLY])
    with pytest.raises(ResourceExhaustedError):
        client.get("k")  # 30s > max_elapsed (10s)
    assert len(channel.calls) == 1 and clock.sleeps == []
    client, channel, clock = sync_client(
        [FakeRpcError(EXHAUSTED, "quota", retry_info(30)), OK_REPLY], retry=RetryPolicy(max_elapsed=None)
    )
    client.get("k")
    assert clock.sleeps and clock.sleeps[0] >= 30


def test_retry_opt_out_per_client_and_per_call():
    down = [FakeRpcError(UNAVAILABLE, "down"), OK_REPLY]
    client, channel, _ = sync_client(down, retry=False)
    with pytest.raises(UnavailableError):
        client.get("k")
    assert len(channel.calls) == 1
    client, channel, _ = sync_client(down)
    with pytest.raises(UnavailableError):
        client.get("k", retry=False)
    assert len(channel.calls) == 1
    client, channel, _ = sync_client(down, retry=False)
    assert client.get("k", retry=True).key == "k" and len(channel.calls) == 2
    # per-call True keeps the client's own policy
    one = RetryPolicy(max_attempts=1)
    client, channel, _ = sync_client(down, retry=one)
    with pytest.raises(UnavailableError):
        client.get("k", retry=True)
    assert len(channel.calls) == 1


def test_async_client_retries_with_its_sleep():
    async def main():
        client, channel, clock = async_client([FakeRpcError(UNAVAILABLE, "down", retry_info(0.25)), OK_REPLY])
        r = await client.get("k", timeout=5)
        return r, channel, clock

    r, channel, clock = asyncio.run(main())
    assert r.key == "k" and len(channel.calls) == 2 and 0.25 <= clock.sleeps[0] <= 0.3


def test_backoff_policy():
    import random

    p = RetryPolicy(initial_backoff=1, multiplier=3, max_backoff=5, jitter=0)
    rng = random.Random(1)
    assert [p.backoff(n, None, rng) for n in (1, 2, 3, 4)] == [1, 3, 5, 5]
    assert p.backoff(1, 4.0, rng) == 4.0
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=2)


def test_wait_for_ready_per_client_and_per_call():
    client, channel, _ = sync_client(wait_for_ready=True)
    client.get("k")
    client.get("k", wait_for_ready=False)
    client.invalidate(keys="k")
    assert [c[3] for c in channel.calls] == [True, False, True]
    client, channel, _ = sync_client()
    client.get("k")
    assert channel.calls[0][3] is None  # grpc's default (fail fast)


# ---------------------------------------------------------------- API shape


def test_options_are_keyword_only():
    client, _, _ = sync_client()
    with pytest.raises(TypeError):
        client.get("routing.queue", "q1")  # type: ignore[misc]
    with pytest.raises(TypeError):
        client.invalidate(["k"])  # type: ignore[misc]
    with pytest.raises(TypeError):
        client.watch(["k"])  # type: ignore[misc]
    assert client.get("routing.queue", id="q1").key == "k"


def test_old_exception_names_are_deprecated_aliases():
    with pytest.warns(DeprecationWarning, match="InvalidArgumentError"):
        old = cxcache.InvalidArgument
    assert old is InvalidArgumentError
    with pytest.warns(DeprecationWarning):
        from cxcache import NotFound, ResourceExhausted, Unavailable  # noqa: F401
    assert (NotFound, ResourceExhausted, Unavailable) == (NotFoundError, ResourceExhaustedError, UnavailableError)
    with pytest.warns(DeprecationWarning):
        from cxcache._errors import Cancelled
    assert Cancelled is cxcache.CancelledError
    # existing `except OldName` code keeps catching
    client, _, _ = sync_client([FakeRpcError(grpc.StatusCode.NOT_FOUND, "gone")])
    with pytest.raises(NotFound):
        client.get("k")
    with pytest.raises(AttributeError):
        cxcache.NoSuchName  # noqa: B018
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cxcache.InvalidArgumentError.__name__ == "InvalidArgumentError"  # the new names do not warn
    for name in ("InvalidArgument", "NotFound", "Unavailable", "Unauthenticated", "Internal", "DeadlineExceeded"):
        with pytest.warns(DeprecationWarning):
            assert getattr(cxcache, name).__name__ == name + "Error"


@dataclasses.dataclass
class Queue:
    id: str
    name: str


class QueueDict(TypedDict):
    id: str
    name: str


def test_typed_value():
    r = GetResult(raw=OK_REPLY.value, source=Source.STORE, key="k", age=0, ttl_remaining=1)
    assert r.json() == {"id": "q1", "name": "Sales", "size": 3} and r.json() is r.value
    q = r.value_as(Queue)  # unknown keys ("size") are ignored
    assert q == Queue(id="q1", name="Sales")
    assert r.value_as(dict)["size"] == 3
    assert r.value_as(QueueDict)["name"] == "Sales"
    with pytest.raises(TypeError):
        r.value_as(list)
    lst = GetResult(raw=b"[1,2]", source=Source.L1, key="k", age=0, ttl_remaining=1)
    assert lst.value_as(list) == [1, 2]
    with pytest.raises(TypeError):
        lst.value_as(Queue)
    num = GetResult(raw=b"3", source=Source.L1, key="k", age=0, ttl_remaining=1)
    assert num.value_as(float) == 3.0 and isinstance(num.value_as(float), float) and num.value_as(int) == 3
    with pytest.raises(TypeError):
        GetResult(raw=b"true", source=Source.L1, key="k", age=0, ttl_remaining=1).value_as(int)
    assert GetResult(raw=b"", source=Source.L1, key="k", age=0, ttl_remaining=1).json() is None

    class Model:  # duck-typed like a pydantic v2 model
        @classmethod
        def model_validate(cls, doc):
            return ("validated", doc["id"])

    assert r.value_as(Model) == ("validated", "q1")


def test_field_violations_are_named():
    bad = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="kind", description="unknown")]
    )
    e = from_rpc_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad request", bad))
    assert isinstance(e, InvalidArgumentError)
    (v,) = e.field_violations
    assert v == FieldViolation(field="kind", description="unknown") and (v.field, v.description) == ("kind", "unknown")
    field, description = v
    assert (field, description) == ("kind", "unknown")
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.field = "x"  # type: ignore[misc]
    assert "[kind: unknown]" in str(e)
    # code that builds errors with tuples still works
    assert CacheError("m", field_violations=[("a", "b")]).field_violations == [FieldViolation("a", "b")]


def test_upstream_error_info_is_exposed():
    info = error_details_pb2.ErrorInfo(
        reason="bad.request",
        domain="cxcache.upstream",
        metadata={"status": "400", "message": "The queue name must be unique"},
    )
    e = from_rpc_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "upstream rejected the request", info))
    assert e.upstream_message == "The queue name must be unique"
    assert e.upstream_status == 400 and e.upstream_reason == "bad.request"
    assert e.error_info is not None and e.error_info.domain == "cxcache.upstream"
    assert "The queue name must be unique" in str(e) and "400" in str(e)
    # an ErrorInfo of another domain is not the platform's
    other = from_rpc_error(
        FakeRpcError(EXHAUSTED, "quota", error_details_pb2.ErrorInfo(reason="UPSTREAM_429", domain="cxcache"))
    )
    assert other.upstream_message is None and other.upstream_status is None and other.error_info.reason == "UPSTREAM_429"
    plain = from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "gone"))
    assert (plain.upstream_message, plain.upstream_status, plain.error_info) == (None, None, None)


def test_version_comes_from_the_repository_version_file():
    version_file = Path(__file__).resolve().parents[3] / "VERSION"
    if not version_file.exists():
        pytest.skip("not in the repository")
    assert cxcache.__version__ == version_file.read_text().strip()


# ---------------------------------------------------------------- trace context


@pytest.fixture()
def otel(monkeypatch):
    """Make _core see `inject` as opentelemetry.propagate.inject."""

    def use(inject):
        monkeypatch.setattr(_core, "_otel_inject", inject)
        monkeypatch.setattr(_core, "_otel_checked", True)

    return use


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_trace_context_is_injected_into_metadata(otel):
    otel(lambda carrier: carrier.update({"traceparent": TRACEPARENT, "tracestate": "a=b"}))
    client, channel, _ = sync_client(metadata=[("x-tenant", "t1")])
    client.get("k")
    client.watch(keys="k")
    for _, _, md, _ in channel.calls:
        assert md == (("x-tenant", "t1"), ("traceparent", TRACEPARENT), ("tracestate", "a=b"))
    client, channel, _ = sync_client(propagate_trace_context=False)
    client.get("k")
    assert channel.calls[0][2] == ()
    # the caller's own traceparent wins
    client, channel, _ = sync_client(metadata=[("traceparent", "mine")])
    client.get("k")
    assert channel.calls[0][2] == (("traceparent", "mine"), ("tracestate", "a=b"))


def test_no_opentelemetry_no_metadata(monkeypatch):
    monkeypatch.setattr(_core, "_otel_checked", False)
    monkeypatch.setitem(sys.modules, "opentelemetry.propagate", None)  # import fails
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    assert _core.trace_metadata() == []
    client, channel, _ = sync_client()
    client.get("k")
    assert channel.calls[0][2] == ()


def test_broken_propagator_does_not_fail_the_call(otel):
    def boom(carrier):
        raise RuntimeError("propagator bug")

    otel(boom)
    client, channel, _ = sync_client()
    assert client.get("k").key == "k" and channel.calls[0][2] == ()


def test_real_opentelemetry_span_context(monkeypatch):
    pytest.importorskip("opentelemetry")
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    monkeypatch.setattr(_core, "_otel_checked", False)
    ctx = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    client, channel, _ = sync_client()
    with trace.use_span(NonRecordingSpan(ctx)):
        client.get("k")
    assert ("traceparent", TRACEPARENT) in channel.calls[0][2]


# ---------------------------------------------------------------- watch


def test_watch_reconnects_and_reports_the_gap():
    watches = [
        lambda: FakeWatchCall([ev("a", 1)], error=FakeRpcError(UNAVAILABLE, "server went away")),
        lambda: FakeWatchCall(refuse=FakeRpcError(UNAVAILABLE, "still down")),
        lambda: FakeWatchCall([ev("b", 1)], hang=True),
    ]
    client, channel, clock = sync_client(watches=watches)
    with client.watch(keys=["a", "b"]) as stream:
        events = [next(stream) for _ in range(3)]
    assert [(e.type, e.key, e.resync) for e in events] == [
        (EventType.INVALIDATED, "a", False),
        (EventType.LAGGED, "", True),
        (EventType.INVALIDATED, "b", False),
    ]
    assert "UNAVAILABLE" in events[1].reason and stream.reconnects == 2
    assert [c[0] for c in channel.calls] == ["Watch"] * 3
    assert len(clock.sleeps) == 2 and clock.sleeps[1] > clock.sleeps[0] * 0.79  # backoff grows (jittered)


def test_watch_without_reconnect_raises():
    watches = [lambda: FakeWatchCall([ev("a", 1)], error=FakeRpcError(UNAVAILABLE, "gone"))]
    client, channel, _ = sync_client(watches=watches)
    stream = client.watch(keys="a", reconnect=False)
    assert next(stream).key == "a"
    with pytest.raises(UnavailableError):
        next(stream)
    assert len(channel.calls) == 1


def test_watch_gives_up_after_max_reconnects_and_not_on_other_codes():
    watches = [
        lambda: FakeWatchCall(error=FakeRpcError(UNAVAILABLE, "gone")),
        lambda: FakeWatchCall(refuse=FakeRpcError(UNAVAILABLE, "down")),
    ]
    client, channel, clock = sync_client(watches=watches, retry=RetryPolicy(watch_max_reconnects=2))
    with pytest.raises(UnavailableError, match="down"):
        list(client.watch(keys="a"))
    assert len(channel.calls) == 3 and len(clock.sleeps) == 2
    client, channel, clock = sync_client(
        watches=[lambda: FakeWatchCall(error=FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "no"))]
    )
    with pytest.raises(cxcache.PermissionDeniedError):
        list(client.watch(keys="a"))
    assert len(channel.calls) == 1 and clock.sleeps == []


def test_watch_per_event_timeout():
    gate = threading.Event()
    client, _, _ = sync_client(watches=[lambda: FakeWatchCall([ev("a", 1)], gate=gate)])
    stream = client.watch(keys="a", event_timeout=0.05, reconnect=False)
    with pytest.raises(TimeoutError):
        next(stream)
    with pytest.raises(TimeoutError):
        stream.next_event(timeout=0.02)
    gate.set()
    assert stream.next_event(timeout=5).key == "a"  # the stream stayed usable
    with pytest.raises(StopIteration):
        stream.next_event(timeout=5)


def test_watch_the_server_ended_is_resubscribed():
    # cxcache ends a Watch (status OK) only when it shuts down: resubscribe, report the gap
    gate = threading.Event()
    watches = [lambda: FakeWatchCall([ev("a", 1)]), lambda: FakeWatchCall([ev("b", 1)], gate=gate)]
    client, channel, clock = sync_client(watches=watches)
    stream = client.watch(keys="a")
    assert next(stream).key == "a"
    resync = next(stream)
    assert resync.type is EventType.LAGGED and resync.resync and "ended" in resync.reason
    gate.set()
    assert next(stream).key == "b" and len(channel.calls) == 2
    stream.cancel()
    # without reconnect, the end is the end
    client, channel, _ = sync_client(watches=[lambda: FakeWatchCall([ev("a", 1)])])
    assert [e.key for e in client.watch(keys="a", reconnect=False)] == ["a"]
    client, channel, _ = sync_client(watches=[lambda: FakeWatchCall([ev("a", 1)])], retry=False)
    assert [e.key for e in client.watch(keys="a")] == ["a"] and len(channel.calls) == 1


def test_watch_cancel_during_wait_stops_iteration():
    gate = threading.Event()
    client, _, _ = sync_client(watches=[lambda: FakeWatchCall([ev("a", 1)], gate=gate)])
    stream = client.watch(keys="a")
    threading.Timer(0.05, stream.cancel).start()
    assert list(stream) == []


class FakeAioWatchCall:
    def __init__(self, events=(), error=None, refuse=None):
        self.events, self.error, self.refuse = list(events), error, refuse

    async def initial_metadata(self):
        return grpc.aio.Metadata()

    def done(self):
        return self.refuse is not None

    async def code(self):
        return self.refuse.code() if self.refuse else grpc.StatusCode.OK

    async def details(self):
        return self.refuse.details() if self.refuse else ""

    async def read(self):
        if self.refuse:
            raise aio_error(self.refuse)
        if self.events:
            return self.events.pop(0)
        if self.error:
            raise aio_error(self.error)
        return grpc.aio.EOF

    def cancel(self):
        return True


def test_async_watch_reconnects_and_reports_the_gap():
    watches = [
        lambda: FakeAioWatchCall([ev("a", 1)], error=FakeRpcError(UNAVAILABLE, "server went away")),
        lambda: FakeAioWatchCall(refuse=FakeRpcError(UNAVAILABLE, "still down")),
        lambda: FakeAioWatchCall([ev("b", 1)]),
    ]

    async def main():
        client, channel, clock = async_client(watches=watches)
        stream = client.watch(keys=["a", "b"])
        events = [await stream.__anext__() for _ in range(3)]
        # the server then ends the subscription: resubscribed too (to the same fake)
        ended = await stream.__anext__()
        assert ended.resync and "ended" in ended.reason and stream.reconnects == 3
        stream.cancel()
        return events, stream, clock

    events, stream, clock = asyncio.run(main())
    assert [(e.type, e.key, e.resync) for e in events] == [
        (EventType.INVALIDATED, "a", False),
        (EventType.LAGGED, "", True),
        (EventType.INVALIDATED, "b", False),
    ]
    assert len(clock.sleeps) == 3

    async def no_reconnect():
        client, _, _ = async_client(watches=watches[:1])
        stream = client.watch(keys="a", reconnect=False)
        assert (await stream.__anext__()).key == "a"
        with pytest.raises(UnavailableError):
            await stream.__anext__()

    asyncio.run(no_reconnect())
