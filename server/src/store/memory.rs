//! The embedded in-memory store: the default when no Redis is configured.
//! A single instance's cache only; fleets need Redis. Values live in a
//! byte-bounded moka cache; the small bookkeeping (leases, indexes) in one
//! mutex-guarded map, which is touched only on misses and purges.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use moka::sync::Cache;
use moka::Expiry;
use parking_lot::Mutex;

use super::{Indexed, Lease, Store};
use crate::entry::now_ms;
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

/// Bookkeeping, swept like Redis would expire it: expired leases, expired
/// index members and emptied indexes. Without the sweep every distinct key
/// ever fetched (each analytics body is one) would stay here for good.
struct Books {
    /// key → lease token and until when it holds.
    leases: HashMap<String, (u64, Instant)>,
    /// index → member → expiry (unix ms).
    indexes: HashMap<String, BTreeMap<String, i64>>,
    next_sweep: Instant,
}

/// How often the bookkeeping is swept (on the next write after it is due).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl Books {
    fn new() -> Self {
        Books { leases: HashMap::new(), indexes: HashMap::new(), next_sweep: Instant::now() + SWEEP_EVERY }
    }

    fn sweep_if_due(&mut self) {
        let now = Instant::now();
        if now >= self.next_sweep {
            self.sweep(now);
        }
    }

    fn sweep(&mut self, now: Instant) {
        self.next_sweep = now + SWEEP_EVERY;
        self.leases.retain(|_, (_, until)| *until > now);
        let now_ms = now_ms();
        self.indexes.retain(|_, idx| {
            idx.retain(|_, exp| *exp > now_ms);
            !idx.is_empty()
        });
    }

    /// The token of the live lease of `key`.
    fn lease(&self, key: &str) -> Option<u64> {
        self.leases.get(key).filter(|(_, until)| *until > Instant::now()).map(|(t, _)| *t)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.leases.len() + self.indexes.values().map(BTreeMap::len).sum::<usize>() + self.indexes.len()
    }
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
        MemoryStore { items, books: Mutex::new(Books::new()) }
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

    async fn commit(&self, key: &str, value: Bytes, ttl: Duration, lease: Lease) -> Result<bool> {
        let mut books = self.books.lock();
        books.sweep_if_due();
        if books.lease(key) != Some(lease.token()) {
            // A replay of a write that landed finds its own value.
            return Ok(self.items.get(key).is_some_and(|i| i.value == value));
        }
        books.leases.remove(key);
        // Insert while holding the lock so a purge cannot slip between the
        // check and the write.
        self.items.insert(key.to_string(), Item { value, expires_at: Instant::now() + ttl });
        Ok(true)
    }

    async fn purge(&self, key: &str) -> Result<bool> {
        let mut books = self.books.lock();
        books.sweep_if_due();
        books.leases.remove(key);
        let existed = self.items.contains_key(key);
        self.items.invalidate(key);
        Ok(existed)
    }

    async fn try_lease(&self, key: &str, lease: Lease, ttl: Duration) -> Result<bool> {
        let mut books = self.books.lock();
        match books.lease(key) {
            Some(t) => Ok(t == lease.token()),
            None => {
                books.sweep_if_due();
                books.leases.insert(key.to_string(), (lease.token(), Instant::now() + ttl));
                Ok(true)
            }
        }
    }

    async fn release_lease(&self, key: &str, lease: Lease) -> Result<()> {
        let mut books = self.books.lock();
        if books.leases.get(key).is_some_and(|(t, _)| *t == lease.token()) {
            books.leases.remove(key);
        }
        Ok(())
    }

    async fn renew_lease(&self, key: &str, lease: Lease, ttl: Duration) -> Result<bool> {
        let mut books = self.books.lock();
        let now = Instant::now();
        match books.leases.get_mut(key) {
            Some((t, until)) if *t == lease.token() && *until > now => {
                *until = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn lease_held(&self, key: &str) -> Result<bool> {
        Ok(self.books.lock().lease(key).is_some())
    }

    async fn index_add(&self, index: &str, member: &str, expires_at_ms: i64) -> Result<Indexed> {
        let mut books = self.books.lock();
        // Expired members go in the periodic sweep, not on every add.
        books.sweep_if_due();
        let idx = books.indexes.entry(index.to_string()).or_default();
        // Re-adding always raises the score (as the Redis script does), so a
        // purge's conditional removal sees the key was indexed again.
        let score = *idx
            .entry(member.to_string())
            .and_modify(|exp| *exp = (*exp + 1).max(expires_at_ms))
            .or_insert(expires_at_ms);
        Ok(Indexed { key: member.to_string(), expires_at_ms: score })
    }

    async fn index_rescore(&self, index: &str, member: &Indexed, expires_at_ms: i64) -> Result<()> {
        if let Some(idx) = self.books.lock().indexes.get_mut(index) {
            if let Some(exp) = idx.get_mut(&member.key).filter(|exp| **exp == member.expires_at_ms) {
                *exp = expires_at_ms;
            }
        }
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
        // A plain item, like Redis's SET NX: get/set/delete see it too. The
        // lock makes check-and-insert atomic against other set_nx calls.
        let _books = self.books.lock();
        let now = Instant::now();
        if self.items.get(key).is_some_and(|i| i.expires_at > now) {
            return Ok(false);
        }
        self.items.insert(key.to_string(), Item { value: Bytes::from_static(b"1"), expires_at: now + ttl });
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
    use crate::keys;

    #[tokio::test]
    async fn bookkeeping_is_swept_once_it_expired() {
        let s = MemoryStore::new();
        for n in 0..100 {
            let key = keys::store_key(&format!("e:k:{n}:full"));
            assert!(s.try_lease(&key, Lease::new(), Duration::from_millis(10)).await.unwrap());
            s.index_add(&format!("tag:{n}"), "m", now_ms() + 20).await.unwrap();
        }
        assert!(s.books.lock().len() >= 300);
        tokio::time::sleep(Duration::from_millis(80)).await;
        let mut books = s.books.lock();
        books.sweep(Instant::now());
        assert_eq!(books.len(), 0, "leases and indexes all swept");
    }

    #[tokio::test]
    async fn idempotency_marks_are_items() {
        let s = MemoryStore::new();
        assert!(s.set_nx("mark", Duration::from_secs(5)).await.unwrap());
        assert!(!s.set_nx("mark", Duration::from_secs(5)).await.unwrap());
        assert_eq!(s.get("mark").await.unwrap().as_deref(), Some(&b"1"[..]));
        s.delete(&["mark".to_string()]).await.unwrap();
        assert!(s.set_nx("mark", Duration::from_secs(5)).await.unwrap(), "deleted marks free the id");
    }

    /// A purge of a key nothing stores or fetches writes nothing: random
    /// keys purged by the thousand must not grow the store.
    #[tokio::test]
    async fn a_purge_of_an_unknown_key_leaves_nothing() {
        let s = MemoryStore::new();
        for n in 0..100 {
            let key = keys::store_key(&format!("e:k:{n}:full"));
            assert!(!s.purge(&key).await.unwrap());
        }
        assert_eq!(s.books.lock().len(), 0);
        s.items.run_pending_tasks();
        assert_eq!(s.items.entry_count(), 0);
    }

    #[tokio::test]
    async fn a_lease_lost_to_expiry_and_taken_over_refuses_the_late_write() {
        let s = MemoryStore::new();
        let key = "cx:{e:k:1}:full";
        let (first, second) = (Lease::new(), Lease::new());
        assert!(s.try_lease(key, first, Duration::from_millis(20)).await.unwrap());
        assert!(!s.try_lease(key, second, Duration::from_millis(20)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(s.try_lease(key, second, Duration::from_secs(5)).await.unwrap());
        assert!(s.commit(key, Bytes::from_static(b"new"), Duration::from_secs(5), second).await.unwrap());
        assert!(!s.commit(key, Bytes::from_static(b"old"), Duration::from_secs(5), first).await.unwrap());
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
        // Indexed again after the read (a later fetch), even with an earlier
        // expiry (TTL jitter): it stays.
        let again = s.index_add("i", "p:q:1:full", far - 1000).await.unwrap();
        assert!(again.expires_at_ms > far, "re-adding raised the score: {again:?}");
        s.index_remove("i", &read).await.unwrap();
        assert_eq!(keys(s.index_members("i", "").await.unwrap()), vec!["p:q:1:full"]);
    }
}
