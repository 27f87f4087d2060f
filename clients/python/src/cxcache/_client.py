"""Sync and asyncio clients for cxcache.v1.Cache.

Both are thin shells over :mod:`cxcache._core`, which builds the requests, reads
the replies and errors and decides about retries; they differ only in how the stub
is called and how they wait.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any, AsyncIterator, Callable, ClassVar, Coroutine, Iterator, Optional, Tuple, TypeVar

import grpc
import grpc.aio

from ._core import ClientCore, GetPlan, UnaryCall, WatchOpener, WatchStreamCore
from ._errors import CacheError
from ._near import NearState
from ._types import GetResult, WatchEvent

_T = TypeVar("_T")

_MSG, _END, _ERR, _READY = "msg", "end", "err", "ready"


def _pump(call: Any, out: "queue.Queue[Tuple[str, Any]]") -> None:
    """Reader thread of one sync Watch call: its headers, messages and end, in order."""
    try:
        call.initial_metadata()
        if call.done() and call.code() != grpc.StatusCode.OK:
            out.put((_ERR, call))  # refused (or broken) before anything was read
            return
        out.put((_READY, None))
        for msg in call:
            out.put((_MSG, msg))
        out.put((_END, None))
    except grpc.RpcError as err:
        out.put((_ERR, err))
    except BaseException as err:  # pragma: no cover - not expected from grpc
        out.put((_ERR, err))


class WatchStream(WatchStreamCore, Iterator[WatchEvent]):
    """Iterator over the events of one subscription. Cancel it (or use it as a
    context manager) to end it; iteration then stops cleanly.

    A reader thread per Watch call takes the messages off the call, so that
    :meth:`next_event` (and iteration with the watch's ``event_timeout``) can wait
    with a timeout. A subscription broken by UNAVAILABLE or RESOURCE_EXHAUSTED is
    resubscribed (unless ``reconnect=False``) and a synthetic LAGGED event with
    ``resync=True`` is yielded once the new subscription is accepted."""

    def __init__(self, opener: WatchOpener, event_timeout: Optional[float] = None) -> None:
        super().__init__(opener, event_timeout)
        self._queue: Optional["queue.Queue[Tuple[str, Any]]"] = None
        self._lock = threading.Lock()

    def __iter__(self) -> "WatchStream":
        return self

    def __next__(self) -> WatchEvent:
        return self.next_event(self._event_timeout)

    def _start_reader(self) -> "queue.Queue[Tuple[str, Any]]":
        with self._lock:
            if self._queue is None:
                self._queue = queue.Queue()
                threading.Thread(
                    target=_pump, args=(self._call, self._queue), name="cxcache-watch-reader", daemon=True
                ).start()
            return self._queue

    def _take(self, until: Optional[float]) -> Tuple[str, Any]:
        q = self._start_reader()
        if until is None:
            return q.get()
        try:
            return q.get(timeout=max(until - time.monotonic(), 0.0))
        except queue.Empty:
            raise TimeoutError("no watch event within the timeout") from None

    def next_event(self, timeout: Optional[float] = None) -> WatchEvent:
        """The next event, waiting at most ``timeout`` seconds (None: no limit).

        Raises TimeoutError when none came in time (the stream stays usable: call
        again), StopIteration when the subscription ended (or was cancelled), and
        the call's CacheError when it failed and was not (or could not be)
        resubscribed. The back-off before a resubscription is not bounded by
        ``timeout`` (the retry policy's max_backoff bounds each wait)."""
        until = None if timeout is None else time.monotonic() + timeout
        while True:
            kind, item = self._take(until)
            if kind == _MSG:
                if not self._wanted(item):
                    continue
                return self._event(item)
            if kind == _READY:
                self._opener.subscribed()
                continue
            if kind == _END:
                if self._cancelled or not self._opener.reconnect_on_end:
                    raise StopIteration
                err = self._server_ended()
                self._reconnect(err)
                return self._resync_event(err)
            if isinstance(item, grpc.RpcError):
                if self._ended_by_cancel(item.code()):  # type: ignore[attr-defined]
                    raise StopIteration
                err = self._error(item)
                self._reconnect(err)
                return self._resync_event(err)
            raise item

    def _reconnect(self, err: CacheError) -> None:
        """Resubscribe with backoff until a new call is accepted; raise ``err`` (the
        latest failure) when the policy gives up; StopIteration if cancelled."""
        while True:
            delay = self._opener.reconnect_delay(err)
            if delay is None or self._cancelled:
                if self._cancelled:
                    raise StopIteration
                raise err
            self._opener.sleep(delay)
            if self._cancelled:
                raise StopIteration
            with self._lock:  # cancel() takes the lock too: it ends this call or the next
                if self._cancelled:
                    raise StopIteration
                self._call = self._opener.open()
                self._queue = None
            self.reconnects += 1
            kind, item = self._take(None)
            if kind == _READY:
                self._opener.subscribed()
                return
            if kind == _ERR and isinstance(item, grpc.RpcError):
                if self._ended_by_cancel(item.code()):  # type: ignore[attr-defined]
                    raise StopIteration
                err = self._error(item)
                continue
            raise StopIteration  # pragma: no cover - _pump reports READY or ERR first

    def cancel(self) -> None:
        with self._lock:
            super().cancel()

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Block until the server has accepted the subscription (response headers
        received). Returns False on timeout; raises the call's CacheError if the
        server refused the call instead (e.g. UnimplementedError, InvalidArgumentError)."""
        call = self._call
        done = threading.Event()

        def _wait() -> None:
            try:
                call.initial_metadata()
            finally:
                done.set()

        threading.Thread(target=_wait, name="cxcache-watch-ready", daemon=True).start()
        if not done.wait(timeout):
            return False
        if call.done() and call.code() != grpc.StatusCode.OK:
            if self._ended_by_cancel(call.code()):
                return False
            raise self._error(call)
        return True

    def __enter__(self) -> "WatchStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()


_START_LOCK = threading.Lock()


class NearStreamThread:
    """The near cache's Watch stream of a sync client, read by a daemon thread:
    every message goes to the NearState; a broken or ended call is reopened after
    the state's backoff, resuming from the last position, until closed."""

    def __init__(self, method: Callable[..., Any], state: NearState, metadata: Any) -> None:
        self._method = method
        self._state = state
        self._metadata = metadata
        self._stop = threading.Event()
        self._first = threading.Event()  # the first call delivered a message (or gave up)
        self._lock = threading.Lock()
        self._call: Any = None
        self._thread = threading.Thread(target=self._run, name="cxcache-near-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_first(self, timeout: float) -> None:
        """Wait up to ``timeout`` until the first call delivered a message (or failed)."""
        if not self._first.is_set():
            self._first.wait(timeout)

    def _run(self) -> None:
        state = self._state
        while not self._stop.is_set():
            state.connecting()
            with self._lock:
                if self._stop.is_set():
                    return
                self._call = call = self._method(state.watch_request(), metadata=self._metadata)
            try:
                for msg in call:
                    state.on_message(msg)
                    self._first.set()
            except grpc.RpcError:
                pass
            except Exception:  # pragma: no cover - a bug in a listener must not stop the stream
                pass
            self._first.set()
            if self._stop.is_set():
                return
            self._stop.wait(state.on_break())

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)


class NearStreamTask:
    """The near cache's Watch stream of an asyncio client: the same loop as
    :class:`NearStreamThread`, in a task of the client's event loop."""

    def __init__(self, method: Callable[..., Any], state: NearState, metadata: Any) -> None:
        self._method = method
        self._state = state
        self._metadata = metadata
        self._stop = asyncio.Event()
        self._first = asyncio.Event()
        self._call: Any = None
        self._task: Optional["asyncio.Task[None]"] = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cxcache-near-watch")

    async def wait_first(self, timeout: float) -> None:
        if not self._first.is_set():
            try:
                await asyncio.wait_for(self._first.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def _run(self) -> None:
        state = self._state
        while not self._stop.is_set():
            state.connecting()
            self._call = call = self._method(state.watch_request(), metadata=self._metadata)
            try:
                async for msg in call:
                    state.on_message(msg)
                    self._first.set()
            except grpc.aio.AioRpcError:
                pass
            except asyncio.CancelledError:
                raise
            except Exception:  # pragma: no cover - a bug in a listener must not stop the stream
                pass
            self._first.set()
            if self._stop.is_set():
                return
            try:
                await asyncio.wait_for(self._stop.wait(), state.on_break())
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        self._stop.set()
        if self._call is not None:
            self._call.cancel()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass


class CacheClient(ClientCore[grpc.Channel, GetResult, int, WatchStream]):
    """Blocking client. ``timeout`` arguments are seconds (float or timedelta);
    every call raises a :class:`cxcache.CacheError` subclass on failure."""

    _channel_api: ClassVar[Any] = grpc

    @staticmethod
    def _default_sleep() -> Callable[[float], Any]:
        return time.sleep

    def _run_unary(self, prepare: Callable[[], UnaryCall[_T]]) -> _T:
        call = prepare()
        attempts = self._attempts(call)
        while True:
            with attempts.trying(call) as attempt:
                return call.parse(call.start(attempts.next_timeout()))
            self._sleep(attempt.wait)

    def _open_watch(self, watch: WatchOpener, event_timeout: Optional[float]) -> WatchStream:
        return WatchStream(watch, event_timeout)

    _near_stream: Optional["NearStreamThread"] = None

    def _run_get(self, prepare: Callable[[], GetPlan]) -> GetResult:
        plan = prepare()
        if plan.hit is not None:
            return plan.hit
        call = plan.call
        assert call is not None
        near = self._near
        if near is None or plan.rid is None:
            return self._run_unary(lambda: call)
        if self._near_stream is None:
            with _START_LOCK:
                if self._near_stream is None:
                    self._near_stream = NearStreamThread(self._stub.Watch, near, self._metadata)
                    self._near_stream.start()
        self._near_stream.wait_first(near.config.ready_wait)
        ticket = near.begin_fill(plan.rid)
        result: GetResult = self._run_unary(lambda: call)
        near.finish_fill(ticket, result)
        return result

    def close(self) -> None:
        if self._near_stream is not None:
            self._near_stream.close()
        if self._near is not None:
            self._near.close()
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "CacheClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncWatchStream(WatchStreamCore, AsyncIterator[WatchEvent]):
    """Async iterator over the events of one subscription (reconnects like
    WatchStream; use ``asyncio.wait_for`` on ``__anext__`` for a per-event timeout)."""

    def __aiter__(self) -> "AsyncWatchStream":
        return self

    async def __anext__(self) -> WatchEvent:
        while True:
            event = await self._next_message()
            if event is not None:
                return event

    async def _next_message(self) -> Optional[WatchEvent]:
        """The next event, or None for a message the stream does not yield."""
        try:
            msg = await self._call.read()
        except asyncio.CancelledError:
            if self._cancelled:
                raise StopAsyncIteration from None
            raise
        except grpc.aio.AioRpcError as err:
            if self._ended_by_cancel(err.code()):
                raise StopAsyncIteration from None
            error = self._error(err)
            await self._reconnect(error)
            return self._resync_event(error)
        if msg is grpc.aio.EOF:
            if self._cancelled or not self._opener.reconnect_on_end:
                raise StopAsyncIteration
            error = self._server_ended()
            await self._reconnect(error)
            return self._resync_event(error)
        if not self._wanted(msg):
            return None
        return self._event(msg)

    async def _reconnect(self, err: CacheError) -> None:
        while True:
            delay = self._opener.reconnect_delay(err)
            if self._cancelled:
                raise StopAsyncIteration
            if delay is None:
                raise err
            await self._opener.sleep(delay)
            if self._cancelled:
                raise StopAsyncIteration
            self._call = self._opener.open()
            self.reconnects += 1
            await self._call.initial_metadata()
            if not self._call.done():
                self._opener.subscribed()
                return
            code = await self._call.code()
            if code == grpc.StatusCode.OK:
                self._opener.subscribed()
                return
            try:
                await self._call.read()
            except grpc.aio.AioRpcError as rpc_err:
                if self._ended_by_cancel(rpc_err.code()):
                    raise StopAsyncIteration from None
                err = self._error(rpc_err)
                continue
            err = CacheError(await self._call.details() or "", code=code)

    async def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait until the server has accepted the subscription; see WatchStream.wait_ready."""
        try:
            await asyncio.wait_for(self._call.initial_metadata(), timeout)
        except asyncio.TimeoutError:
            return False
        if self._call.done():
            code = await self._call.code()
            if code != grpc.StatusCode.OK:
                if self._ended_by_cancel(code):
                    return False
                try:
                    await self._call.read()
                except grpc.aio.AioRpcError as err:
                    raise self._error(err) from err
                raise CacheError(await self._call.details() or "", code=code)
        return True

    async def __aenter__(self) -> "AsyncWatchStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.cancel()


class AsyncCacheClient(
    ClientCore[
        grpc.aio.Channel,
        Coroutine[Any, Any, GetResult],
        Coroutine[Any, Any, int],
        AsyncWatchStream,
    ]
):
    """asyncio client (grpc.aio). Same arguments and errors as CacheClient; ``get``
    and ``invalidate`` return coroutines. A ``sleep`` argument must be a coroutine
    function (default ``asyncio.sleep``)."""

    _channel_api: ClassVar[Any] = grpc.aio

    @staticmethod
    def _default_sleep() -> Callable[[float], Any]:
        return asyncio.sleep

    async def _run_unary(self, prepare: Callable[[], UnaryCall[_T]]) -> _T:
        call = prepare()
        attempts = self._attempts(call)
        while True:
            with attempts.trying(call) as attempt:
                return call.parse(await call.start(attempts.next_timeout()))
            await self._sleep(attempt.wait)

    def _open_watch(self, watch: WatchOpener, event_timeout: Optional[float]) -> AsyncWatchStream:
        return AsyncWatchStream(watch, event_timeout)

    _near_stream: Optional["NearStreamTask"] = None

    async def _run_get(self, prepare: Callable[[], GetPlan]) -> GetResult:
        plan = prepare()
        if plan.hit is not None:
            return plan.hit
        call = plan.call
        assert call is not None
        near = self._near
        if near is None or plan.rid is None:
            return await self._run_unary(lambda: call)
        stream = self._near_stream
        if stream is None:
            stream = self._near_stream = NearStreamTask(self._stub.Watch, near, self._metadata)
            stream.start()
        await stream.wait_first(near.config.ready_wait)
        ticket = near.begin_fill(plan.rid)
        result: GetResult = await self._run_unary(lambda: call)
        near.finish_fill(ticket, result)
        return result

    async def close(self) -> None:
        if self._near_stream is not None:
            await self._near_stream.close()
        if self._near is not None:
            self._near.close()
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncCacheClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
