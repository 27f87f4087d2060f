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

__version__ = "0.1.0"

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
