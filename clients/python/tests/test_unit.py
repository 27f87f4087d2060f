"""Client behaviour against an in-process fake server: request encoding, result
decoding and the error model (google.rpc details in grpc-status-details-bin)."""

import asyncio
import datetime as dt
import json
import time
from concurrent import futures

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

import cxcache
from cxcache import (
    AsyncCacheClient,
    CacheClient,
    DeadlineExceededError,
    EventType,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    Source,
    UnavailableError,
)
from cxcache.v1 import cache_pb2, cache_pb2_grpc


def _abort(context, code, message, *details):
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    context.abort_with_status(rpc_status.to_status(status_pb2.Status(code=code, message=message, details=packed)))


class FakeCache(cache_pb2_grpc.CacheServicer):
    def Get(self, request, context):
        if request.kind == "echo":
            echo = {
                "kind": request.kind,
                "id": request.id,
                "variant": request.variant,
                "params": dict(request.params),
                "body_json": request.body_json,
                "has_freshness": request.HasField("freshness"),
                "max_age": request.freshness.max_age.ToTimedelta().total_seconds(),
                "allow_stale": request.freshness.allow_stale,
                "force_refresh": request.freshness.force_refresh,
            }
            return cache_pb2.GetResponse(
                value=json.dumps(echo).encode(),
                source=cache_pb2.SOURCE_UPSTREAM,
                key="test:echo",
                age=duration_pb2.Duration(seconds=1, nanos=500_000_000),
                ttl_remaining=duration_pb2.Duration(seconds=30),
                tags=["queue:1", "kind:echo"],
            )
        if request.kind == "l1":
            return cache_pb2.GetResponse(value=b"[1,2]", source=cache_pb2.SOURCE_L1, key="k")
        if request.kind == "bad":
            _abort(
                context,
                code_pb2.INVALID_ARGUMENT,
                "unknown kind",
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field="kind", description="unknown kind 'bad'"),
                        error_details_pb2.BadRequest.FieldViolation(field="params.x", description="not declared"),
                    ]
                ),
            )
        if request.kind == "quota":
            _abort(
                context,
                code_pb2.RESOURCE_EXHAUSTED,
                "upstream quota spent",
                error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=7, nanos=250_000_000)),
                error_details_pb2.ErrorInfo(reason="UPSTREAM_429", domain="cxcache"),
            )
        if request.kind == "down":
            _abort(
                context,
                code_pb2.UNAVAILABLE,
                "upstream failing",
                error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=500_000_000)),
            )
        if request.kind == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such queue")
        if request.kind == "server-timeout":
            context.abort(grpc.StatusCode.CANCELLED, "Timeout expired")
        if request.kind == "slow":
            time.sleep(1.5)
            return cache_pb2.GetResponse()
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "kind not faked")

    def Invalidate(self, request, context):
        if not (request.keys or request.prefixes or request.tags):
            _abort(
                context,
                code_pb2.INVALID_ARGUMENT,
                "nothing to invalidate",
                error_details_pb2.BadRequest(
                    field_violations=[error_details_pb2.BadRequest.FieldViolation(field="keys", description="empty")]
                ),
            )
        return cache_pb2.InvalidateResponse(purged=len(request.keys) + 10 * len(request.prefixes) + 100 * len(request.tags))

    def Watch(self, request, context):
        if request.kinds == ["forbidden"]:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
        # Like tonic, answer the headers as soon as the subscription exists.
        context.send_initial_metadata(())
        seq = 0
        for key in request.keys:
            seq += 1
            ev = cache_pb2.WatchEvent(
                type=cache_pb2.WatchEvent.TYPE_INVALIDATED, key=key, kind="routing.queue", reason="test", sequence=seq
            )
            ev.time.FromDatetime(dt.datetime(2026, 1, 2, 3, 4, 5))
            yield ev
        if "lag" in request.prefixes:
            yield cache_pb2.WatchEvent(type=cache_pb2.WatchEvent.TYPE_LAGGED, sequence=seq + 1)
        if "hang" in request.prefixes:
            deadline = time.monotonic() + 3
            while context.is_active() and time.monotonic() < deadline:
                time.sleep(0.05)


@pytest.fixture(scope="module")
def fake_addr():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    cache_pb2_grpc.add_CacheServicer_to_server(FakeCache(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture()
def fake(fake_addr):
    # retry=False: these tests are about what one call raises (retries: further down)
    with CacheClient(fake_addr, default_timeout=5, retry=False) as c:
        yield c


def test_get_encodes_request_and_decodes_result(fake):
    r = fake.get(
        "echo",
        id="q1",
        variant="summary",
        params={"pageSize": 25, "expand": True},
        body={"b": 1, "a": [1, 2]},
        max_age=dt.timedelta(seconds=2.5),
        allow_stale=True,
    )
    assert r.source is Source.UPSTREAM and r.source == "UPSTREAM" and str(r.source) == "UPSTREAM"
    assert r.key == "test:echo"
    assert r.age == pytest.approx(1.5)
    assert r.ttl_remaining == pytest.approx(30.0)
    assert r.tags == ["queue:1", "kind:echo"]
    assert json.loads(r.raw) == r.value
    assert r.value == {
        "kind": "echo",
        "id": "q1",
        "variant": "summary",
        "params": {"pageSize": "25", "expand": "true"},
        "body_json": '{"a":[1,2],"b":1}',
        "has_freshness": True,
        "max_age": 2.5,
        "allow_stale": True,
        "force_refresh": False,
    }


def test_get_without_freshness_sends_none(fake):
    r = fake.get("echo", body='{"raw":true}')
    assert r.value["has_freshness"] is False
    assert r.value["body_json"] == '{"raw":true}'
    assert fake.get("echo", force_refresh=True).value["force_refresh"] is True


def test_non_object_value_and_l1_source(fake):
    r = fake.get("l1")
    assert r.value == [1, 2] and r.source is Source.L1


def test_invalid_argument_carries_field_violations(fake):
    with pytest.raises(InvalidArgumentError) as ei:
        fake.get("bad")
    e = ei.value
    assert isinstance(e, cxcache.CacheError)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.message == "unknown kind"
    assert e.field_violations == [
        FieldViolation("kind", "unknown kind 'bad'"),
        FieldViolation("params.x", "not declared"),
    ]
    assert e.field_violations[0].field == "kind" and e.field_violations[1].description == "not declared"
    assert [f for f, _ in e.field_violations] == ["kind", "params.x"]  # unpacks like the old tuples
    assert e.retry_after is None
    assert "kind: unknown kind 'bad'" in str(e)


def test_resource_exhausted_carries_retry_after_and_other_details(fake):
    with pytest.raises(ResourceExhaustedError) as ei:
        fake.get("quota")
    assert ei.value.retry_after == pytest.approx(7.25)
    infos = [d for d in ei.value.details if isinstance(d, error_details_pb2.ErrorInfo)]
    assert infos and infos[0].reason == "UPSTREAM_429"


def test_unavailable_carries_retry_after(fake):
    with pytest.raises(UnavailableError) as ei:
        fake.get("down")
    assert ei.value.retry_after == pytest.approx(0.5)


def test_plain_status_without_details(fake):
    with pytest.raises(NotFoundError) as ei:
        fake.get("missing")
    assert ei.value.details == [] and ei.value.field_violations == [] and ei.value.retry_after is None


def test_deadline(fake):
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        fake.get("slow", timeout=0.2)
    assert time.monotonic() - t0 < 1.4


def test_server_enforced_deadline_is_deadline_exceeded(fake, fake_addr):
    # tonic answers CANCELLED "Timeout expired" when it enforces the caller's deadline,
    # which can arrive just before the client's own DEADLINE_EXCEEDED.
    with pytest.raises(DeadlineExceededError):
        fake.get("server-timeout", timeout=5)
    # without a deadline the status is passed through unchanged
    with CacheClient(fake_addr) as no_deadline:
        with pytest.raises(cxcache.CancelledError):
            no_deadline.get("server-timeout")


def test_unreachable_server_is_unavailable():
    with CacheClient("127.0.0.1:1", default_timeout=2, retry=False) as c:
        with pytest.raises(UnavailableError):
            c.get("echo")


def test_invalidate(fake):
    assert fake.invalidate(keys=["a", "b"], prefixes="p:", tags=["t"], reason="r") == 2 + 10 + 100
    with pytest.raises(InvalidArgumentError) as ei:
        fake.invalidate()
    assert ei.value.field_violations == [FieldViolation("keys", "empty")]


def test_watch_iterates_events(fake):
    with fake.watch(keys=["k1", "k2"], prefixes=["lag"], timeout=5) as stream:
        events = list(stream)
    assert [e.type for e in events] == [EventType.INVALIDATED, EventType.INVALIDATED, EventType.LAGGED]
    assert [e.sequence for e in events] == [1, 2, 3]
    assert events[0].key == "k1" and events[0].kind == "routing.queue" and events[0].reason == "test"
    assert events[0].time == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert events[2].time is None and events[2].type == "LAGGED"


def test_watch_error_and_cancel(fake):
    stream = fake.watch(kinds=["forbidden"])
    with pytest.raises(cxcache.PermissionDeniedError):
        stream.wait_ready(5)
    stream = fake.watch(prefixes=["hang"])
    assert stream.wait_ready(5)
    stream.cancel()
    assert list(stream) == []


def test_watch_deadline(fake):
    with pytest.raises(DeadlineExceededError):
        list(fake.watch(prefixes=["hang"], timeout=0.3))


async def test_async_client(fake_addr):
    async with AsyncCacheClient(fake_addr, default_timeout=5, retry=False) as c:
        r = await c.get("echo", id="x", params={"a": 1})
        assert r.value["id"] == "x" and r.value["params"] == {"a": "1"} and r.source == "UPSTREAM"
        with pytest.raises(InvalidArgumentError) as ei:
            await c.get("bad")
        assert ei.value.field_violations[0] == FieldViolation("kind", "unknown kind 'bad'")
        with pytest.raises(ResourceExhaustedError) as ei:
            await c.get("quota")
        assert ei.value.retry_after == pytest.approx(7.25)
        with pytest.raises(DeadlineExceededError):
            await c.get("slow", timeout=0.2)
        assert await c.invalidate(keys="k") == 1
        stream = c.watch(keys=["k1"], timeout=5)
        assert await stream.wait_ready(5)
        events = [e async for e in stream]
        assert len(events) == 1 and events[0].type is EventType.INVALIDATED and events[0].key == "k1"
        stream = c.watch(kinds=["forbidden"])
        with pytest.raises(cxcache.PermissionDeniedError):
            await stream.wait_ready(5)
        stream = c.watch(prefixes=["hang"])
        assert await stream.wait_ready(5)
        stream.cancel()
        assert [e async for e in stream] == []


# ---------------------------------------------------------------- the shared core, offline
# Both clients run on cxcache._core: these drive it through a recording channel (no
# server, no sockets) to check that the two clients send the same requests and read
# replies and errors the same way.

from cxcache import _core  # noqa: E402


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details=""):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return ()


class RecordingChannel:
    """Stands in for a grpc (or, with is_async, grpc.aio) channel: records each call
    and answers from `replies` (method name -> message, or an exception to raise)."""

    def __init__(self, replies=None, is_async=False):
        self.calls = []
        self.wait_for_ready = []
        self.replies = replies or {}
        self.is_async = is_async

    def _method(self, path, unary):
        name = path.rsplit("/", 1)[1]

        def call(request, timeout=None, metadata=None, wait_for_ready=None):
            self.calls.append((name, request, timeout, metadata))
            self.wait_for_ready.append(wait_for_ready)
            reply = self.replies.get(name)
            if isinstance(reply, Exception) and not self.is_async:
                raise reply

            async def answer():
                if isinstance(reply, Exception):
                    raise reply
                return reply

            return answer() if self.is_async and unary else reply

        return call

    def unary_unary(self, path, **_):
        return self._method(path, unary=True)

    def unary_stream(self, path, **_):
        return self._method(path, unary=False)


GET_REPLY = cache_pb2.GetResponse(
    value=b'{"a":1}',
    source=cache_pb2.SOURCE_STORE,
    key="k",
    age=duration_pb2.Duration(seconds=2, nanos=250_000_000),
    ttl_remaining=duration_pb2.Duration(seconds=9),
    tags=["t"],
)
REPLIES = {"Get": GET_REPLY, "Invalidate": cache_pb2.InvalidateResponse(purged=3)}
GET_ARGS = dict(
    id="q",
    variant="v",
    params={"n": 2, "flag": False, 3: "x"},
    body=b'{"z":1}',
    max_age=1.25,
    force_refresh=True,
    timeout=dt.timedelta(milliseconds=1500),
)
META = [("x-tenant", "t1")]


def _sync_client(replies=REPLIES, **kw):
    channel = RecordingChannel(replies)
    return CacheClient(channel=channel, metadata=META, **kw), channel


def _async_client(replies=REPLIES, **kw):
    channel = RecordingChannel(replies, is_async=True)
    return AsyncCacheClient(channel=channel, metadata=META, **kw), channel


def test_core_sync_and_async_send_the_same_requests():
    sync, sc = _sync_client(default_timeout=4)
    r = sync.get("routing.queue", **GET_ARGS)
    assert sync.invalidate(keys="k1", tags=("t1", "t2"), reason="why") == 3
    sync.watch(prefixes="p:", kinds=["routing.queue"])

    async def use_async():
        client, channel = _async_client(default_timeout=4)
        ar = await client.get("routing.queue", **GET_ARGS)
        assert await client.invalidate(keys="k1", tags=("t1", "t2"), reason="why") == 3
        client.watch(prefixes="p:", kinds=["routing.queue"])
        return ar, channel

    ar, ac = asyncio.run(use_async())
    assert r == ar
    assert [(n, req.SerializeToString(deterministic=True), t, m) for n, req, t, m in sc.calls] == [
        (n, req.SerializeToString(deterministic=True), t, m) for n, req, t, m in ac.calls
    ]

    (_, get, get_timeout, get_meta), (_, inv, inv_timeout, _), (_, watch, watch_timeout, _) = sc.calls
    assert (get.kind, get.id, get.variant) == ("routing.queue", "q", "v")
    assert dict(get.params) == {"n": "2", "flag": "false", "3": "x"}
    assert get.body_json == '{"z":1}'
    assert get.freshness.max_age == duration_pb2.Duration(seconds=1, nanos=250_000_000)
    assert get.freshness.force_refresh and not get.freshness.allow_stale
    assert get_timeout == 1.5 and get_meta == tuple(META)
    assert list(inv.keys) == ["k1"] and list(inv.tags) == ["t1", "t2"] and inv.reason == "why"
    assert inv_timeout == 4  # the default timeout applies to unary calls ...
    assert list(watch.prefixes) == ["p:"] and list(watch.kinds) == ["routing.queue"]
    assert watch_timeout is None  # ... but not to watches


def test_core_parses_replies():
    client, _ = _sync_client()
    r = client.get("k")
    assert (r.source, r.key, r.age, r.ttl_remaining, r.tags, r.value) == (Source.STORE, "k", 2.25, 9.0, ["t"], {"a": 1})
    unknown = _core.get_result(cache_pb2.GetResponse(source=99))
    assert unknown.source is Source.UNSPECIFIED and unknown.value is None and unknown.raw == b""
    ev = _core.watch_event(cache_pb2.WatchEvent(type=cache_pb2.WatchEvent.TYPE_UPDATED, key="k", tag="t", sequence=4))
    assert (ev.type, ev.key, ev.tag, ev.prefix, ev.time, ev.sequence) == (EventType.UPDATED, "k", "t", "", None, 4)
    assert _core.watch_event(cache_pb2.WatchEvent(type=42)).type is EventType.UNSPECIFIED
    assert f"{Source.L1}/{EventType.LAGGED}" == "L1/LAGGED"


def test_core_request_values():
    assert _core.resolve_timeout(None, 3.0) == 3.0
    assert _core.resolve_timeout(dt.timedelta(seconds=2), 3.0) == 2.0
    assert _core.resolve_timeout(1, None) == 1.0 and isinstance(_core.resolve_timeout(1, None), float)
    assert _core._duration(0.9999999999) == duration_pb2.Duration(seconds=1)
    assert _core._duration(dt.timedelta(microseconds=1)) == duration_pb2.Duration(nanos=1000)
    with pytest.raises(ValueError):
        _core._duration(-0.5)
    assert _core._body_json({"b": [1], "a": None}) == '{"a":null,"b":[1]}'
    assert _core._body_json(bytearray(b"[1]")) == "[1]"
    assert _core._as_list(None) == [] and _core._as_list("a") == ["a"] and _core._as_list(("a", "b")) == ["a", "b"]


@pytest.mark.parametrize("make", [_sync_client, _async_client])
def test_core_maps_errors_for_both_clients(make):
    async def call(c, **kw):
        result = c.get("k", **kw)
        return await result if asyncio.iscoroutine(result) else result

    def run(replies, **kw):
        client, _ = make(replies)
        return asyncio.run(call(client, **kw))

    with pytest.raises(NotFoundError) as ei:
        run({"Get": FakeRpcError(grpc.StatusCode.NOT_FOUND, "gone")})
    assert ei.value.message == "gone" and isinstance(ei.value.__cause__, FakeRpcError)
    # a server-enforced deadline is DeadlineExceededError only when the call had a deadline
    timeout_expired = {"Get": FakeRpcError(grpc.StatusCode.CANCELLED, "Timeout expired")}
    with pytest.raises(DeadlineExceededError):
        run(timeout_expired, timeout=1)
    with pytest.raises(cxcache.CancelledError):
        run(timeout_expired)
    # errors that are not gRPC's pass through unchanged
    with pytest.raises(ValueError, match="negative"):
        run(REPLIES, max_age=-1)


async def test_core_async_call_does_nothing_until_awaited():
    client, channel = _async_client()
    pending = client.get("k", max_age=-1)  # a bad argument is reported when awaited, as by an async def
    assert channel.calls == []
    with pytest.raises(ValueError):
        await pending
    pending = client.invalidate(keys="k")
    assert channel.calls == []
    assert await pending == 3 and [c[0] for c in channel.calls] == ["Invalidate"]
