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

mod auth;
mod cache;
mod callbacks;
mod http;
mod services;
mod upstream;

pub use self::auth::{
    AuthSettings, CallerSettings, IssuerSettings, JwtIdentity, LimitSettings, Scopes, TlsSettings,
};
pub use self::cache::{
    CacheSettings, L1Settings, PinnedKey, RefreshAheadSettings, TtlSettings, VerifySettings,
};
pub use self::callbacks::CallbackSettings;
pub use self::http::{DataActionSettings, TopicMapping, WebhookSettings};
pub use self::services::{EmulatorSettings, NotificationSettings, RedisSettings, TelemetrySettings};
pub use self::upstream::{Credential, JobSettings, RateLimitSettings, RetrySettings, UpstreamSettings};

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
    /// Load and validate the configuration (file, environment, flags;
    /// catalog included), print the effective config with secrets redacted,
    /// and exit: 0 valid, 2 invalid. Binds nothing, connects nothing.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,
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
    /// Who may call, and what each caller may do.
    pub auth: AuthSettings,
    /// TLS on the gRPC and HTTP listeners.
    pub tls: TlsSettings,
    /// Admission limits.
    pub limits: LimitSettings,
    /// HTTP endpoints that receive cache events (`[[callbacks]]`).
    pub callbacks: Vec<CallbackSettings>,
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
            auth: AuthSettings::default(),
            tls: TlsSettings::default(),
            limits: LimitSettings::default(),
            callbacks: Vec::new(),
        }
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

    /// The effective configuration as TOML, every secret (credential
    /// secrets, door secrets and tokens, Redis passwords) replaced by `***`.
    pub fn to_redacted_toml(&self) -> Result<String, String> {
        let mut value = toml::Value::try_from(self).map_err(|e| format!("config as TOML: {e}"))?;
        redact(&mut value);
        toml::to_string_pretty(&value).map_err(|e| format!("config as TOML: {e}"))
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
                problems.push(format!(
                    "redis.url {:?}: expected redis://, rediss://, redis-cluster:// or rediss-cluster://",
                    redacted(url)
                ));
            }
        }
        if let Err(e) = crate::catalog::Catalog::with_presets(&self.catalog) {
            problems.push(format!("catalog: {e}"));
        }
        if cfg!(not(feature = "emulator")) && self.upstream.base_url.is_none() {
            problems.push(
                "upstream.base_url: required (this build has no bundled emulator); set --upstream-url / \
                 CXCACHE_UPSTREAM_URL (e.g. https://api.mypurecloud.com) and upstream.credentials"
                    .into(),
            );
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
        if ttl.analytics_min > ttl.analytics_max {
            problems.push("cache.ttl.analytics_min must not exceed cache.ttl.analytics_max".into());
        }
        let ahead = &self.cache.refresh_ahead;
        if ahead.interval.is_zero() {
            problems.push("cache.refresh_ahead.interval must be positive".into());
        }
        if !(0.0..1.0).contains(&ahead.lead) {
            problems.push("cache.refresh_ahead.lead must be in [0, 1)".into());
        }
        if let Ok(catalog) = crate::catalog::Catalog::with_presets(&self.catalog) {
            for (i, p) in ahead.pinned.iter().enumerate() {
                match catalog.get(&p.kind) {
                    None => {
                        problems.push(format!("cache.refresh_ahead.pinned[{i}]: unknown kind {:?}", p.kind))
                    }
                    Some(k) if k.cacheable(Some(p.id.as_str()).filter(|s| !s.is_empty())) != Some(true) => {
                        problems.push(format!("cache.refresh_ahead.pinned[{i}]: {} is not cacheable", p.kind))
                    }
                    Some(_) => {}
                }
            }
        }
        if !self.cache.verify.interval.is_zero() && self.cache.verify.sample == 0 {
            problems.push("cache.verify.sample must be positive when cache.verify.interval is set".into());
        }
        // An empty secret would sign with an empty key: anyone could forge.
        if self.webhook.secret.as_ref().is_some_and(|s| s.expose().trim().is_empty()) {
            problems
                .push("webhook.secret is empty: unset it to close the doors, or set a real secret".into());
        }
        if self.data_action.token.as_ref().is_some_and(|s| s.expose().trim().is_empty()) {
            problems.push("data_action.token is empty: unset it or set a real token".into());
        }
        let rl = &self.upstream.rate_limit;
        if rl.allowed == 0 || rl.window.is_zero() {
            problems.push("upstream.rate_limit.allowed and .window must be positive".into());
        }
        let in_unit = |v: f64| v > 0.0 && v <= 1.0;
        if !in_unit(rl.utilization) || !in_unit(rl.fallback_share) {
            problems.push("upstream.rate_limit.utilization and .fallback_share must be in (0, 1]".into());
        }
        if rl.ceiling > 0 && rl.ceiling < rl.allowed {
            problems.push("upstream.rate_limit.ceiling must be 0 (no cap) or at least .allowed".into());
        }
        let share = |v: f64| (0.0..=1.0).contains(&v);
        if !share(rl.background_reserve) || !share(rl.background_floor) {
            problems.push(
                "upstream.rate_limit.background_reserve and .background_floor must be in [0, 1]".into(),
            );
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
        self.validate_security(&mut problems);
        let mut names = std::collections::BTreeSet::new();
        for (i, cb) in self.callbacks.iter().enumerate() {
            problems.extend(cb.problems(i));
            if !names.insert(cb.name.as_str()) {
                problems.push(format!("callbacks[{i}].name {:?}: two endpoints share it", cb.name));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

impl Config {
    /// Callers, issuers, TLS files and limits; and secure by default: a
    /// listener on a non-loopback address needs callers (or an explicit
    /// `auth.allow_anonymous`).
    fn validate_security(&self, problems: &mut Vec<String>) {
        let auth = &self.auth;
        let exposed: Vec<SocketAddr> =
            [self.grpc_addr, self.http_addr].into_iter().filter(|a| !a.ip().is_loopback()).collect();
        if !exposed.is_empty() && !auth.enabled() && !auth.allow_anonymous {
            let addrs = exposed.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
            problems.push(format!(
                "{addrs}: not a loopback address, and no callers are configured: anyone who can reach it \
                 could read, purge and spend the upstream quota. Add callers to the config file, e.g.\n  \
                 [[auth.callers]]\n  name = \"my-service\"\n  api_keys = [\"sha256:<hex of sha256(key)>\"]\n  \
                 scopes = {{ get = [\"routing.*\"] }}\n\
                 (see README \"Callers and scopes\"), or set auth.allow_anonymous = true \
                 (CXCACHE_AUTH__ALLOW_ANONYMOUS=true) to serve anyone"
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in auth.callers.iter().enumerate() {
            let at = format!("auth.callers[{i}]");
            if c.name.trim().is_empty() {
                problems.push(format!("{at}.name: required"));
            } else if !names.insert(c.name.as_str()) {
                problems.push(format!("{at}.name {:?}: two callers share it", c.name));
            }
            if c.api_keys.is_empty() && c.jwt.is_empty() && c.tls_san.is_empty() {
                problems.push(format!("{at} ({}): give it api_keys, jwt or tls_san", c.name));
            }
            for (j, k) in c.api_keys.iter().enumerate() {
                let hex = k.strip_prefix("sha256:").unwrap_or("");
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    // Not echoed: it may be a key pasted by mistake.
                    problems.push(format!(
                        "{at}.api_keys[{j}] is not sha256:<64 hex digits> (store the hash, never the key)"
                    ));
                }
            }
            for j in &c.jwt {
                if !auth.issuers.iter().any(|iss| iss.issuer == j.issuer) {
                    problems.push(format!("{at}.jwt: issuer {:?} is not in auth.issuers", j.issuer));
                }
            }
            if !c.tls_san.is_empty() && self.tls.client_ca.is_none() {
                problems.push(format!("{at}.tls_san needs tls.client_ca (mutual TLS)"));
            }
        }
        for (i, iss) in auth.issuers.iter().enumerate() {
            let at = format!("auth.issuers[{i}]");
            if iss.issuer.is_empty() {
                problems.push(format!("{at}.issuer: required"));
            }
            match (&iss.secret, &iss.jwks_file) {
                (Some(s), None) if s.expose().len() < 16 => {
                    problems.push(format!("{at}.secret: at least 16 bytes"))
                }
                (Some(_), None) => {}
                (None, Some(path)) if !path.is_file() => {
                    problems.push(format!("{at}.jwks_file {}: not a readable file", path.display()))
                }
                (None, Some(_)) => {}
                _ => problems
                    .push(format!("{at}: set exactly one of secret (HS256) or jwks_file (RS256/ES256)")),
            }
        }
        if auth.enabled() && self.data_action.token.is_some() {
            problems.push(
                "data_action.token and auth.callers are both set: with callers, the data-action door \
                 authenticates callers and checks their data_actions scope; unset data_action.token"
                    .into(),
            );
        }
        let r = &self.redis;
        let redis_tls = r.url.as_deref().is_some_and(|u| u.starts_with("rediss"));
        if (r.tls_ca.is_some() || r.tls_cert.is_some()) && !redis_tls {
            problems.push(
                "redis.tls_ca / tls_cert are set but redis.url is not rediss:// (or rediss-cluster://)"
                    .into(),
            );
        }
        if r.tls_cert.is_some() != r.tls_key.is_some() {
            problems.push("redis.tls_cert and redis.tls_key: set both or neither".into());
        }
        for path in [&r.tls_ca, &r.tls_cert, &r.tls_key].into_iter().flatten() {
            if !path.is_file() {
                problems.push(format!("redis: {} is not a readable file", path.display()));
            }
        }
        let tls = &self.tls;
        if tls.cert.is_some() != tls.key.is_some() {
            problems.push("tls.cert and tls.key: set both or neither".into());
        }
        if tls.client_ca.is_some() && tls.cert.is_none() {
            problems.push("tls.client_ca needs tls.cert and tls.key".into());
        }
        for path in [&tls.cert, &tls.key, &tls.client_ca].into_iter().flatten() {
            if !path.is_file() {
                problems.push(format!("tls: {} is not a readable file", path.display()));
            }
        }
        if tls.enabled() && tls.reload_interval.is_zero() {
            problems.push("tls.reload_interval must be positive".into());
        }
        let l = &self.limits;
        let c = &self.cache;
        if c.watch_heartbeat_min.is_zero() || c.watch_heartbeat < c.watch_heartbeat_min {
            problems
                .push("cache.watch_heartbeat_min must be positive and at most cache.watch_heartbeat".into());
        }
        if c.watch_retention_keys == 0 || c.watch_retention.is_zero() {
            problems.push("cache.watch_retention_keys and cache.watch_retention must be positive".into());
        }
        if l.max_watch_streams == 0 || l.max_watch_streams_per_caller == 0 || l.max_concurrent_requests == 0 {
            problems.push(
                "limits.max_watch_streams, .max_watch_streams_per_caller and .max_concurrent_requests must be positive"
                    .into(),
            );
        }
        if l.max_list_entries == 0 || l.max_string_bytes == 0 {
            problems.push("limits.max_list_entries and .max_string_bytes must be positive".into());
        }
        if l.request_timeout.is_zero() || l.keepalive_interval.is_zero() || l.keepalive_timeout.is_zero() {
            problems.push(
                "limits.request_timeout, .keepalive_interval and .keepalive_timeout must be positive".into(),
            );
        }
    }
}

/// `url` with any password replaced, for logs and errors.
/// Field names whose values are secrets, wherever they appear.
const SECRET_FIELDS: &[&str] = &["client_secret", "secret", "token", "password"];

fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (name, v) in table.iter_mut() {
                match v {
                    toml::Value::String(s) if SECRET_FIELDS.contains(&name.as_str()) => *s = "***".into(),
                    toml::Value::String(s) if name == "url" => *s = redacted(s),
                    _ => redact(v),
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => url.to_string(),
        // Unparsable: keep only the scheme, in case a secret is in there.
        Err(_) => format!("{}://…", url.split("://").next().unwrap_or("?")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_config_is_printed_without_secrets() {
        let mut c = Config::default();
        c.upstream.base_url = Some("https://api.mypurecloud.com".into());
        c.upstream.credentials =
            vec![Credential { client_id: "svc-a".into(), client_secret: Secret::new("s3cret-a") }];
        c.webhook.secret = Some(Secret::new("s3cret-hook"));
        c.data_action.token = Some(Secret::new("s3cret-token"));
        c.redis.url = Some("redis://:s3cret-redis@redis:6379".into());
        let text = c.to_redacted_toml().unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("svc-a") && text.contains("***"), "{text}");
        assert!(text.contains("api.mypurecloud.com"), "{text}");
    }

    #[test]
    fn a_bad_catalog_entry_is_a_config_error() {
        let text = r#"
            [catalog."x.broken"]
            method = "GET"
            path = "api/v2/things/{id}"
            ttl_class = "config"
        "#;
        let c: Config = toml::from_str(text).expect("parses");
        let err = c.validate().expect_err("a path without a leading '/' is refused");
        assert!(err.contains("catalog kind x.broken: path must start with '/'"), "{err}");
    }

    #[test]
    fn redis_passwords_never_reach_messages() {
        let url = "redis-cluster://app:hunter2@10.0.0.1:6379?node=10.0.0.2:6379";
        assert!(!redacted(url).contains("hunter2"), "{}", redacted(url));
        assert!(redacted(url).contains("10.0.0.1"));
        assert_eq!(redacted("redis://10.0.0.1:6379"), "redis://10.0.0.1:6379");
        let mut c = Config::default();
        c.redis.url = Some("redis-clustr://app:hunter2@h:1".into());
        let err = c.validate().unwrap_err();
        assert!(err.contains("redis.url") && !err.contains("hunter2"), "{err}");
    }

    #[test]
    fn refresh_ahead_and_verifier_settings_are_checked() {
        let text = r#"
            [cache.refresh_ahead]
            hot_requests = 5
            pinned = [{ kind = "routing.queue", id = "q-ivr" }, { kind = "routing.nope", id = "x" }]
            lead = 1.5
            [cache.verify]
            interval = "30s"
            sample = 0
        "#;
        let c: Config = toml::from_str(text).expect("parses");
        assert_eq!(c.cache.refresh_ahead.hot_requests, 5);
        assert_eq!(c.cache.refresh_ahead.pinned[0].id, "q-ivr");
        let err = c.validate().unwrap_err();
        assert!(err.contains("cache.refresh_ahead.lead"), "{err}");
        assert!(err.contains("pinned[1]: unknown kind \"routing.nope\""), "{err}");
        assert!(!err.contains("pinned[0]"), "{err}");
        assert!(err.contains("cache.verify.sample"), "{err}");
        assert!(Config::default().validate().is_ok(), "the defaults are valid");
    }

    #[test]
    fn empty_door_secrets_are_refused() {
        let mut c = Config::default();
        c.webhook.secret = Some(Secret::new(""));
        assert!(c.validate().unwrap_err().contains("webhook.secret"));
        let mut c = Config::default();
        c.data_action.token = Some(Secret::new(" "));
        assert!(c.validate().unwrap_err().contains("data_action.token"));
    }

    #[test]
    fn analytics_ttl_bounds_must_be_ordered() {
        let mut c = Config::default();
        c.cache.ttl.analytics_min = std::time::Duration::from_secs(600);
        c.cache.ttl.analytics_max = std::time::Duration::from_secs(60);
        assert!(c.validate().unwrap_err().contains("analytics_min"));
    }

    #[test]
    fn a_non_loopback_listener_needs_callers_or_explicit_anonymous() {
        let mut c = Config { grpc_addr: ([0, 0, 0, 0], 50051).into(), ..Config::default() };
        let err = c.validate().unwrap_err();
        assert!(err.contains("0.0.0.0:50051") && err.contains("[[auth.callers]]"), "{err}");
        assert!(err.contains("auth.allow_anonymous"), "{err}");
        c.auth.allow_anonymous = true;
        c.validate().unwrap();
        c.auth.allow_anonymous = false;
        c.auth.callers = vec![CallerSettings {
            name: "svc".into(),
            api_keys: vec![format!("sha256:{}", "ab".repeat(32))],
            ..CallerSettings::default()
        }];
        c.validate().unwrap();
    }

    #[test]
    fn callers_are_checked() {
        let mut c = Config::default();
        c.auth.callers = vec![
            CallerSettings { name: "a".into(), api_keys: vec!["plaintext-key".into()], ..Default::default() },
            CallerSettings {
                name: "a".into(),
                jwt: vec![JwtIdentity { issuer: "https://nowhere".into(), subject: None }],
                ..Default::default()
            },
        ];
        let err = c.validate().unwrap_err();
        assert!(err.contains("not sha256:") && !err.contains("plaintext"), "{err}");
        assert!(err.contains("two callers share it") && err.contains("not in auth.issuers"), "{err}");
    }

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
