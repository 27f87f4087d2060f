//! The read path: TTL classes, staleness, L1, leases, invalidation acks and
//! Watch buffers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// How long an `Invalidate` that cannot be promised yet (Redis in
    /// failover, an instance not acknowledging) is retried before its
    /// error is returned, when the caller set no deadline (with one: until
    /// just before it).
    #[serde(with = "humantime_serde")]
    pub invalidation_retry: Duration,
    /// Events buffered per Watch stream before it is told it lagged.
    pub watch_buffer: usize,
    /// HEARTBEAT interval of a Watch stream that asks for none.
    #[serde(with = "humantime_serde")]
    pub watch_heartbeat: Duration,
    /// Shortest HEARTBEAT interval a subscriber may ask for (a shorter ask
    /// is raised to it).
    #[serde(with = "humantime_serde")]
    pub watch_heartbeat_min: Duration,
    /// Keys of recent events retained for resuming Watch streams.
    pub watch_retention_keys: usize,
    /// Age of the oldest event retained for resuming Watch streams.
    #[serde(with = "humantime_serde")]
    pub watch_retention: Duration,
    pub refresh_ahead: RefreshAheadSettings,
    pub verify: VerifySettings,
}

/// Refresh ahead: hot and pinned keys are refreshed before they expire, on
/// background budget only (what callers' misses leave), so callers never
/// find them expired.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefreshAheadSettings {
    /// A key is hot once it was asked for at least this many times within
    /// its last TTL window (0: only pinned keys are refreshed ahead).
    pub hot_requests: u32,
    /// How often due keys are looked for.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A key is due when less than this share of its TTL (plus one
    /// interval) is left.
    pub lead: f64,
    /// Keys tracked per instance at most (their request times and request).
    pub max_keys: usize,
    /// Keys refreshed ahead whether asked for or not (the queues an IVR
    /// routes through, say): fetched at start, then never let expire.
    pub pinned: Vec<PinnedKey>,
}

/// A key kept fresh from config: what a Get would name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PinnedKey {
    pub kind: String,
    pub id: String,
    pub variant: String,
}

impl Default for RefreshAheadSettings {
    fn default() -> Self {
        RefreshAheadSettings {
            hot_requests: 3,
            interval: Duration::from_secs(1),
            lead: 0.2,
            max_keys: 10_000,
            pinned: Vec::new(),
        }
    }
}

/// The consistency verifier: with spare budget, stored entries are
/// refetched (background priority, conditionally where validators exist)
/// and compared; a changed one is purged and counted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifySettings {
    /// How often a sample is verified (0: the verifier is off).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Entries per sample: every stored entry is looked at once per
    /// `ceil(entries / sample) × interval`.
    pub sample: usize,
}

impl Default for VerifySettings {
    fn default() -> Self {
        VerifySettings { interval: Duration::ZERO, sample: 10 }
    }
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
    /// An analytics query whose interval ended more than `analytics_settle`
    /// ago (past the platform's late data) cannot change any more: it lives
    /// this long instead of the granularity rule (0: off).
    #[serde(with = "humantime_serde")]
    pub analytics_closed: Duration,
    #[serde(with = "humantime_serde")]
    pub analytics_settle: Duration,
    /// Each TTL is shortened by a random fraction up to this, so keys written
    /// together do not all expire together.
    pub jitter: f64,
    /// How long an upstream 404 is remembered (negative caching), so ids
    /// that do not exist cost no quota when asked for again; purged like any
    /// entry when the resource appears. 0 turns it off.
    #[serde(with = "humantime_serde")]
    pub not_found: Duration,
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
            invalidation_retry: Duration::from_secs(5),
            watch_buffer: 256,
            watch_heartbeat: Duration::from_secs(1),
            watch_heartbeat_min: Duration::from_millis(100),
            watch_retention_keys: 100_000,
            watch_retention: Duration::from_secs(300),
            refresh_ahead: RefreshAheadSettings::default(),
            verify: VerifySettings::default(),
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
            analytics_closed: Duration::from_secs(24 * 3600),
            analytics_settle: Duration::from_secs(3600),
            jitter: 0.05,
            not_found: Duration::from_secs(30),
        }
    }
}
