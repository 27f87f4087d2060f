//! Typed errors for everything behind the service edge, and the one place
//! they become gRPC statuses (with google.rpc details) or HTTP codes.
//!
//! Errors are `Clone` because one upstream failure is shared by every caller
//! coalesced onto the same fetch.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One input field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request, e.g. `body_json` or `freshness.max_age`.
    pub field: String,
    /// What is wrong with it, for humans.
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

/// Why a request could not be answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The caller sent something we refuse; nothing was fetched or written.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),

    /// The upstream says the entity does not exist.
    #[error("not found upstream: {0}")]
    NotFound(String),

    /// The upstream rejected our credentials (HTTP 401).
    #[error("upstream rejected the credentials: {0}")]
    Unauthenticated(String),

    /// The upstream refused access (HTTP 403).
    #[error("upstream denied access: {0}")]
    PermissionDenied(String),

    /// The upstream quota is spent (HTTP 429 or our own limiter).
    #[error("upstream rate limit reached; retry after {retry_after:?}")]
    RateLimited { retry_after: Duration },

    /// The upstream failed (5xx, connection error, timeout).
    #[error("upstream unavailable: {message}")]
    Unavailable { message: String, retry_after: Option<Duration> },

    /// The upstream answered something we cannot use (4xx we don't map,
    /// non-JSON body, list over the entry limit).
    #[error("upstream answer rejected: {0}")]
    BadUpstream(String),

    /// The caller's deadline passed while waiting.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),

    /// The shared store failed.
    #[error("store error: {0}")]
    Store(String),

    /// A bug or broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ")
}

impl Error {
    /// A single-field validation error.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// True for failures of the upstream itself (not of the caller's input),
    /// where serving a stale value is better than failing.
    pub fn is_upstream_failure(&self) -> bool {
        matches!(self, Error::RateLimited { .. } | Error::Unavailable { .. } | Error::DeadlineExceeded(_))
    }

    /// The HTTP status the data-action and webhook doors answer with.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::InvalidArgument(_) => 400,
            Error::NotFound(_) => 404,
            Error::Unauthenticated(_) | Error::PermissionDenied(_) => 502,
            Error::RateLimited { .. } => 429,
            Error::Unavailable { .. } | Error::Store(_) => 503,
            Error::BadUpstream(_) => 502,
            Error::DeadlineExceeded(_) => 504,
            Error::Internal(_) => 500,
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let message = err.to_string();
        match err {
            Error::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::NotFound(_) => Status::not_found(message),
            Error::Unauthenticated(_) => Status::unauthenticated(message),
            Error::PermissionDenied(_) => Status::permission_denied(message),
            Error::RateLimited { retry_after } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            Error::Unavailable { retry_after: Some(after), .. } => Status::with_error_details(
                Code::Unavailable,
                message,
                ErrorDetails::with_retry_info(Some(after)),
            ),
            Error::Unavailable { retry_after: None, .. } | Error::Store(_) => Status::unavailable(message),
            Error::BadUpstream(_) => Status::failed_precondition(message),
            Error::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            Error::Internal(_) => Status::internal(message),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
