//! What cxcache connects to or runs beside: Redis, trace export, the
//! Notification API listener and the bundled emulator.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// Clients in the pool (each with a connection per cluster node); 0:
    /// one per two CPUs. fred pipelines commands on each connection, so a
    /// few go far: on 2 cores one client served 20% more hits than four.
    pub pool_size: usize,
    /// Per-command timeout: a stuck node must not hang callers.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Purge durability: each purge waits (Redis `WAIT`) until this many
    /// replicas of its node have it, so a failover right after an OK cannot
    /// bring the purged value back. 0 (default): not waited for; Redis
    /// replicates asynchronously and a failover within a few milliseconds
    /// of a purge can lose it. Costs one replica round trip per purged key.
    pub purge_replicas: u32,
    /// How long a purge waits for those replicas; short of them, the purge
    /// fails as a store error (and `Invalidate` retries it).
    #[serde(with = "humantime_serde")]
    pub purge_replica_timeout: Duration,
    /// `rediss://` only: PEM CA bundle the server's certificate must chain
    /// to (unset: the system's roots).
    pub tls_ca: Option<std::path::PathBuf>,
    /// `rediss://` only: client certificate and key (Redis `tls-auth-clients`).
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// The TLS client built from the options above at start (not configured directly).
    #[serde(skip)]
    pub tls_client: Option<std::sync::Arc<rustls::ClientConfig>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmulatorSettings {
    pub rate_limit: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub queues: usize,
}

impl RedisSettings {
    /// The pool size in effect (`pool_size`, or one per two CPUs when 0).
    pub fn pool_clients(&self) -> usize {
        match self.pool_size {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() / 2).clamp(1, 8),
            n => n,
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: None,
            pool_size: 0,
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            purge_replicas: 0,
            purge_replica_timeout: Duration::from_millis(500),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_client: None,
        }
    }
}

impl Default for EmulatorSettings {
    fn default() -> Self {
        EmulatorSettings { rate_limit: 300, window: Duration::from_secs(60), queues: 50 }
    }
}
