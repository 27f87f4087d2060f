"""Sync and asyncio clients for cxcache.v1.Cache."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import grpc
import grpc.aio

from ._errors import CacheError, from_rpc_error
from ._types import (
    GetResult,
    Seconds,
    WatchEvent,
    build_get_request,
    build_invalidate_request,
    build_watch_request,
)
from .v1 import cache_pb2_grpc

Metadata = Sequence[Tuple[str, Union[str, bytes]]]
StrList = Union[str, Iterable[str], None]

_DEFAULT_TARGET = "127.0.0.1:50051"


def _timeout(value: Optional[Seconds], default: Optional[float]) -> Optional[float]:
    if value is None:
        return default
    if hasattr(value, "total_seconds"):
        return value.total_seconds()  # type: ignore[union-attr]
    return float(value)


class WatchStream(Iterator[WatchEvent]):
    """Iterator over the events of one Watch call. Cancel it (or use it as a
    context manager) to end the subscription; iteration then stops cleanly."""

    def __init__(self, call: Any, had_deadline: bool = False) -> None:
        self._call = call
        self._cancelled = False
        self._had_deadline = had_deadline

    def __iter__(self) -> "WatchStream":
        return self

    def __next__(self) -> WatchEvent:
        try:
            msg = next(self._call)
        except StopIteration:
            raise
        except grpc.RpcError as err:
            if self._cancelled and err.code() == grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                raise StopIteration from None
            raise from_rpc_error(err, self._had_deadline) from err
        return WatchEvent._from_pb(msg)

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
            if self._cancelled and self._call.code() == grpc.StatusCode.CANCELLED:
                return False
            raise from_rpc_error(self._call, self._had_deadline)
        return True

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> "WatchStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()


class CacheClient:
    """Blocking client. ``timeout`` arguments are seconds (float or timedelta);
    every call raises a :class:`cxcache.CacheError` subclass on failure."""

    def __init__(
        self,
        target: str = _DEFAULT_TARGET,
        *,
        channel: Optional[grpc.Channel] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        options: Optional[Sequence[Tuple[str, Any]]] = None,
        default_timeout: Optional[float] = None,
        metadata: Optional[Metadata] = None,
    ) -> None:
        self._owns_channel = channel is None
        if channel is None:
            if credentials is not None:
                channel = grpc.secure_channel(target, credentials, options=options)
            else:
                channel = grpc.insecure_channel(target, options=options)
        self._channel = channel
        self._stub = cache_pb2_grpc.CacheStub(channel)
        self._default_timeout = default_timeout
        self._metadata = tuple(metadata or ())

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
    ) -> GetResult:
        req = build_get_request(kind, id, variant, params, body, max_age, allow_stale, force_refresh)
        deadline = _timeout(timeout, self._default_timeout)
        try:
            resp = self._stub.Get(req, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err, deadline is not None) from err
        return GetResult._from_pb(resp)

    def invalidate(
        self,
        keys: StrList = None,
        prefixes: StrList = None,
        tags: StrList = None,
        reason: Optional[str] = None,
        timeout: Optional[Seconds] = None,
    ) -> int:
        """Purge entries by exact key, key prefix or tag; returns the number purged."""
        req = build_invalidate_request(keys, prefixes, tags, reason)
        deadline = _timeout(timeout, self._default_timeout)
        try:
            resp = self._stub.Invalidate(req, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err, deadline is not None) from err
        return int(resp.purged)

    def watch(
        self,
        keys: StrList = None,
        prefixes: StrList = None,
        kinds: StrList = None,
        timeout: Optional[Seconds] = None,
        tags: StrList = None,
    ) -> WatchStream:
        """Subscribe to events; iterate the returned stream. ``timeout`` bounds the
        whole subscription (no default timeout applies to watches)."""
        req = build_watch_request(keys, prefixes, kinds, tags)
        deadline = _timeout(timeout, None)
        call = self._stub.Watch(req, timeout=deadline, metadata=self._metadata)
        return WatchStream(call, deadline is not None)

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "CacheClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncWatchStream(AsyncIterator[WatchEvent]):
    """Async iterator over the events of one Watch call."""

    def __init__(self, call: Any, had_deadline: bool = False) -> None:
        self._call = call
        self._cancelled = False
        self._had_deadline = had_deadline

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
            if self._cancelled and err.code() == grpc.StatusCode.CANCELLED:
                raise StopAsyncIteration from None
            raise from_rpc_error(err, self._had_deadline) from err
        if msg is grpc.aio.EOF:
            raise StopAsyncIteration
        return WatchEvent._from_pb(msg)

    async def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait until the server has accepted the subscription; see WatchStream.wait_ready."""
        try:
            await asyncio.wait_for(self._call.initial_metadata(), timeout)
        except asyncio.TimeoutError:
            return False
        if self._call.done():
            code = await self._call.code()
            if code != grpc.StatusCode.OK:
                if self._cancelled and code == grpc.StatusCode.CANCELLED:
                    return False
                try:
                    await self._call.read()
                except grpc.aio.AioRpcError as err:
                    raise from_rpc_error(err, self._had_deadline) from err
                raise CacheError(await self._call.details() or "", code=code)
        return True

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    async def __aenter__(self) -> "AsyncWatchStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.cancel()


class AsyncCacheClient:
    """asyncio client (grpc.aio). Same arguments and errors as CacheClient."""

    def __init__(
        self,
        target: str = _DEFAULT_TARGET,
        *,
        channel: Optional[grpc.aio.Channel] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        options: Optional[Sequence[Tuple[str, Any]]] = None,
        default_timeout: Optional[float] = None,
        metadata: Optional[Metadata] = None,
    ) -> None:
        self._owns_channel = channel is None
        if channel is None:
            if credentials is not None:
                channel = grpc.aio.secure_channel(target, credentials, options=options)
            else:
                channel = grpc.aio.insecure_channel(target, options=options)
        self._channel = channel
        self._stub = cache_pb2_grpc.CacheStub(channel)
        self._default_timeout = default_timeout
        self._metadata = tuple(metadata or ())

    async def get(
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
    ) -> GetResult:
        req = build_get_request(kind, id, variant, params, body, max_age, allow_stale, force_refresh)
        deadline = _timeout(timeout, self._default_timeout)
        try:
            resp = await self._stub.Get(req, timeout=deadline, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, deadline is not None) from err
        return GetResult._from_pb(resp)

    async def invalidate(
        self,
        keys: StrList = None,
        prefixes: StrList = None,
        tags: StrList = None,
        reason: Optional[str] = None,
        timeout: Optional[Seconds] = None,
    ) -> int:
        req = build_invalidate_request(keys, prefixes, tags, reason)
        deadline = _timeout(timeout, self._default_timeout)
        try:
            resp = await self._stub.Invalidate(req, timeout=deadline, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, deadline is not None) from err
        return int(resp.purged)

    def watch(
        self,
        keys: StrList = None,
        prefixes: StrList = None,
        kinds: StrList = None,
        timeout: Optional[Seconds] = None,
        tags: StrList = None,
    ) -> AsyncWatchStream:
        req = build_watch_request(keys, prefixes, kinds, tags)
        deadline = _timeout(timeout, None)
        call = self._stub.Watch(req, timeout=deadline, metadata=self._metadata)
        return AsyncWatchStream(call, deadline is not None)

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncCacheClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
