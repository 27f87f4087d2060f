//! The shared store (L2): the seam between the cache and its backend.
//!
//! Two backends: Redis (standalone or cluster, through `fred`) for fleets of
//! instances, and an embedded in-memory store for running one instance with
//! nothing else installed. Everything above this module speaks [`Store`].
//!
//! Beyond get/set, the store keeps the bookkeeping that makes purges safe
//! and fetches single across a fleet, and no more of it than that (an entry
//! costs its own key plus its index memberships):
//! - a *lease* per key while it is fetched: one fetcher per key across the
//!   fleet. Its token is random and chosen by the fetcher, so a request
//!   fred replays after a connection drop recognizes its own lease. The
//!   fetch's write lands only while its lease still holds, and a purge
//!   deletes the lease with the entry: a fetch that began before a purge
//!   can never store its value after it. Nothing outlives the entry, so
//!   there is no counter to expire and restart (no generation ABA).
//! - *indexes* (sorted sets scored by expiry) of keys per kind and per
//!   shared tag, so prefix and tag purges need no KEYS or SCAN. An entity's
//!   own tag (`queue:{id}`) has no index: a purge of it names the entity's
//!   keys from the catalog, so an entry costs one key and one membership of
//!   its kind's index. A fetch indexes its key
//!   after taking the lease and before calling the upstream (a purge from
//!   then on finds it and deletes the lease), and takes the memberships
//!   back if it stores nothing.
//!
//! Each step on one key is one atomic script over keys of one cluster slot
//! (see [`crate::keys`]), safe to replay.

mod budgets;
mod memory;
mod outbox;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use self::budgets::{FleetBudget, RedisBudgets, SharedBudgets, Take};
pub use self::memory::MemoryStore;
pub use self::outbox::{Cursor, Logged, MemoryOutbox, Outbox, RedisOutbox};
pub use self::redis::RedisStore;

use crate::config::RedisSettings;
use crate::error::Result;

/// A fetch's claim on one key across the fleet: a random token, chosen by
/// the fetcher so a replayed request finds its own lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease(u64);

impl Lease {
    pub fn new() -> Self {
        Lease(rand::random::<u64>() | 1)
    }

    pub fn token(self) -> u64 {
        self.0
    }
}

impl Default for Lease {
    fn default() -> Self {
        Lease::new()
    }
}

/// A member of an index (a logical key) and the expiry it is scored by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    pub key: String,
    pub expires_at_ms: i64,
}

/// A key-value store with per-key expiry. Keys are store keys
/// ([`crate::keys::store_key`]), already hash-tagged for Redis Cluster.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The value under `key`, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;
    /// Writes `value` under `key` unconditionally; it expires after `ttl`.
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()>;
    /// Writes `value` under `key` (expiring after `ttl`) and releases the
    /// lease, if `lease` still holds it: no purge since it was taken.
    /// Returns whether it wrote (a replay of a write that landed: true).
    async fn commit(&self, key: &str, value: Bytes, ttl: Duration, lease: Lease) -> Result<bool>;
    /// Purges `key`: deletes it and its fetch lease, atomically, so a fetch
    /// under way cannot store afterwards. Returns whether a value existed.
    async fn purge(&self, key: &str) -> Result<bool>;
    /// Takes the fetch lease of `key` for `ttl`; false when another fetcher
    /// holds it (a replay of our own request: true).
    async fn try_lease(&self, key: &str, lease: Lease, ttl: Duration) -> Result<bool>;
    /// Releases the lease if `lease` still holds it.
    async fn release_lease(&self, key: &str, lease: Lease) -> Result<()>;
    /// Whether someone holds the lease of `key`.
    async fn lease_held(&self, key: &str) -> Result<bool>;
    /// Extends the lease of `key` to `ttl` from now if `lease` still holds
    /// it; returns whether it did (false: lost, to a purge or expiry).
    async fn renew_lease(&self, key: &str, lease: Lease, ttl: Duration) -> Result<bool>;
    /// Records `member` (a logical key) in `index` until `expires_at_ms`;
    /// returns the membership written (its score may be raised above the
    /// expiry, so that a removal of an earlier read leaves it).
    async fn index_add(&self, index: &str, member: &str, expires_at_ms: i64) -> Result<Indexed>;
    /// Moves `member`'s expiry to `expires_at_ms` if its membership is still
    /// the one read (nobody indexed it again since).
    async fn index_rescore(&self, index: &str, member: &Indexed, expires_at_ms: i64) -> Result<()>;
    /// Members of `index` (not yet expired) starting with `prefix`, with
    /// the expiry each is scored by.
    async fn index_members(&self, index: &str, prefix: &str) -> Result<Vec<Indexed>>;
    /// Removes each of `members` whose expiry is still the one read: a key
    /// indexed again since (a fetch that started after a purge) stays.
    async fn index_remove(&self, index: &str, members: &[Indexed]) -> Result<()>;
    /// Sets `key` if absent, for `ttl`; returns whether it was set (idempotency marks).
    async fn set_nx(&self, key: &str, ttl: Duration) -> Result<bool>;
    /// Removes `keys` outright (no generation bump); returns how many existed.
    async fn delete(&self, keys: &[String]) -> Result<u64>;
    /// Human-readable backend name for logs and health.
    fn backend(&self) -> &'static str;
}

/// The connected backend: the store, the fleet's shared rate-limit
/// budgets, the change-callback outbox, and the Redis pool for the bus,
/// when there is Redis.
pub struct Connected {
    pub store: Arc<dyn Store>,
    pub budgets: Option<Arc<dyn SharedBudgets>>,
    pub outbox: Arc<dyn Outbox>,
    pub redis: Option<fred::prelude::Pool>,
}

/// Connects the store the settings name: Redis when a URL is set, else memory.
pub async fn connect(settings: &RedisSettings) -> Result<Connected> {
    match &settings.url {
        Some(url) => {
            let store = RedisStore::connect(url, settings).await?;
            let pool = store.pool();
            let budgets: Arc<dyn SharedBudgets> = Arc::new(RedisBudgets::new(pool.clone()));
            let outbox: Arc<dyn Outbox> = Arc::new(RedisOutbox::new(pool.clone()));
            Ok(Connected { store: Arc::new(store), budgets: Some(budgets), outbox, redis: Some(pool) })
        }
        None => Ok(Connected {
            store: Arc::new(MemoryStore::new()),
            budgets: None,
            outbox: Arc::new(MemoryOutbox::default()),
            redis: None,
        }),
    }
}

#[cfg(test)]
mod contract;
#[cfg(test)]
pub mod testing;
