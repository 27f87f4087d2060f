//! The shared store (L2): the seam between the cache and its backend.
//!
//! Two backends: Redis (standalone or cluster, through `fred`) for fleets of
//! instances, and an embedded in-memory store for running one instance with
//! nothing else installed. Everything above this module speaks [`Store`].

mod memory;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

use crate::config::RedisSettings;
use crate::error::Result;

/// A key-value store with per-key expiry. Keys are store keys
/// ([`crate::keys::store_key`]), already hash-tagged for Redis Cluster.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The value under `key`, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;
    /// Writes `value` under `key`; it expires after `ttl` (always set).
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()>;
    /// Removes `keys`; returns how many existed.
    async fn delete(&self, keys: &[String]) -> Result<u64>;
    /// Remaining time to live of `key` (None if absent or without expiry).
    async fn ttl(&self, key: &str) -> Result<Option<Duration>>;
    /// Human-readable backend name for logs and health.
    fn backend(&self) -> &'static str;
}

/// The connected backend: the store, and the Redis pool when there is one
/// (for the modules that need Redis beyond key-value: limiter, leases, bus).
pub struct Connected {
    pub store: Arc<dyn Store>,
    pub redis: Option<fred::prelude::Pool>,
}

/// Connects the store the settings name: Redis when a URL is set, else memory.
pub async fn connect(settings: &RedisSettings) -> Result<Connected> {
    match &settings.url {
        Some(url) => {
            let store = RedisStore::connect(url, settings).await?;
            let redis = Some(store.pool());
            Ok(Connected { store: Arc::new(store), redis })
        }
        None => Ok(Connected { store: Arc::new(MemoryStore::new()), redis: None }),
    }
}
