"""Typed exceptions decoded from gRPC status codes and google.rpc status details.

The classes are named ``<Code>Error`` (PEP 8). The earlier names without the suffix
(``InvalidArgument``, ``NotFound``, ...) still work as deprecated aliases of the same
classes: importing one emits a DeprecationWarning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Type

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"

UPSTREAM_DOMAIN = "cxcache.upstream"
"""google.rpc.ErrorInfo.domain of the details that describe the platform's own error."""


@dataclass(frozen=True)
class FieldViolation:
    """One google.rpc.BadRequest field violation. Unpacks like the (field,
    description) tuple it replaces: ``for field, description in e.field_violations``."""

    field: str
    description: str

    def __iter__(self) -> Iterator[str]:
        return iter((self.field, self.description))


class CacheError(Exception):
    """Base class of every error raised by the cxcache clients.

    Attributes:
        code: the gRPC status code.
        message: the status message.
        details: the google.rpc detail messages (unpacked where the type is known,
            e.g. BadRequest, RetryInfo, ErrorInfo; otherwise the raw ``Any``).
        field_violations: list of :class:`FieldViolation` from a BadRequest detail.
        retry_after: seconds to wait before retrying, from a RetryInfo detail.
        error_info: the first google.rpc.ErrorInfo detail, or None.
        upstream_message / upstream_status / upstream_reason: the platform's own error
            (its message, HTTP status and error code) when the server sent an ErrorInfo
            with domain ``cxcache.upstream``; None otherwise.
        attempts: how many calls were made (more than 1 when the client retried).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: Optional[grpc.StatusCode] = None,
        details: Sequence[Any] = (),
        field_violations: Sequence[FieldViolation] = (),
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details: List[Any] = list(details)
        self.field_violations: List[FieldViolation] = [
            v if isinstance(v, FieldViolation) else FieldViolation(*v) for v in field_violations
        ]
        self.retry_after: Optional[float] = retry_after
        self.attempts = 1
        infos = [d for d in self.details if isinstance(d, error_details_pb2.ErrorInfo)]
        self.error_info: Optional[error_details_pb2.ErrorInfo] = infos[0] if infos else None
        upstream = next((i for i in infos if i.domain == UPSTREAM_DOMAIN), None)
        meta: Dict[str, str] = dict(upstream.metadata) if upstream is not None else {}
        self.upstream_reason: Optional[str] = (upstream.reason or None) if upstream is not None else None
        self.upstream_message: Optional[str] = meta.get("message") or None
        status = meta.get("status")
        self.upstream_status: Optional[int] = int(status) if status and status.isdigit() else None

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.upstream_message or self.upstream_status is not None:
            head = " ".join(str(p) for p in (self.upstream_status, self.upstream_reason) if p)
            text += f" (platform{' ' + head if head else ''}: {self.upstream_message or '-'})"
        if self.field_violations:
            text += " [" + "; ".join(f"{v.field}: {v.description}" for v in self.field_violations) + "]"
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after:g}s)"
        return text


class CancelledError(CacheError):
    code = grpc.StatusCode.CANCELLED


class InvalidArgumentError(CacheError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceededError(CacheError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(CacheError):
    code = grpc.StatusCode.NOT_FOUND


class PermissionDeniedError(CacheError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(CacheError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(CacheError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class UnimplementedError(CacheError):
    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(CacheError):
    code = grpc.StatusCode.INTERNAL


class UnavailableError(CacheError):
    code = grpc.StatusCode.UNAVAILABLE


class UnauthenticatedError(CacheError):
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE = {
    cls.code: cls
    for cls in (
        CancelledError,
        InvalidArgumentError,
        DeadlineExceededError,
        NotFoundError,
        PermissionDeniedError,
        ResourceExhaustedError,
        FailedPreconditionError,
        UnimplementedError,
        InternalError,
        UnavailableError,
        UnauthenticatedError,
    )
}

_DEPRECATED_ALIASES = {cls.__name__[: -len("Error")]: cls for cls in _BY_CODE.values()}
"""The pre-PEP 8 names (``InvalidArgument`` ...) -> the classes, for module __getattr__."""


def deprecated_alias(name: str) -> Optional[Type[CacheError]]:
    """The class an old exception name stands for (with a DeprecationWarning), or None."""
    cls = _DEPRECATED_ALIASES.get(name)
    if cls is not None:
        warnings.warn(
            f"cxcache.{name} is deprecated; use cxcache.{cls.__name__}", DeprecationWarning, stacklevel=3
        )
    return cls


def __getattr__(name: str) -> Any:
    cls = deprecated_alias(name)
    if cls is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return cls


_KNOWN_DETAILS = (
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.ErrorInfo,
    error_details_pb2.DebugInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
    error_details_pb2.RequestInfo,
)


def error_class(code: grpc.StatusCode) -> Type[CacheError]:
    return _BY_CODE.get(code, CacheError)


def _unpack(detail: any_pb2.Any) -> Any:
    for cls in _KNOWN_DETAILS:
        if detail.Is(cls.DESCRIPTOR):
            msg = cls()
            detail.Unpack(msg)
            return msg
    return detail


def _rich_status(err: grpc.RpcError) -> Optional[status_pb2.Status]:
    """The google.rpc.Status from the trailers, via grpcio-status when consistent."""
    try:
        from grpc_status import rpc_status

        return rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError:
        # grpcio-status refuses a Status whose code/message differ from the
        # call's; the details are still worth having.
        pass
    except Exception:  # pragma: no cover - not a Call (e.g. a bare RpcError)
        pass
    try:
        trailers = err.trailing_metadata() or ()  # type: ignore[attr-defined]
    except Exception:
        return None
    for key, value in trailers:
        if key == DETAILS_KEY:
            try:
                return status_pb2.Status.FromString(value)
            except Exception:
                return None
    return None


# tonic (the Rust gRPC server) enforces the caller's grpc-timeout itself and answers
# CANCELLED "Timeout expired" when it fires, which can reach the client just before the
# client's own timer would report DEADLINE_EXCEEDED.
SERVER_TIMEOUT_MESSAGE = "Timeout expired"


def from_rpc_error(err: grpc.RpcError, had_deadline: bool = False) -> CacheError:
    """Convert a grpc.RpcError (sync or aio) into the matching CacheError subclass.

    With ``had_deadline`` (the call carried a deadline), a server's CANCELLED
    "Timeout expired" is reported as DeadlineExceeded, as the caller's deadline is
    what ended the call.
    """
    try:
        code = err.code()  # type: ignore[attr-defined]
    except Exception:
        code = grpc.StatusCode.UNKNOWN
    try:
        message = err.details() or ""  # type: ignore[attr-defined]
    except Exception:
        message = str(err)
    if had_deadline and code == grpc.StatusCode.CANCELLED and message == SERVER_TIMEOUT_MESSAGE:
        code = grpc.StatusCode.DEADLINE_EXCEEDED
    details: List[Any] = []
    violations: List[FieldViolation] = []
    retry_after: Optional[float] = None
    status = _rich_status(err)
    if status is not None:
        if not message:
            message = status.message
        for d in status.details:
            msg = _unpack(d)
            details.append(msg)
            if isinstance(msg, error_details_pb2.BadRequest):
                violations.extend(FieldViolation(v.field, v.description) for v in msg.field_violations)
            elif isinstance(msg, error_details_pb2.RetryInfo):
                retry_after = msg.retry_delay.seconds + msg.retry_delay.nanos / 1e9
    cls = error_class(code)
    exc = cls(
        message,
        code=code,
        details=details,
        field_violations=violations,
        retry_after=retry_after,
    )
    exc.__cause__ = err
    return exc
