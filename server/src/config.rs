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
            .merge(Env::prefixed("CXCACHE_").filter(|k| !FLAG_ENV.contains(&k.as_str())).split("__"))
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
        if self.upstream.max_list_entries == 0 || self.upstream.page_size == 0 {
            problems.push("upstream.max_list_entries and upstream.page_size must be positive".into());
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
