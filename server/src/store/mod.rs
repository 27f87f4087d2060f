//! The shared store (L2): the seam between the cache and its backend.
//!
//! Two backends: Redis (standalone or cluster, through `fred`) for fleets of
//! instances, and an embedded in-memory store for running one instance with
//! nothing else installed. Everything above this module speaks [`Store`].
//!
//! Beyond get/set, the store keeps the bookkeeping that makes purges safe
//! and fetches single across a fleet. All of it lives next to the entry (one
//! cluster slot per entity, see [`crate::keys`]) so each step is one atomic
//! script:
//! - a *generation* per entity, bumped by every purge; a fetch notes it when
//!   it starts and its write is refused if it changed (a purge happened);
//! - a *fence* per key: the lease token of the last write; a fetcher whose
//!   lease was lost and taken over cannot overwrite the newer value;
//! - a *lease* per key: one fetcher per key across the fleet;
//! - *indexes* (sorted sets scored by expiry) of keys per kind and per tag,
//!   so prefix and tag purges need no KEYS or SCAN.

mod budgets;
mod memory;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use self::budgets::{RedisBudgets, SharedBudgets, Take};
pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

use crate::config::RedisSettings;
use crate::error::Result;

/// A conditional write: stored only if the entity's generation is still
/// `generation` and no write with a higher `fence` happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteGuard {
    pub generation: u64,
    /// Lease token of the writer; 0 when the write was made without a lease.
    pub fence: u64,
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
    /// Writes like [`Store::set`] if `guard` still holds; returns whether it wrote.
    async fn set_guarded(&self, key: &str, value: Bytes, ttl: Duration, guard: WriteGuard) -> Result<bool>;
    /// The current generation of `key`'s entity.
    async fn generation(&self, key: &str) -> Result<u64>;
    /// Purges `key`: bumps its entity's generation and deletes it, atomically.
    /// Returns whether a value existed.
    async fn purge(&self, key: &str) -> Result<bool>;
    /// Takes the fetch lease of `key` for `ttl`; returns its fencing token, or
    /// None when another fetcher holds it.
    async fn try_lease(&self, key: &str, ttl: Duration) -> Result<Option<u64>>;
    /// Releases the lease if `token` still holds it.
    async fn release_lease(&self, key: &str, token: u64) -> Result<()>;
    /// Whether someone holds the lease of `key`.
    async fn lease_held(&self, key: &str) -> Result<bool>;
    /// Extends the lease of `key` to `ttl` from now if `token` still holds
    /// it; returns whether it did (false: lost).
    async fn renew_lease(&self, key: &str, token: u64, ttl: Duration) -> Result<bool>;
    /// Records `member` (a logical key) in `index` until `expires_at_ms`.
    async fn index_add(&self, index: &str, member: &str, expires_at_ms: i64) -> Result<()>;
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

/// How long bookkeeping keys (generation, fence) outlive their entry: long
/// enough that no fetch is in flight across their expiry.
pub const BOOKKEEPING_TTL: Duration = Duration::from_secs(24 * 3600);

/// The connected backend: the store, the fleet's shared rate-limit
/// budgets, and the Redis pool for the bus, when there is Redis.
pub struct Connected {
    pub store: Arc<dyn Store>,
    pub budgets: Option<Arc<dyn SharedBudgets>>,
    pub redis: Option<fred::prelude::Pool>,
}

/// Connects the store the settings name: Redis when a URL is set, else memory.
pub async fn connect(settings: &RedisSettings) -> Result<Connected> {
    match &settings.url {
        Some(url) => {
            let store = RedisStore::connect(url, settings).await?;
            let pool = store.pool();
            let budgets: Arc<dyn SharedBudgets> = Arc::new(RedisBudgets::new(pool.clone()));
            Ok(Connected { store: Arc::new(store), budgets: Some(budgets), redis: Some(pool) })
        }
        None => Ok(Connected { store: Arc::new(MemoryStore::new()), budgets: None, redis: None }),
    }
}
