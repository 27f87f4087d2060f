"""cxcache: Python client for the cxcache gRPC cache (cxcache.v1.Cache).

    from cxcache import CacheClient
    with CacheClient("127.0.0.1:50051") as cache:
        r = cache.get("routing.queue", id="…", variant="summary", timeout=2)
        print(r.source, r.value)
"""

from ._client import AsyncCacheClient, AsyncWatchStream, CacheClient, WatchStream
from ._errors import (
    CacheError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    from_rpc_error,
)
from ._types import EventType, GetResult, Source, WatchEvent

try:  # written at build time from the repository's VERSION (see setup.py)
    from ._version import __version__
except ImportError:  # pragma: no cover - a source tree that was never built
    try:
        from importlib.metadata import version as _dist_version

        __version__ = _dist_version("cxcache")
    except Exception:
        __version__ = "0+unknown"

__all__ = [
    "AsyncCacheClient",
    "AsyncWatchStream",
    "CacheClient",
    "CacheError",
    "Cancelled",
    "DeadlineExceeded",
    "EventType",
    "FailedPrecondition",
    "FieldViolation",
    "GetResult",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Source",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "WatchEvent",
    "WatchStream",
    "from_rpc_error",
    "__version__",
]
