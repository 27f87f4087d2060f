"""Offline tests of the near cache (no server, no sockets): NearState's rules with a
fake clock, and both clients driving it through a fake Watch stream, plus the TLS /
credential options and the HEARTBEAT filtering of the plain Watch API."""

import asyncio
import queue
import threading

import grpc
import pytest

from cxcache import TLS, AsyncCacheClient, CacheClient, EventType, NearCache, Source
from cxcache._near import NearState, request_id
from cxcache._types import GetResult
from cxcache.v1 import cache_pb2

T = cache_pb2.WatchEvent


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def msg(type_, key="", pos="", seq=0):
    return cache_pb2.WatchEvent(type=type_, key=key, position=pos, sequence=seq)


def reply(key="k1", value=b'{"v":1}', ttl=30.0, age=0.0, source=cache_pb2.SOURCE_L1, tags=()):
    r = cache_pb2.GetResponse(value=value, source=source, key=key, tags=list(tags))
    r.ttl_remaining.FromNanoseconds(int(ttl * 1e9))
    r.age.FromNanoseconds(int(age * 1e9))
    return r


def result(key="k1", ttl=30.0, age=0.0, source=Source.L1, raw=b'{"v":1}', tags=()):
    return GetResult(raw=raw, source=source, key=key, age=age, ttl_remaining=ttl, tags=list(tags))


def rid(kind="routing.queue", id_="q1", **params):
    req = cache_pb2.GetRequest(kind=kind, id=id_)
    for k, v in params.items():
        req.params[k] = v
    return request_id(req)


@pytest.fixture()
def state():
    clock = Clock()
    st = NearState(NearCache(max_staleness=1.0, event_log=4), clock)
    st.connecting()
    st.on_message(msg(T.TYPE_HEARTBEAT, pos="p1"))
    st.clock = clock
    return st


def fill(st, r=None, res=None):
    t = st.begin_fill(r or rid())
    return st.finish_fill(t, res or result())


# ---------------------------------------------------------------- NearState rules


def test_hit_is_near_and_ages_from_send_time(state):
    assert fill(state)
    state.clock.now += 0.5
    hit = state.lookup(rid(), None)
    assert hit is not None and hit.source is Source.NEAR
    assert hit.age == pytest.approx(0.5) and hit.ttl_remaining == pytest.approx(29.5)
    assert state.lookup(rid(id_="other"), None) is None
    s = state.snapshot()
    assert (s.hits, s.misses, s.fills, s.entries) == (1, 1, 1, 1)


def test_no_hit_once_max_staleness_passed_since_last_message(state):
    assert fill(state)
    state.clock.now += 0.99
    assert state.lookup(rid(), None) is not None
    state.clock.now += 0.02  # 1.01 s since the heartbeat
    assert state.lookup(rid(), None) is None
    state.on_message(msg(T.TYPE_HEARTBEAT, pos="p2"))
    assert state.lookup(rid(), None) is not None  # healthy again: the entry was not missed


def test_ttl_and_max_age(state):
    assert fill(state, res=result(ttl=0.3, age=5.0))
    assert state.lookup(rid(), 5.1) is not None
    state.clock.now += 0.2
    assert state.lookup(rid(), 5.1) is None  # 5.2 s old by now
    assert state.lookup(rid(), None) is not None
    state.on_message(msg(T.TYPE_HEARTBEAT))
    state.clock.now += 0.11  # past its TTL: never served, allow_stale or not
    assert state.lookup(rid(), None) is None


def test_stale_and_expired_replies_are_not_kept(state):
    assert not fill(state, res=result(source=Source.STALE))
    assert not fill(state, res=result(ttl=0))
    assert state.snapshot().entries == 0


def test_event_for_the_key_drops_every_request_mapping_to_it(state):
    assert fill(state, rid(id_="q1"), result(key="k1"))
    assert fill(state, rid(id_="q1", x="1"), result(key="k1"))
    assert fill(state, rid(id_="q2"), result(key="k2"))
    state.on_message(msg(T.TYPE_INVALIDATED, key="k1", pos="p2"))
    assert state.lookup(rid(id_="q1"), None) is None and state.lookup(rid(id_="q1", x="1"), None) is None
    assert state.lookup(rid(id_="q2"), None) is not None
    state.on_message(msg(T.TYPE_UPDATED, key="k2", pos="p3"))
    assert state.lookup(rid(id_="q2"), None) is None
    assert state.position == "p3"


def test_race_rule(state):
    t = state.begin_fill(rid())
    state.on_message(msg(T.TYPE_INVALIDATED, key="k1"))
    assert not state.finish_fill(t, result(key="k1"))  # purged while in flight
    t = state.begin_fill(rid())
    state.on_message(msg(T.TYPE_INVALIDATED, key="other"))
    assert state.finish_fill(t, result(key="k1"))  # another key: kept
    t = state.begin_fill(rid())
    for i in range(5):  # more events than the log (4) keeps
        state.on_message(msg(T.TYPE_INVALIDATED, key=f"o{i}"))
    assert not state.finish_fill(t, result(key="k1"))  # the log no longer reaches back
    t = state.begin_fill(rid())
    state.on_message(msg(T.TYPE_LAGGED))
    assert not state.finish_fill(t, result(key="k1"))  # a flush in between
    t = state.begin_fill(rid())
    state.on_break()
    state.connecting()
    state.on_message(msg(T.TYPE_HEARTBEAT, pos="p9"))
    assert not state.finish_fill(t, result(key="k1"))  # a reconnect in between
    t = state.begin_fill(rid())
    state.invalidated([], ["dev:"], [])
    assert not state.finish_fill(t, result(key="k1"))  # a local prefix purge in between
    assert state.snapshot().rejected_fills == 5


def test_no_fill_before_the_stream_is_subscribed():
    st = NearState(NearCache(), Clock())
    t = st.begin_fill(rid())
    st.connecting()
    st.on_message(msg(T.TYPE_HEARTBEAT))
    assert not st.finish_fill(t, result())


def test_reset_lagged_flush_and_resume_does_not(state):
    assert fill(state)
    state.on_break()  # has a position (p1): entries kept for a resume
    state.connecting()
    state.on_message(msg(T.TYPE_INVALIDATED, key="k9", pos="p2"))  # replayed
    state.on_message(msg(T.TYPE_HEARTBEAT, pos="p3"))
    s = state.snapshot()
    assert (s.flushes, s.entries, s.resumes, s.reconnects) == (0, 1, 1, 1)
    state.on_break()
    state.connecting()
    state.on_message(msg(T.TYPE_RESET, pos="x1"))
    s = state.snapshot()
    assert (s.flushes, s.entries, s.resets) == (1, 0, 1)
    assert fill(state)
    state.on_message(msg(T.TYPE_LAGGED))
    assert state.snapshot().flushes == 2 and state.snapshot().entries == 0


def test_break_without_a_position_flushes():
    st = NearState(NearCache(), Clock())
    st.connecting()
    st.on_message(msg(T.TYPE_HEARTBEAT))  # no position from this server
    assert fill(st)
    st.on_break()
    assert st.snapshot().flushes == 1 and st.snapshot().entries == 0


def test_backoff_grows_with_jitter_and_is_bounded():
    st = NearState(NearCache(reconnect_initial=0.05, reconnect_max=2.0), Clock())
    delays = [st.on_break() for _ in range(10)]
    assert 0.025 <= delays[0] <= 0.05
    assert all(d <= 2.0 for d in delays) and delays[-1] >= 1.0


def test_bounded_by_bytes_with_lru_eviction():
    clock = Clock()
    st = NearState(NearCache(max_bytes=3 * (1000 + 256 + 40), key_overhead=256), clock)
    st.connecting()
    st.on_message(msg(T.TYPE_HEARTBEAT, pos="p"))
    big = b"x" * 1000
    for i in range(3):
        assert fill(st, rid(id_=f"q{i}"), result(key=f"k{i}", raw=big))
    assert st.lookup(rid(id_="q0"), None) is not None  # q0 is now the most recently used
    assert fill(st, rid(id_="q3"), result(key="k3", raw=big))
    s = st.snapshot()
    assert s.evictions == 1 and s.entries == 3 and s.bytes <= 3 * 1296
    assert st.lookup(rid(id_="q1"), None) is None  # the least recently used went
    assert st.lookup(rid(id_="q0"), None) is not None
    st.on_message(msg(T.TYPE_INVALIDATED, key="k1"))  # an event for an evicted key is harmless
    assert not fill(st, rid(id_="huge"), result(key="kh", raw=b"x" * 10_000))  # larger than the cache


def test_local_invalidate_keys_prefixes_tags(state):
    assert fill(state, rid(id_="a"), result(key="dev:routing.queue:a", tags=["queue:a"]))
    assert fill(state, rid(id_="b"), result(key="dev:routing.queue:b", tags=["queue:b"]))
    assert fill(state, rid(id_="c"), result(key="dev:user:c"))
    state.invalidated(["dev:routing.queue:a"], [], [])
    assert state.lookup(rid(id_="a"), None) is None and state.lookup(rid(id_="b"), None) is not None
    state.invalidated([], [], ["queue:b"])
    assert state.lookup(rid(id_="b"), None) is None and state.lookup(rid(id_="c"), None) is not None
    state.invalidated([], ["dev:user:"], [])
    assert state.snapshot().entries == 0


def test_watch_request_filter_and_heartbeat_interval():
    st = NearState(NearCache(max_staleness=1.0), Clock())
    req = st.watch_request()
    assert list(req.prefixes) == [""] and not req.kinds and not req.invalidated_only and req.resume_after == ""
    assert req.heartbeat_interval.ToMilliseconds() == 250
    st = NearState(NearCache(max_staleness=0.2, kinds=["routing.queue"], invalidated_only=True), Clock())
    req = st.watch_request()
    assert list(req.kinds) == ["routing.queue"] and not req.prefixes and req.invalidated_only
    assert req.heartbeat_interval.ToMilliseconds() == 100  # clamped
    assert not st.cacheable(cache_pb2.GetRequest(kind="user"))


# ---------------------------------------------------------------- the clients


class FakeRpcError(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return self._code.name

    def trailing_metadata(self):
        return ()


class StreamCall:
    """A sync Watch call fed by the test; cancel() ends it."""

    def __init__(self, request):
        self.request = request
        self.q = queue.Queue()

    def push(self, *msgs):
        for m in msgs:
            self.q.put(m)

    def cancel(self):
        self.q.put(FakeRpcError(grpc.StatusCode.CANCELLED))

    def initial_metadata(self):
        return ()

    def done(self):
        return False

    def __iter__(self):
        while True:
            m = self.q.get()
            if isinstance(m, Exception):
                raise m
            yield m


class AioStreamCall(StreamCall):
    def __init__(self, request):
        super().__init__(request)
        self.q = asyncio.Queue()

    def push(self, *msgs):
        for m in msgs:
            self.q.put_nowait(m)

    def cancel(self):
        self.q.put_nowait(FakeRpcError(grpc.StatusCode.CANCELLED))

    def __aiter__(self):
        return self

    async def __anext__(self):
        m = await self.q.get()
        if isinstance(m, Exception):
            raise grpc.aio.AioRpcError(m.code(), grpc.aio.Metadata(), grpc.aio.Metadata())
        return m


FIRST = (msg(T.TYPE_HEARTBEAT, pos="p1"),)


class Channel:
    def __init__(self, replies, is_async=False, first=FIRST):
        self.replies = list(replies)
        self.is_async = is_async
        self.first = first
        self.gets = []
        self.watches = []
        self.calls = queue.Queue()

    def unary_unary(self, path, **_):
        name = path.rsplit("/", 1)[1]

        def call(request, timeout=None, metadata=None, wait_for_ready=None):
            self.gets.append((name, request, metadata))
            r = self.replies[min(len(self.gets), len(self.replies)) - 1]
            if name == "Invalidate":
                r = cache_pb2.InvalidateResponse(purged=1)
            if not self.is_async:
                return r

            async def answer():
                return r

            return answer()

        return call

    def unary_stream(self, path, **_):
        def call(request, timeout=None, metadata=None, wait_for_ready=None):
            c = (AioStreamCall if self.is_async else StreamCall)(request)
            c.metadata = metadata
            c.push(*self.first)
            self.watches.append(c)
            self.calls.put(c)
            return c

        return call


class Seen:
    """Waits (bounded) until the near cache has applied n Watch messages."""

    def __init__(self, state):
        self.n = 0
        self.cv = threading.Condition()
        state.add_listener(self._on)

    def _on(self, _msg):
        with self.cv:
            self.n += 1
            self.cv.notify_all()

    def wait(self, n, timeout=5.0):
        with self.cv:
            assert self.cv.wait_for(lambda: self.n >= n, timeout), f"saw {self.n} of {n} messages"


def test_sync_client_near_hit_event_and_refill():
    ch = Channel([reply(key="k1")])
    with CacheClient(channel=ch, near_cache=NearCache(), api_key="secret") as c:
        first = c.get("routing.queue", id="q1")
        assert first.source is Source.L1
        seen = Seen(c.near_cache)
        hit = c.get("routing.queue", id="q1")
        assert hit.source is Source.NEAR and hit.raw == first.raw and hit.key == "k1"
        assert len([g for g in ch.gets if g[0] == "Get"]) == 1
        stream = ch.watches[0]
        assert list(stream.request.prefixes) == [""]
        assert ("authorization", "Bearer secret") in stream.metadata  # the Watch carries the key too
        stream.push(msg(T.TYPE_INVALIDATED, key="k1", pos="p2"))
        seen.wait(1)
        assert c.get("routing.queue", id="q1").source is Source.L1  # dropped: back to the server
        assert c.get("routing.queue", id="q1", force_refresh=True).source is Source.L1  # bypasses
        assert c.get("routing.queue", id="q1").source is Source.NEAR  # and refilled
        c.invalidate(keys=["k1"])
        assert c.get("routing.queue", id="q1").source is Source.L1  # own purge drops at once
        s = c.near_stats()
        assert s.hits == 2 and s.fills >= 2
    assert stream.q.qsize() >= 0  # closed: the stream was cancelled (the thread ended)
    assert not c._near_stream._thread.is_alive()


def test_sync_client_resumes_from_the_last_position():
    ch = Channel([reply(key="k1")])
    with CacheClient(channel=ch, near_cache=NearCache(reconnect_initial=0.001)) as c:
        c.get("routing.queue", id="q1")
        seen = Seen(c.near_cache)
        first = ch.watches[0]
        first.push(msg(T.TYPE_HEARTBEAT, pos="p7"))
        seen.wait(1)
        first.push(FakeRpcError(grpc.StatusCode.UNAVAILABLE))
        second = ch.calls.get(timeout=5)
        second = ch.calls.get(timeout=5)
        assert second.request.resume_after == "p7"
        seen.wait(2)  # its first message (a HEARTBEAT: resumed)
        s = c.near_stats()
        assert s.flushes == 0 and s.reconnects == 1 and s.resumes == 1
        assert c.get("routing.queue", id="q1").source is Source.NEAR


def test_kinds_not_listed_are_not_near_cached():
    ch = Channel([reply(key="k1")])
    with CacheClient(channel=ch, near_cache=NearCache(kinds=["routing.queue"])) as c:
        c.get("user", id="u1")
        c.get("user", id="u1")
        assert [g[0] for g in ch.gets] == ["Get", "Get"] and not ch.watches


async def test_async_client_near_hit_and_close_stops_the_stream():
    ch = Channel([reply(key="k1")], is_async=True)
    c = AsyncCacheClient(channel=ch, near_cache=NearCache())
    assert (await c.get("routing.queue", id="q1")).source is Source.L1
    assert (await c.get("routing.queue", id="q1")).source is Source.NEAR
    stream = ch.watches[0]
    stream.push(msg(T.TYPE_RESET, pos="r1"))
    for _ in range(100):  # bounded: the task applies it at its next turn
        if c.near_stats().flushes:
            break
        await asyncio.sleep(0)
    assert c.near_stats().flushes == 1
    assert (await c.get("routing.queue", id="q1")).source is Source.L1
    task = c._near_stream._task
    await c.close()
    assert task.done()


# ---------------------------------------------------------------- credentials, TLS, heartbeats


def test_api_key_and_tls_options():
    ch = Channel([reply()])
    with CacheClient(channel=ch, api_key="k3y", metadata=[("x-team", "a")]) as c:
        c.get("routing.queues")
        c.invalidate(keys=["k"])
    assert all(g[2][:2] == (("authorization", "Bearer k3y"), ("x-team", "a")) for g in ch.gets)
    with pytest.raises(ValueError):
        CacheClient(channel=ch, api_key="a", metadata=[("authorization", "Bearer b")])
    with pytest.raises(ValueError):
        CacheClient(channel=ch, api_key="bad\nkey")
    with pytest.raises(ValueError):
        TLS(cert=b"pem")  # a client certificate needs its key
    with pytest.raises(ValueError):
        CacheClient("127.0.0.1:1", tls=True, credentials=grpc.ssl_channel_credentials())
    assert TLS(server_name="cache.test").options() == [("grpc.ssl_target_name_override", "cache.test")]


def test_tls_reads_pem_files(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    from cxcache._core import _pem

    assert _pem(str(ca)) == _pem(ca) == b"-----BEGIN CERTIFICATE-----\n"
    with CacheClient("127.0.0.1:1", tls=TLS(ca=ca)) as c:  # a secure channel (not connected yet)
        assert c._channel is not None


def test_plain_watch_hides_heartbeats_unless_asked():
    ch = Channel([reply()], first=())
    with CacheClient(channel=ch) as c:
        s = c.watch(prefixes=[""], event_timeout=5)
        ch.watches[0].push(msg(T.TYPE_HEARTBEAT, pos="h1"), msg(T.TYPE_INVALIDATED, key="k", pos="e2", seq=2))
        ev = next(s)
        assert ev.type is EventType.INVALIDATED and ev.position == "e2"
        s.cancel()
        s2 = c.watch(prefixes=[""], heartbeats=True, resume_after="e2", heartbeat_interval=0.5, event_timeout=5)
        ch.watches[1].push(msg(T.TYPE_HEARTBEAT, pos="h3"))
        ev = next(s2)
        assert ev.type is EventType.HEARTBEAT and ev.position == "h3" and s2.position == "h3"
        req = ch.watches[1].request
        assert req.resume_after == "e2" and req.heartbeat_interval.ToMilliseconds() == 500
        s2.cancel()


# ---------------------------------------------------------------- over a real gRPC transport


class WatchServer:
    """An in-process gRPC Cache (loopback, port 0) whose Watch follows the resume
    contract: HEARTBEAT first (or RESET for an unknown position), then the events
    the test publishes, with heartbeats every 50 ms."""

    def __init__(self):
        from concurrent import futures

        from cxcache.v1 import cache_pb2_grpc

        self.events = queue.Queue()
        self.requests = []
        self.gets = 0
        outer = self

        class Servicer(cache_pb2_grpc.CacheServicer):
            def Get(self, request, context):
                outer.gets += 1
                return reply(key="k1")

            def Invalidate(self, request, context):
                return cache_pb2.InvalidateResponse(purged=1)

            def Watch(self, request, context):
                outer.requests.append(request)
                known = request.resume_after in ("", "p1", "p2")
                yield msg(T.TYPE_HEARTBEAT if known else T.TYPE_RESET, pos="p1")
                while context.is_active():
                    try:
                        m = outer.events.get(timeout=0.05)
                    except queue.Empty:
                        m = msg(T.TYPE_HEARTBEAT, pos="p1")
                    yield m

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        cache_pb2_grpc.add_CacheServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self):
        self.server.stop(0)


@pytest.fixture()
def watch_server():
    s = WatchServer()
    yield s
    s.stop()


def test_real_transport_sync_near_cache(watch_server):
    with CacheClient(f"127.0.0.1:{watch_server.port}", near_cache=NearCache(), default_timeout=5) as c:
        assert c.get("routing.queue", id="q1").source is Source.L1
        assert c.get("routing.queue", id="q1").source is Source.NEAR
        seen = Seen(c.near_cache)
        watch_server.events.put(msg(T.TYPE_INVALIDATED, key="k1", pos="p2"))
        seen.wait(1)
        end = threading.Event()
        for _ in range(100):  # bounded: the heartbeats before it may be applied first
            if c.near_stats().events:
                break
            end.wait(0.02)
        assert c.near_stats().events == 1
        assert c.get("routing.queue", id="q1").source is Source.L1
        assert watch_server.gets == 2
        thread = c._near_stream._thread
    assert not thread.is_alive()  # close() ended the stream
    req = watch_server.requests[0]
    assert list(req.prefixes) == [""] and req.heartbeat_interval.ToMilliseconds() == 250


async def test_real_transport_async_near_cache(watch_server):
    async with AsyncCacheClient(f"127.0.0.1:{watch_server.port}", near_cache=NearCache(), default_timeout=5) as c:
        assert (await c.get("routing.queue", id="q1")).source is Source.L1
        assert (await c.get("routing.queue", id="q1")).source is Source.NEAR
        watch_server.events.put(msg(T.TYPE_LAGGED, pos="p2"))
        for _ in range(200):  # bounded
            if c.near_stats().flushes:
                break
            await asyncio.sleep(0.01)
        assert c.near_stats().flushes == 1
        assert (await c.get("routing.queue", id="q1")).source is Source.L1
        task = c._near_stream._task
    assert task.done()
