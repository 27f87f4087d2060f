//! The embedded in-memory store: the default when no Redis is configured.
//! A single instance's cache only; fleets need Redis.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use moka::future::Cache;
use moka::Expiry;

use super::Store;
use crate::error::Result;

#[derive(Clone)]
struct Item {
    value: Bytes,
    expires_at: Instant,
}

/// Tells moka each item's own expiry.
struct PerItemExpiry;

impl Expiry<String, Item> for PerItemExpiry {
    fn expire_after_create(&self, _key: &String, item: &Item, now: Instant) -> Option<Duration> {
        Some(item.expires_at.saturating_duration_since(now))
    }
    fn expire_after_update(
        &self,
        _key: &String,
        item: &Item,
        now: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(item.expires_at.saturating_duration_since(now))
    }
}

pub struct MemoryStore {
    items: Cache<String, Item>,
}

impl MemoryStore {
    /// Bounded at 512 MiB of values so a runaway key space cannot exhaust memory.
    pub fn new() -> Self {
        let items = Cache::builder()
            .max_capacity(512 << 20)
            .weigher(|k: &String, v: &Item| (k.len() + v.value.len()).try_into().unwrap_or(u32::MAX))
            .expire_after(PerItemExpiry)
            .build();
        MemoryStore { items }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.items.get(key).await.filter(|i| i.expires_at > Instant::now()).map(|i| i.value))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        self.items.insert(key.to_string(), Item { value, expires_at: Instant::now() + ttl }).await;
        Ok(())
    }

    async fn delete(&self, keys: &[String]) -> Result<u64> {
        let mut n = 0;
        for key in keys {
            if self.items.remove(key).await.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>> {
        Ok(self.items.get(key).await.map(|i| i.expires_at.saturating_duration_since(Instant::now())))
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}
