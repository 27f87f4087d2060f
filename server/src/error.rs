//! Typed errors for everything behind the service edge, with the one code
//! table ([`Error::classify`]). The edges build their answers from it:
//! `grpc::status` (statuses with google.rpc details), `http` (JSON bodies).
//!
//! Errors are `Clone` because one upstream failure is shared by every caller
//! coalesced onto the same fetch.

use std::time::Duration;

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

/// What the upstream said when it refused a request (its JSON error body's
/// `code` and `message`, Genesys style).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub path: String,
    pub status: u16,
    /// The platform's error code (`bad.request`, …); empty when it gave none.
    pub code: String,
    pub message: String,
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

    /// The upstream refused the request with a 4xx we pass on (a bad
    /// analytics query, say), with what it said was wrong.
    #[error("upstream answered {}: {}", .0.status, .0.message)]
    Rejected(Rejection),

    /// The caller's deadline passed while waiting.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),

    /// The shared store failed.
    #[error("store error: {0}")]
    Store(String),

    /// The caller did not prove who it is (no, or a wrong, credential).
    #[error("unauthenticated: {0}")]
    NotAuthenticated(String),

    /// The caller is known but its scopes do not allow the operation.
    #[error("caller {caller} lacks scope {scope} for {what}")]
    Forbidden { caller: String, scope: String, what: String },

    /// A kind that executes something upstream (a data action) was asked
    /// for an action the catalog does not allow.
    #[error(
        "action {action} of {kind} is not allowed: list it under catalog.\"{kind}\".actions (with cacheable = true only if it just reads)"
    )]
    ActionNotAllowed { kind: String, action: String },

    /// The caller spent its miss budget (upstream calls it may cause).
    #[error(
        "caller {caller} spent its miss budget (auth.callers.misses_per_minute); retry after {retry_after:?}"
    )]
    CallerBudget { caller: String, retry_after: Duration },

    /// An admission limit was reached (Watch streams, …).
    #[error("limit reached: {0}")]
    LimitReached(String),

    /// A bug or broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ")
}

/// The canonical codes errors are reported with, numbered as gRPC's so the
/// gRPC edge converts by number and needs no table of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl Code {
    /// The canonical name (`INVALID_ARGUMENT`, …): metric labels and HTTP
    /// error bodies.
    pub fn name(self) -> &'static str {
        match self {
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
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

    /// The one code table: each error's canonical code and the HTTP status
    /// the HTTP doors answer with. An upstream that refused *our*
    /// credentials is a gateway failure (502) to an HTTP caller, not theirs.
    pub fn classify(&self) -> (Code, u16) {
        match self {
            Error::InvalidArgument(_) => (Code::InvalidArgument, 400),
            Error::NotFound(_) => (Code::NotFound, 404),
            Error::Unauthenticated(_) => (Code::Unauthenticated, 502),
            Error::PermissionDenied(_) => (Code::PermissionDenied, 502),
            Error::RateLimited { .. } => (Code::ResourceExhausted, 429),
            Error::Unavailable { .. } | Error::Store(_) => (Code::Unavailable, 503),
            Error::BadUpstream(_) => (Code::FailedPrecondition, 502),
            // The request built from the caller's input was refused: the
            // caller's to fix, so 400 on HTTP.
            Error::Rejected(_) => (Code::FailedPrecondition, 400),
            Error::DeadlineExceeded(_) => (Code::DeadlineExceeded, 504),
            Error::Internal(_) => (Code::Internal, 500),
            Error::NotAuthenticated(_) => (Code::Unauthenticated, 401),
            Error::Forbidden { .. } | Error::ActionNotAllowed { .. } => (Code::PermissionDenied, 403),
            Error::LimitReached(_) | Error::CallerBudget { .. } => (Code::ResourceExhausted, 429),
        }
    }

    /// The canonical code (see [`Error::classify`]).
    pub fn code(&self) -> Code {
        self.classify().0
    }

    /// How long the caller should wait before retrying, when waiting helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after } | Error::CallerBudget { retry_after, .. } => {
                Some(*retry_after)
            }
            Error::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The fields at fault (empty unless the input was refused).
    pub fn violations(&self) -> &[FieldViolation] {
        match self {
            Error::InvalidArgument(v) => v,
            _ => &[],
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
