//! One typed configuration, loaded from defaults < TOML file < environment
//! (`CXCACHE_SECTION__FIELD`) < command-line flags, and validated before any
//! port is bound so a bad config fails fast with a clear message.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Kind};

/// Command-line flags; each also reads the environment variable shown.
#[derive(Debug, Default, Parser, Serialize)]
#[command(name = "cxcache", version, about = "gRPC cache in front of the Genesys Cloud CX API")]
pub struct Flags {
    /// TOML config file.
    #[arg(long, env = "CXCACHE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Key namespace, e.g. prod or staging (first segment of every key).
    #[arg(long, env = "CXCACHE_ENV")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// gRPC listen address (port 0 picks a free port).
    #[arg(long, env = "CXCACHE_GRPC_ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<SocketAddr>,
    /// HTTP side listen address: metrics, webhooks, data actions.
    #[arg(long, env = "CXCACHE_HTTP_ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<SocketAddr>,
    /// Redis URL: redis://host:port (standalone) or redis-cluster://host:port
    /// (one seed node is enough). Unset: the embedded in-memory store.
    #[arg(long, env = "CXCACHE_REDIS_URL")]
    #[serde(skip)]
    pub redis_url: Option<String>,
    /// Upstream API base URL, e.g. https://api.mypurecloud.com. Unset: a
    /// bundled Genesys emulator is started in-process.
    #[arg(long, env = "CXCACHE_UPSTREAM_URL")]
    #[serde(skip)]
    pub upstream_url: Option<String>,
    /// OAuth client id (client-credentials grant).
    #[arg(long, env = "CXCACHE_CLIENT_ID")]
    #[serde(skip)]
    pub client_id: Option<String>,
    /// OAuth client secret.
    #[arg(long, env = "CXCACHE_CLIENT_SECRET", hide_env_values = true)]
    #[serde(skip)]
    pub client_secret: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "CXCACHE_LOG_FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// Environment variables handled by [`Flags`] (so the generic env layer skips them).
const FLAG_ENV: &[&str] = &[
    "config",
    "env",
    "grpc_addr",
    "http_addr",
    "redis_url",
    "upstream_url",
    "client_id",
    "client_secret",
    "log_format",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A string that never shows up in logs or `Debug` output.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Key namespace: the first segment of every key (`prod:routing.queue:…`).
    pub env: String,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// How long SIGTERM waits for in-flight calls and streams to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub redis: RedisSettings,
    pub upstream: UpstreamSettings,
    pub cache: CacheSettings,
    /// Kinds added to, or replacing, the bundled Genesys presets.
    pub catalog: BTreeMap<String, Kind>,
    /// Settings of the bundled emulator, used only when no upstream URL is set.
    pub emulator: EmulatorSettings,
    /// Trace export (logs and metrics need no settings).
    pub telemetry: TelemetrySettings,
    /// The webhook / EventBridge purge doors on the HTTP side.
    pub webhook: WebhookSettings,
    /// The data-action door on the HTTP side.
    pub data_action: DataActionSettings,
    /// Notification API channels that purge on platform change events.
    pub notifications: NotificationSettings,
}

/// One instance per fleet (a lease in the store) holds Notification API
/// channels subscribed to the topics of what is cached, and purges on their
/// events (see `notifications`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationSettings {
    /// Unset: on with the bundled emulator, off with a configured upstream
    /// (channels count against the OAuth client's 20-channel limit, and a
    /// 21st evicts the oldest, possibly another integration's).
    pub enabled: Option<bool>,
    /// OAuth client id whose channels these are (default: the first credential).
    pub client_id: Option<String>,
    /// Listener lease: a dead listener is replaced within this time.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the wanted topics are recomputed from the cached keys (a
    /// newly cached key's topic is also added as soon as its store is announced).
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// Channels are replaced this long before they expire.
    #[serde(with = "humantime_serde")]
    pub renew_before: Duration,
    /// A socket silent this long (no event, no heartbeat) is reconnected.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// Most channels held (the platform allows 20 per client; one is kept
    /// spare for replacements).
    pub max_channels: usize,
    /// Topics per channel (the platform's limit is 1000).
    pub topics_per_channel: usize,
    /// Reconnect backoff: first wait and cap.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
}

impl Default for NotificationSettings {
    fn default() -> Self {
        NotificationSettings {
            enabled: None,
            client_id: None,
            lease_ttl: Duration::from_secs(10),
            reconcile_interval: Duration::from_secs(1),
            renew_before: Duration::from_secs(600),
            heartbeat_timeout: Duration::from_secs(100),
            max_channels: 19,
            topics_per_channel: 1000,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(10),
        }
    }
}

/// Signed change events that purge (see `http::webhook`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Shared secret: bodies are signed with HMAC-SHA256
    /// (`X-Cxcache-Signature: sha256=<hex>`) or carry an HS256 JWT
    /// (`Authorization: Bearer …`). Unset: the doors refuse every event.
    pub secret: Option<Secret>,
    /// An event id seen within this window is acknowledged and ignored.
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// Topic patterns → what to purge. Patterns are dot-separated; `{id}`
    /// captures a segment, `*` matches one segment, `**` the rest. Without
    /// `{id}` in the pattern, the event's `entityId` is the id.
    pub topics: Vec<TopicMapping>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicMapping {
    pub topic: String,
    /// Tag templates (`queue:{id}`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Key templates relative to the namespace (`routing.queue:{id}:full`).
    #[serde(default)]
    pub keys: Vec<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let map = |topic: &str, tag: &str| TopicMapping {
            topic: topic.into(),
            tags: vec![tag.into()],
            keys: vec![],
        };
        WebhookSettings {
            secret: None,
            dedupe_window: Duration::from_secs(3600),
            topics: vec![
                map("routing.queue.*", "queue:{id}"),
                map("v2.routing.queues.{id}.**", "queue:{id}"),
                map("v2.audits.entitytype.QUEUE.entityid.{id}", "queue:{id}"),
                map("user.*", "user:{id}"),
                map("v2.users.{id}.routingStatus", "user-routing-status:{id}"),
                map("v2.audits.entitytype.USER.entityid.{id}", "user:{id}"),
                map("routing.skill.*", "skill:{id}"),
                map("v2.audits.entitytype.SKILL.entityid.{id}", "skill:{id}"),
            ],
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataActionSettings {
    /// Bearer token callers must send (`Authorization: Bearer …`). Unset:
    /// the door is open (bind the HTTP side to a private address).
    pub token: Option<Secret>,
}

/// OpenTelemetry trace export; off unless `otlp_endpoint` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`. Unset: no traces.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings { otlp_endpoint: None, service_name: "cxcache".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Unset: embedded in-memory store (single instance only).
    pub url: Option<String>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Per-command timeout: a stuck node must not hang callers.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub client_id: String,
    pub client_secret: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// API base URL. Unset: the bundled emulator.
    pub base_url: Option<String>,
    /// OAuth token URL; default `{base_url}/oauth/token` (for the real
    /// platform: https://login.mypurecloud.com/oauth/token).
    pub token_url: Option<String>,
    /// OAuth client credentials (a pool: each has its own rate-limit budget).
    pub credentials: Vec<Credential>,
    /// Timeout of one upstream HTTP request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest upstream response body accepted.
    pub max_response_bytes: usize,
    /// Largest number of entities assembled for a paged list.
    pub max_list_entries: usize,
    /// Page size asked for when assembling paged lists.
    pub page_size: u32,
    /// Per-credential rate limiting shared by every instance.
    pub rate_limit: RateLimitSettings,
    /// Retries of 429, 5xx and timeouts.
    pub retry: RetrySettings,
    /// Async analytics jobs (submit, poll, validate).
    pub jobs: JobSettings,
    /// How long a credential whose token endpoint or tokens keep failing
    /// is left out before it is tried again.
    #[serde(with = "humantime_serde")]
    pub credential_park: Duration,
    /// Without a caller deadline: the longest single wait for quota or
    /// before a retry; a longer one fails the call at once, saying when to retry.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

/// The budget of each credential's token, enforced fleet-wide in Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Calls one token may make per window (the platform's default is 300
    /// per minute); lowered at run time when `inin-ratelimit-allowed` says so.
    pub allowed: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Share of the budget spent at steady state; the rest is headroom.
    pub utilization: f64,
    /// Calls a token may make back to back; 0 = about 3 % of the budget.
    pub burst: u32,
    /// Share of the budget an instance allows itself when Redis is
    /// unreachable (the other instances do the same).
    pub fallback_share: f64,
    /// A token whose headers say fewer calls than this remain is rested
    /// until its window resets (0: never).
    pub nearly_spent: u32,
    /// Timeout of one limiter call to Redis before falling back.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
}

/// Truncated exponential backoff with jitter; `Retry-After` is honoured exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    #[serde(with = "humantime_serde")]
    pub cap: Duration,
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Attempts per call (the first included), all inside the caller's deadline.
    pub max_attempts: u32,
}

/// Async analytics detail jobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSettings {
    /// First poll delay; doubles up to `poll_max` (1, 2, 4, 8, 15, 15 s).
    #[serde(with = "humantime_serde")]
    pub poll_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_max: Duration,
    /// A job not finished after this long is abandoned.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// A result with fewer rows than this share of what its interval and
    /// grouping imply is discarded and the interval split.
    pub min_rows_fraction: f64,
    /// How many times an interval may be halved.
    pub max_splits: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Largest `body_json` accepted in a Get.
    pub max_body_bytes: usize,
    /// How long past its TTL an entry stays stored, to be served stale when
    /// the upstream fails or the quota is spent.
    #[serde(with = "humantime_serde")]
    pub stale_grace: Duration,
    /// Volatile per-response fields removed (at any depth) before storing.
    pub drop_fields: Vec<String>,
    /// Request-metadata fields removed from query bodies before hashing.
    pub body_ignore_fields: Vec<String>,
    pub ttl: TtlSettings,
    /// Past its TTL, a value is still served (marked stale) for this long
    /// while one background refresh runs: callers never wait for upstream.
    /// 0 turns it off (a caller can still ask for it with `allow_stale`).
    #[serde(with = "humantime_serde")]
    pub stale_while_revalidate: Duration,
    /// When the upstream fails, values at most this far past their TTL are
    /// served stale; older ones give the upstream's error.
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
    /// Probabilistic early refresh (XFetch) of hot keys: larger refreshes
    /// earlier; 0 turns it off.
    pub early_refresh_beta: f64,
    /// How long one instance may hold the fetch lease of a key; another
    /// instance takes over after it (a dead holder delays others this long).
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    pub l1: L1Settings,
    /// How long `Invalidate` waits for every instance to confirm it dropped
    /// its L1 copies.
    #[serde(with = "humantime_serde")]
    pub invalidation_ack_timeout: Duration,
    /// Events buffered per Watch stream before it is told it lagged.
    pub watch_buffer: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct L1Settings {
    pub enabled: bool,
    /// Bytes of values held in process at most.
    pub max_bytes: u64,
    /// L1's own TTL (values are also never served past their freshness).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for L1Settings {
    fn default() -> Self {
        L1Settings { enabled: true, max_bytes: 64 << 20, ttl: Duration::from_secs(2) }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TtlSettings {
    #[serde(with = "humantime_serde")]
    pub config: Duration,
    #[serde(with = "humantime_serde")]
    pub realtime: Duration,
    #[serde(with = "humantime_serde")]
    pub r#static: Duration,
    /// Analytics TTL = this fraction of the query's granularity (or interval).
    pub analytics_fraction: f64,
    #[serde(with = "humantime_serde")]
    pub analytics_min: Duration,
    #[serde(with = "humantime_serde")]
    pub analytics_max: Duration,
    /// Each TTL is shortened by a random fraction up to this, so keys written
    /// together do not all expire together.
    pub jitter: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmulatorSettings {
    pub rate_limit: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub queues: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            env: "dev".into(),
            grpc_addr: ([127, 0, 0, 1], 50051).into(),
            http_addr: ([127, 0, 0, 1], 8080).into(),
            shutdown_grace: Duration::from_secs(20),
            log_format: LogFormat::Text,
            redis: RedisSettings::default(),
            upstream: UpstreamSettings::default(),
            cache: CacheSettings::default(),
            catalog: BTreeMap::new(),
            emulator: EmulatorSettings::default(),
            webhook: WebhookSettings::default(),
            data_action: DataActionSettings::default(),
            telemetry: TelemetrySettings::default(),
            notifications: NotificationSettings::default(),
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: None,
            pool_size: 4,
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            base_url: None,
            token_url: None,
            credentials: Vec::new(),
            request_timeout: Duration::from_secs(10),
            max_response_bytes: 16 << 20,
            max_list_entries: 500,
            page_size: 100,
            rate_limit: RateLimitSettings::default(),
            retry: RetrySettings::default(),
            jobs: JobSettings::default(),
            credential_park: Duration::from_secs(60),
            max_wait: Duration::from_secs(5),
        }
    }
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            allowed: 300,
            window: Duration::from_secs(60),
            utilization: 0.95,
            burst: 0,
            fallback_share: 0.25,
            nearly_spent: 2,
            redis_timeout: Duration::from_millis(250),
        }
    }
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(8),
            jitter: Duration::from_millis(500),
            max_attempts: 4,
        }
    }
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            poll_initial: Duration::from_secs(1),
            poll_max: Duration::from_secs(15),
            timeout: Duration::from_secs(600),
            min_rows_fraction: 0.8,
            max_splits: 4,
        }
    }
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_body_bytes: 64 << 10,
            stale_grace: Duration::from_secs(3600),
            drop_fields: vec!["_links".into(), "retrievedAt".into()],
            body_ignore_fields: vec!["requestId".into()],
            ttl: TtlSettings::default(),
            stale_while_revalidate: Duration::ZERO,
            max_staleness: Duration::from_secs(3600),
            early_refresh_beta: 1.0,
            lease_ttl: Duration::from_secs(15),
            l1: L1Settings::default(),
            invalidation_ack_timeout: Duration::from_secs(1),
            watch_buffer: 256,
        }
    }
}

impl Default for TtlSettings {
    fn default() -> Self {
        TtlSettings {
            config: Duration::from_secs(300),
            realtime: Duration::from_secs(30),
            r#static: Duration::from_secs(6 * 3600),
            analytics_fraction: 0.95,
            analytics_min: Duration::from_secs(60),
            analytics_max: Duration::from_secs(24 * 3600),
            jitter: 0.05,
        }
    }
}

impl Default for EmulatorSettings {
    fn default() -> Self {
        EmulatorSettings { rate_limit: 300, window: Duration::from_secs(60), queues: 50 }
    }
}

impl Config {
    /// Loads defaults < file < `CXCACHE_*` environment < flags, then validates.
    pub fn load(flags: &Flags) -> Result<Config, String> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &flags.config {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment
            .merge(
                // Nested settings only (`CXCACHE_CACHE__TTL__CONFIG`): top-level
                // ones are flags, and other `CXCACHE_*` variables (test
                // harness settings) must not trip `deny_unknown_fields`.
                Env::prefixed("CXCACHE_")
                    .filter(|k| {
                        !FLAG_ENV.contains(&k.as_str())
                            && (k.as_str().contains("__") || k == "shutdown_grace")
                    })
                    .split("__"),
            )
            .merge(Serialized::defaults(flags));
        let mut config: Config = figment.extract().map_err(|e| format!("configuration: {e}"))?;
        config.apply_flags(flags);
        config.validate()?;
        Ok(config)
    }

    fn apply_flags(&mut self, flags: &Flags) {
        if let Some(url) = &flags.redis_url {
            self.redis.url = Some(url.clone()).filter(|u| !u.is_empty());
        }
        if let Some(url) = &flags.upstream_url {
            self.upstream.base_url = Some(url.clone()).filter(|u| !u.is_empty());
        }
        if let (Some(id), Some(secret)) = (&flags.client_id, &flags.client_secret) {
            self.upstream.credentials =
                vec![Credential { client_id: id.clone(), client_secret: Secret::new(secret.clone()) }];
        }
    }

    /// Checks everything that would otherwise fail later at run time.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.env.is_empty() || !self.env.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problems.push(format!("env {:?}: use letters, digits, '-' or '_'", self.env));
        }
        if let Some(url) = &self.redis.url {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis-cluster://")
                || url.starts_with("rediss-cluster://"))
            {
                problems.push(format!("redis.url {url:?}: expected redis:// or redis-cluster://"));
            }
        }
        if self.upstream.base_url.is_some() && self.upstream.credentials.is_empty() {
            problems.push(
                "upstream.base_url is set but no upstream.credentials (or --client-id/--client-secret)"
                    .into(),
            );
        }
        if let Some(url) = &self.upstream.base_url {
            if url::Url::parse(url).is_err() {
                problems.push(format!("upstream.base_url {url:?} is not a URL"));
            }
        }
        let ttl = &self.cache.ttl;
        if !(0.0..1.0).contains(&ttl.jitter) {
            problems.push("cache.ttl.jitter must be in [0, 1)".into());
        }
        if !(ttl.analytics_fraction > 0.0 && ttl.analytics_fraction <= 1.0) {
            problems.push("cache.ttl.analytics_fraction must be in (0, 1]".into());
        }
        let rl = &self.upstream.rate_limit;
        if rl.allowed == 0 || rl.window.is_zero() {
            problems.push("upstream.rate_limit.allowed and .window must be positive".into());
        }
        let in_unit = |v: f64| v > 0.0 && v <= 1.0;
        if !in_unit(rl.utilization) || !in_unit(rl.fallback_share) {
            problems.push("upstream.rate_limit.utilization and .fallback_share must be in (0, 1]".into());
        }
        if self.upstream.retry.max_attempts == 0 {
            problems.push("upstream.retry.max_attempts must be at least 1".into());
        }
        let jobs = &self.upstream.jobs;
        if jobs.poll_initial.is_zero() || jobs.poll_max < jobs.poll_initial {
            problems.push("upstream.jobs.poll_initial must be positive and at most poll_max".into());
        }
        if !(0.0..=1.0).contains(&jobs.min_rows_fraction) {
            problems.push("upstream.jobs.min_rows_fraction must be in [0, 1]".into());
        }
        if self.upstream.max_list_entries == 0 || self.upstream.page_size == 0 {
            problems.push("upstream.max_list_entries and upstream.page_size must be positive".into());
        }
        let n = &self.notifications;
        if n.lease_ttl < Duration::from_millis(300) || n.reconcile_interval.is_zero() {
            problems.push(
                "notifications.lease_ttl must be at least 300ms and reconcile_interval positive".into(),
            );
        }
        if !(1..=20).contains(&n.max_channels) || !(1..=1000).contains(&n.topics_per_channel) {
            problems.push("notifications.max_channels must be 1-20 and topics_per_channel 1-1000".into());
        }
        if let Err(e) = Catalog::with_presets(&self.catalog) {
            problems.push(e);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn secrets_never_print() {
        let c = Credential { client_id: "id".into(), client_secret: Secret::new("hunter2") };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn file_then_flags_layering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "env = \"prod\"\n[cache.ttl]\nconfig = \"120s\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(path),
            redis_url: Some("redis-cluster://127.0.0.1:7000".into()),
            ..Flags::default()
        };
        let c = Config::load(&flags).unwrap();
        assert_eq!(c.env, "prod");
        assert_eq!(c.cache.ttl.config, Duration::from_secs(120));
        assert_eq!(c.redis.url.as_deref(), Some("redis-cluster://127.0.0.1:7000"));
    }

    #[test]
    fn bad_values_are_reported_together() {
        let mut c = Config { env: "a:b".into(), ..Config::default() };
        c.cache.ttl.jitter = 2.0;
        let err = c.validate().unwrap_err();
        assert!(err.contains("env") && err.contains("jitter"), "{err}");
    }
}
