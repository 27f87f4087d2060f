//! The embedded in-memory store: the default when no Redis is configured.
//! A single instance's cache only; fleets need Redis. Values live in a
//! byte-bounded moka cache; the small bookkeeping (generations, fences,
//! leases, indexes, idempotency marks) in one mutex-guarded map, which is
//! touched only on misses and purges.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use moka::sync::Cache;
use moka::Expiry;
use parking_lot::Mutex;

use super::{Indexed, Store, WriteGuard};
use crate::entry::now_ms;
use crate::error::Result;
use crate::keys;

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

#[derive(Default)]
struct Books {
    generations: HashMap<String, u64>,
    fences: HashMap<String, u64>,
    lease_seq: HashMap<String, u64>,
    leases: HashMap<String, (u64, Instant)>,
    /// index → member → expiry (unix ms).
    indexes: HashMap<String, BTreeMap<String, i64>>,
    marks: HashMap<String, Instant>,
}

pub struct MemoryStore {
    items: Cache<String, Item>,
    books: Mutex<Books>,
}

impl MemoryStore {
    /// Bounded at 512 MiB of values so a runaway key space cannot exhaust memory.
    pub fn new() -> Self {
        let items = Cache::builder()
            .max_capacity(512 << 20)
            .weigher(|k: &String, v: &Item| (k.len() + v.value.len()).try_into().unwrap_or(u32::MAX))
            .expire_after(PerItemExpiry)
            .build();
        MemoryStore { items, books: Mutex::default() }
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
        Ok(self.items.get(key).filter(|i| i.expires_at > Instant::now()).map(|i| i.value))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        self.items.insert(key.to_string(), Item { value, expires_at: Instant::now() + ttl });
        Ok(())
    }

    async fn set_guarded(&self, key: &str, value: Bytes, ttl: Duration, guard: WriteGuard) -> Result<bool> {
        {
            let mut books = self.books.lock();
            let generation = books.generations.get(&keys::generation_key(key)).copied().unwrap_or(0);
            let fence = books.fences.get(key).copied().unwrap_or(0);
            if generation != guard.generation || (guard.fence > 0 && fence > guard.fence) {
                return Ok(false);
            }
            if guard.fence > 0 {
                books.fences.insert(key.to_string(), guard.fence);
            }
            // Insert while holding the lock so a purge cannot slip between
            // the check and the write.
            self.items.insert(key.to_string(), Item { value, expires_at: Instant::now() + ttl });
        }
        Ok(true)
    }

    async fn generation(&self, key: &str) -> Result<u64> {
        Ok(self.books.lock().generations.get(&keys::generation_key(key)).copied().unwrap_or(0))
    }

    async fn purge(&self, key: &str) -> Result<bool> {
        let existed = {
            let mut books = self.books.lock();
            *books.generations.entry(keys::generation_key(key)).or_default() += 1;
            let existed = self.items.contains_key(key);
            self.items.invalidate(key);
            existed
        };
        Ok(existed)
    }

    async fn try_lease(&self, key: &str, ttl: Duration) -> Result<Option<u64>> {
        let mut books = self.books.lock();
        let now = Instant::now();
        if books.leases.get(key).is_some_and(|(_, until)| *until > now) {
            return Ok(None);
        }
        let seq = books.lease_seq.entry(key.to_string()).or_default();
        *seq += 1;
        let token = *seq;
        books.leases.insert(key.to_string(), (token, now + ttl));
        Ok(Some(token))
    }

    async fn release_lease(&self, key: &str, token: u64) -> Result<()> {
        let mut books = self.books.lock();
        if books.leases.get(key).is_some_and(|(t, _)| *t == token) {
            books.leases.remove(key);
        }
        Ok(())
    }

    async fn renew_lease(&self, key: &str, token: u64, ttl: Duration) -> Result<bool> {
        let mut books = self.books.lock();
        let now = Instant::now();
        match books.leases.get_mut(key) {
            Some((t, until)) if *t == token && *until > now => {
                *until = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn lease_held(&self, key: &str) -> Result<bool> {
        Ok(self.books.lock().leases.get(key).is_some_and(|(_, until)| *until > Instant::now()))
    }

    async fn index_add(&self, index: &str, member: &str, expires_at_ms: i64) -> Result<()> {
        let mut books = self.books.lock();
        let idx = books.indexes.entry(index.to_string()).or_default();
        let now = now_ms();
        idx.retain(|_, exp| *exp > now);
        let exp = idx.entry(member.to_string()).or_insert(expires_at_ms);
        *exp = (*exp).max(expires_at_ms);
        Ok(())
    }

    async fn index_members(&self, index: &str, prefix: &str) -> Result<Vec<Indexed>> {
        let books = self.books.lock();
        let now = now_ms();
        Ok(books
            .indexes
            .get(index)
            .map(|idx| {
                idx.range(prefix.to_string()..)
                    .take_while(|(m, _)| m.starts_with(prefix))
                    .filter(|(_, exp)| **exp > now)
                    .map(|(m, exp)| Indexed { key: m.clone(), expires_at_ms: *exp })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn index_remove(&self, index: &str, members: &[Indexed]) -> Result<()> {
        if let Some(idx) = self.books.lock().indexes.get_mut(index) {
            for m in members {
                if idx.get(&m.key) == Some(&m.expires_at_ms) {
                    idx.remove(&m.key);
                }
            }
        }
        Ok(())
    }

    async fn set_nx(&self, key: &str, ttl: Duration) -> Result<bool> {
        let mut books = self.books.lock();
        let now = Instant::now();
        books.marks.retain(|_, until| *until > now);
        if books.marks.contains_key(key) {
            return Ok(false);
        }
        books.marks.insert(key.to_string(), now + ttl);
        Ok(true)
    }

    async fn delete(&self, keys: &[String]) -> Result<u64> {
        let mut n = 0;
        for key in keys {
            if self.items.remove(key).is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_purge_refuses_a_write_guarded_by_the_old_generation() {
        let s = MemoryStore::new();
        let key = keys::store_key("e:k:1:full");
        let guard = WriteGuard { generation: s.generation(&key).await.unwrap(), fence: 0 };
        s.purge(&key).await.unwrap();
        assert!(!s
            .set_guarded(&key, Bytes::from_static(b"old"), Duration::from_secs(5), guard)
            .await
            .unwrap());
        assert_eq!(s.get(&key).await.unwrap(), None);
        let guard = WriteGuard { generation: s.generation(&key).await.unwrap(), fence: 0 };
        assert!(s
            .set_guarded(&key, Bytes::from_static(b"new"), Duration::from_secs(5), guard)
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn leases_fence_late_writers() {
        let s = MemoryStore::new();
        let key = "cx:{e:k:1}:full";
        let t1 = s.try_lease(key, Duration::from_millis(20)).await.unwrap().unwrap();
        assert!(s.try_lease(key, Duration::from_millis(20)).await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(30)).await;
        let t2 = s.try_lease(key, Duration::from_secs(5)).await.unwrap().unwrap();
        assert!(t2 > t1);
        let g = |fence| WriteGuard { generation: 0, fence };
        assert!(s.set_guarded(key, Bytes::from_static(b"new"), Duration::from_secs(5), g(t2)).await.unwrap());
        assert!(!s
            .set_guarded(key, Bytes::from_static(b"old"), Duration::from_secs(5), g(t1))
            .await
            .unwrap());
        assert_eq!(s.get(key).await.unwrap().unwrap(), Bytes::from_static(b"new"));
    }

    #[tokio::test]
    async fn indexes_answer_prefixes() {
        let s = MemoryStore::new();
        let far = now_ms() + 60_000;
        for m in ["p:q:1:full", "p:q:1:summary", "p:q:2:full"] {
            s.index_add("i", m, far).await.unwrap();
        }
        s.index_add("i", "p:q:3:full", now_ms() - 1).await.unwrap();
        let keys = |m: Vec<Indexed>| m.into_iter().map(|m| m.key).collect::<Vec<_>>();
        assert_eq!(keys(s.index_members("i", "p:q:1:").await.unwrap()), vec!["p:q:1:full", "p:q:1:summary"]);
        let read = s.index_members("i", "p:q:").await.unwrap();
        assert_eq!(read.len(), 3);
        // p:q:1:full is indexed again (a later fetch) after the read: it stays.
        s.index_add("i", "p:q:1:full", far + 1000).await.unwrap();
        s.index_remove("i", &read).await.unwrap();
        assert_eq!(keys(s.index_members("i", "").await.unwrap()), vec!["p:q:1:full"]);
    }
}
