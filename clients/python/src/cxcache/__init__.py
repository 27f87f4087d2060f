"""cxcache: Python client for the cxcache gRPC cache (cxcache.v1.Cache).

    from cxcache import CacheClient
    with CacheClient("127.0.0.1:50051") as cache:
        r = cache.get("routing.queue", id="…", variant="summary", timeout=2)
        print(r.source, r.json())

Exceptions are named ``<Code>Error``; the old names (``InvalidArgument``, ...) are
deprecated aliases that still work (with a DeprecationWarning).
"""

from typing import Any

from ._client import AsyncCacheClient, AsyncWatchStream, CacheClient, WatchStream
from ._core import TLS, RetryPolicy
from ._errors import (
    CacheError,
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    deprecated_alias,
    from_rpc_error,
)
from ._near import NearCache, NearStats
from ._types import EventType, GetResult, JSONValue, Source, WatchEvent

try:  # written at build time from the repository's VERSION (see setup.py)
    from ._version import __version__
except ImportError:  # pragma: no cover - a source tree that was never built
    try:
        from importlib.metadata import version as _dist_version

        __version__ = _dist_version("cxcache")
    except Exception:
        __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    """The deprecated exception names (PEP 562): ``cxcache.InvalidArgument`` is
    ``cxcache.InvalidArgumentError``, with a DeprecationWarning."""
    cls = deprecated_alias(name)
    if cls is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return cls


__all__ = [
    "AsyncCacheClient",
    "AsyncWatchStream",
    "CacheClient",
    "CacheError",
    "CancelledError",
    "DeadlineExceededError",
    "EventType",
    "FailedPreconditionError",
    "FieldViolation",
    "GetResult",
    "InternalError",
    "InvalidArgumentError",
    "JSONValue",
    "NearCache",
    "NearStats",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "Source",
    "TLS",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "WatchEvent",
    "WatchStream",
    "from_rpc_error",
    "__version__",
]
