//! Who may call cxcache and what each caller may do (`[auth]`), TLS on the
//! listeners (`[tls]`) and admission limits (`[limits]`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Secret;

/// Caller authentication. With no callers configured every request is
/// anonymous and may do everything — fine on loopback, refused at start on
/// any other address unless `allow_anonymous` says so.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Serve a non-loopback address with no callers configured (every
    /// request anonymous, every scope granted). A warning at start.
    pub allow_anonymous: bool,
    /// Serve gRPC server reflection (unauthenticated, like health).
    pub reflection: bool,
    /// `/metrics` only for requests bearing a caller's credential.
    pub metrics_need_caller: bool,
    /// The callers: each request is authenticated as one of them.
    pub callers: Vec<CallerSettings>,
    /// JWT issuers whose tokens identify callers (a caller's `jwt` entries
    /// name the issuer and subject).
    pub issuers: Vec<IssuerSettings>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            allow_anonymous: false,
            reflection: true,
            metrics_need_caller: false,
            callers: Vec::new(),
            issuers: Vec::new(),
        }
    }
}

impl AuthSettings {
    /// True when requests must authenticate.
    pub fn enabled(&self) -> bool {
        !self.callers.is_empty()
    }
}

/// One caller (a service or a team).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallerSettings {
    /// The caller's name: audit lines and metrics name it.
    pub name: String,
    /// Hashes of its API keys, `sha256:<64 hex>` (`printf %s "$KEY" |
    /// sha256sum`). Several, so a key can be rotated without downtime.
    pub api_keys: Vec<String>,
    /// JWTs that identify this caller: issuer and subject (`sub`; unset:
    /// any subject of that issuer).
    pub jwt: Vec<JwtIdentity>,
    /// Client-certificate subject alternative names (DNS, URI or e-mail)
    /// that identify this caller under mutual TLS.
    pub tls_san: Vec<String>,
    /// What it may do.
    pub scopes: Scopes,
    /// Upstream calls (misses, forced refreshes) it may cause per minute;
    /// past its budget its Gets get RESOURCE_EXHAUSTED + RetryInfo. 0: unlimited.
    pub misses_per_minute: u32,
    /// Of those, how many back to back (0: a quarter of the minute's).
    pub miss_burst: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct JwtIdentity {
    pub issuer: String,
    pub subject: Option<String>,
}

/// A caller's permissions. Patterns are globs (`*` matches any run of
/// characters, so `routing.*` matches `routing.queue` and
/// `routing.queues`). Empty lists grant nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Scopes {
    /// Kinds it may Get.
    pub get: Vec<String>,
    /// Whether it may set `freshness.force_refresh` (spends upstream quota).
    pub force_refresh: bool,
    /// Whether it may set `freshness.max_age`.
    pub max_age: bool,
    /// Key prefixes it may Invalidate: every key and prefix it purges must
    /// start with one of them (its namespace), e.g. `prod:routing.`.
    pub invalidate_prefixes: Vec<String>,
    /// Tag patterns it may Invalidate, e.g. `queue:*`.
    pub invalidate_tags: Vec<String>,
    /// Kinds it may Watch (prefix and tag watches deliver only events of
    /// these kinds).
    pub watch: Vec<String>,
    /// Kinds it may execute through the HTTP data-action door; a pattern
    /// may also name `kind:id`, e.g. `integrations.action.execute:custom_-_1234`.
    pub data_actions: Vec<String>,
}

/// A JWT issuer: tokens are checked for signature, `iss`, `aud` (when
/// set), `exp` and `nbf`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IssuerSettings {
    /// The `iss` claim.
    pub issuer: String,
    /// Required `aud` claim (unset: not checked).
    pub audience: Option<String>,
    /// HS256 shared secret.
    pub secret: Option<Secret>,
    /// JWKS file with the issuer's RS256 / ES256 public keys (re-read on
    /// reload).
    pub jwks_file: Option<PathBuf>,
    /// Clock skew tolerated on `exp` / `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for IssuerSettings {
    fn default() -> Self {
        IssuerSettings {
            issuer: String::new(),
            audience: None,
            secret: None,
            jwks_file: None,
            leeway: Duration::from_secs(30),
        }
    }
}

/// TLS on the gRPC and HTTP listeners. Certificate and key are re-read when
/// their files change (rotation without restart).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain. With `key`: both listeners serve TLS only.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mutual
    /// TLS); its SANs identify the caller (`auth.callers.tls_san`).
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings { cert: None, key: None, client_ca: None, reload_interval: Duration::from_secs(10) }
    }
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

/// Admission limits: past them a clear error rather than unbounded memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Open Watch streams on this instance (RESOURCE_EXHAUSTED past it).
    pub max_watch_streams: usize,
    /// Open Watch streams per caller.
    pub max_watch_streams_per_caller: usize,
    /// gRPC requests handled at once; more are shed (UNAVAILABLE) at once.
    pub max_concurrent_requests: usize,
    /// Longest time a unary gRPC call may take (DEADLINE_EXCEEDED past it).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// HTTP/2 keepalive ping interval: dead connections (and their
    /// streams) are reaped.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Most keys + prefixes + tags (+ kinds) in one Invalidate or Watch.
    pub max_list_entries: usize,
    /// Longest key, prefix, tag or kind in an Invalidate or Watch (bytes).
    pub max_string_bytes: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_watch_streams: 10_000,
            max_watch_streams_per_caller: 1_000,
            max_concurrent_requests: 4_096,
            request_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_list_entries: 1_000,
            max_string_bytes: 1_024,
        }
    }
}
