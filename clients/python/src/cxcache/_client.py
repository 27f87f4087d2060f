"""Sync and asyncio clients for cxcache.v1.Cache.

Both are thin shells over :mod:`cxcache._core`, which builds the requests and
reads the replies and errors; they differ only in how the stub is called.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Callable, ClassVar, Coroutine, Iterator, Optional, TypeVar

import grpc
import grpc.aio

from ._core import ClientCore, UnaryCall, WatchStreamCore
from ._errors import CacheError
from ._types import GetResult, WatchEvent

_T = TypeVar("_T")


class WatchStream(WatchStreamCore, Iterator[WatchEvent]):
    """Iterator over the events of one Watch call. Cancel it (or use it as a
    context manager) to end the subscription; iteration then stops cleanly."""

    def __iter__(self) -> "WatchStream":
        return self

    def __next__(self) -> WatchEvent:
        try:
            msg = next(self._call)
        except StopIteration:
            raise
        except grpc.RpcError as err:
            if self._ended_by_cancel(err.code()):  # type: ignore[attr-defined]
                raise StopIteration from None
            raise self._error(err) from err
        return self._event(msg)

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Block until the server has accepted the subscription (response headers
        received). Returns False on timeout; raises the call's CacheError if the
        server refused the call instead (e.g. Unimplemented, InvalidArgument)."""
        done = threading.Event()

        def _wait() -> None:
            try:
                self._call.initial_metadata()
            finally:
                done.set()

        threading.Thread(target=_wait, name="cxcache-watch-ready", daemon=True).start()
        if not done.wait(timeout):
            return False
        if self._call.done() and self._call.code() != grpc.StatusCode.OK:
            if self._ended_by_cancel(self._call.code()):
                return False
            raise self._error(self._call)
        return True

    def __enter__(self) -> "WatchStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()


class CacheClient(ClientCore[grpc.Channel, GetResult, int, WatchStream]):
    """Blocking client. ``timeout`` arguments are seconds (float or timedelta);
    every call raises a :class:`cxcache.CacheError` subclass on failure."""

    _channel_api: ClassVar[Any] = grpc

    def _run_unary(self, prepare: Callable[[], UnaryCall[_T]]) -> _T:
        call = prepare()
        with call.errors():
            resp = call.start()
        return call.parse(resp)

    def _open_watch(self, call: Any, had_deadline: bool) -> WatchStream:
        return WatchStream(call, had_deadline)

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "CacheClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncWatchStream(WatchStreamCore, AsyncIterator[WatchEvent]):
    """Async iterator over the events of one Watch call."""

    def __aiter__(self) -> "AsyncWatchStream":
        return self

    async def __anext__(self) -> WatchEvent:
        try:
            msg = await self._call.read()
        except asyncio.CancelledError:
            if self._cancelled:
                raise StopAsyncIteration from None
            raise
        except grpc.aio.AioRpcError as err:
            if self._ended_by_cancel(err.code()):
                raise StopAsyncIteration from None
            raise self._error(err) from err
        if msg is grpc.aio.EOF:
            raise StopAsyncIteration
        return self._event(msg)

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
    and ``invalidate`` return coroutines."""

    _channel_api: ClassVar[Any] = grpc.aio

    async def _run_unary(self, prepare: Callable[[], UnaryCall[_T]]) -> _T:
        call = prepare()
        with call.errors():
            resp = await call.start()
        return call.parse(resp)

    def _open_watch(self, call: Any, had_deadline: bool) -> AsyncWatchStream:
        return AsyncWatchStream(call, had_deadline)

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncCacheClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
