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

use super::{Indexed, Store, WriteGuard, BOOKKEEPING_TTL};
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

/// A bookkeeping counter and when it was last written.
type Counter = (u64, Instant);

/// Bookkeeping, swept like Redis would expire it: counters
/// [`BOOKKEEPING_TTL`] after their last write, expired leases, expired index
/// members and emptied indexes. Without the sweep every distinct key ever
/// fetched (each analytics body is one) would stay here for good.
struct Books {
    generations: HashMap<String, Counter>,
    fences: HashMap<String, Counter>,
    lease_seq: HashMap<String, Counter>,
    leases: HashMap<String, (u64, Instant)>,
    /// index → member → expiry (unix ms).
    indexes: HashMap<String, BTreeMap<String, i64>>,
    next_sweep: Instant,
}

/// How often the bookkeeping is swept (on the next write after it is due).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl Books {
    fn new() -> Self {
        Books {
            generations: HashMap::new(),
            fences: HashMap::new(),
            lease_seq: HashMap::new(),
            leases: HashMap::new(),
            indexes: HashMap::new(),
            next_sweep: Instant::now() + SWEEP_EVERY,
        }
    }

    fn get(map: &HashMap<String, Counter>, key: &str) -> u64 {
        map.get(key).map_or(0, |(n, _)| *n)
    }

    fn sweep_if_due(&mut self, keep: Duration) {
        let now = Instant::now();
        if now >= self.next_sweep {
            self.sweep(now, keep);
        }
    }

    fn sweep(&mut self, now: Instant, keep: Duration) {
        self.next_sweep = now + SWEEP_EVERY;
        let fresh = |(_, at): &Counter| now.saturating_duration_since(*at) < keep;
        self.generations.retain(|_, c| fresh(c));
        self.fences.retain(|_, c| fresh(c));
        self.lease_seq.retain(|_, c| fresh(c));
        self.leases.retain(|_, (_, until)| *until > now);
        let now_ms = now_ms();
        self.indexes.retain(|_, idx| {
            idx.retain(|_, exp| *exp > now_ms);
            !idx.is_empty()
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.generations.len()
            + self.fences.len()
            + self.lease_seq.len()
            + self.leases.len()
            + self.indexes.values().map(BTreeMap::len).sum::<usize>()
            + self.indexes.len()
    }
}

pub struct MemoryStore {
    items: Cache<String, Item>,
    books: Mutex<Books>,
    /// How long a bookkeeping counter outlives its last write.
    keep: Duration,
}

impl MemoryStore {
    /// Bounded at 512 MiB of values so a runaway key space cannot exhaust memory.
    pub fn new() -> Self {
        Self::with_bookkeeping_ttl(BOOKKEEPING_TTL)
    }

    fn with_bookkeeping_ttl(keep: Duration) -> Self {
        let items = Cache::builder()
            .max_capacity(512 << 20)
            .weigher(|k: &String, v: &Item| (k.len() + v.value.len()).try_into().unwrap_or(u32::MAX))
            .expire_after(PerItemExpiry)
            .build();
        MemoryStore { items, books: Mutex::new(Books::new()), keep }
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
            books.sweep_if_due(self.keep);
            let generation = Books::get(&books.generations, &keys::generation_key(key));
            let fence = Books::get(&books.fences, key);
            if generation != guard.generation || (guard.fence > 0 && fence > guard.fence) {
                return Ok(false);
            }
            if guard.fence > 0 {
                books.fences.insert(key.to_string(), (guard.fence, Instant::now()));
            }
            // Insert while holding the lock so a purge cannot slip between
            // the check and the write.
            self.items.insert(key.to_string(), Item { value, expires_at: Instant::now() + ttl });
        }
        Ok(true)
    }

    async fn generation(&self, key: &str) -> Result<u64> {
        Ok(Books::get(&self.books.lock().generations, &keys::generation_key(key)))
    }

    async fn purge(&self, key: &str) -> Result<bool> {
        let existed = {
            let mut books = self.books.lock();
            books.sweep_if_due(self.keep);
            let existed = self.items.contains_key(key);
            // As the Redis script: bump only what a stored entry or a fetch
            // under way needs, so purges of unknown keys leave nothing.
            let fetching = books.leases.get(key).is_some_and(|(_, until)| *until > Instant::now());
            if existed || fetching {
                let generation =
                    books.generations.entry(keys::generation_key(key)).or_insert((0, Instant::now()));
                *generation = (generation.0 + 1, Instant::now());
            }
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
        books.sweep_if_due(self.keep);
        let seq = books.lease_seq.entry(key.to_string()).or_insert((0, now));
        *seq = (seq.0 + 1, now);
        let token = seq.0;
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
        // Expired members go in the periodic sweep, not on every add.
        books.sweep_if_due(self.keep);
        let idx = books.indexes.entry(index.to_string()).or_default();
        // Re-adding always raises the score (as the Redis script does), so a
        // purge's conditional removal sees the key was indexed again.
        idx.entry(member.to_string())
            .and_modify(|exp| *exp = (*exp + 1).max(expires_at_ms))
            .or_insert(expires_at_ms);
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

    #[tokio::test]
    async fn bookkeeping_is_swept_once_it_would_have_expired() {
        let s = MemoryStore::with_bookkeeping_ttl(Duration::from_millis(50));
        for n in 0..100 {
            let key = keys::store_key(&format!("e:k:{n}:full"));
            let t = s.try_lease(&key, Duration::from_millis(10)).await.unwrap().unwrap();
            assert!(s
                .set_guarded(
                    &key,
                    Bytes::from_static(b"v"),
                    Duration::from_secs(1),
                    WriteGuard { generation: 0, fence: t }
                )
                .await
                .unwrap());
            s.purge(&key).await.unwrap();
            s.index_add(&format!("tag:{n}"), "m", now_ms() + 20).await.unwrap();
        }
        assert!(s.books.lock().len() >= 500);
        tokio::time::sleep(Duration::from_millis(80)).await;
        let mut books = s.books.lock();
        books.sweep(Instant::now(), s.keep);
        assert_eq!(books.len(), 0, "generations, fences, lease sequences, leases and indexes all swept");
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

    #[tokio::test]
    async fn a_purge_refuses_a_write_guarded_by_the_old_generation() {
        let s = MemoryStore::new();
        let key = keys::store_key("e:k:1:full");
        // A fetch under way: generation read, lease held.
        let generation = s.generation(&key).await.unwrap();
        let fence = s.try_lease(&key, Duration::from_secs(5)).await.unwrap().expect("lease");
        let guard = WriteGuard { generation, fence };
        s.purge(&key).await.unwrap();
        s.release_lease(&key, fence).await.unwrap();
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

    /// A purge of a key nothing stores or fetches writes nothing: random
    /// keys purged by the thousand must not grow the store.
    #[tokio::test]
    async fn a_purge_of_an_unknown_key_leaves_no_bookkeeping() {
        let s = MemoryStore::new();
        for n in 0..100 {
            let key = keys::store_key(&format!("e:k:{n}:full"));
            assert!(!s.purge(&key).await.unwrap());
        }
        assert!(s.books.lock().generations.is_empty(), "no generation for keys nobody holds");
        let key = keys::store_key("e:k:held:full");
        s.set(&key, Bytes::from_static(b"v"), Duration::from_secs(5)).await.unwrap();
        let before = s.generation(&key).await.unwrap();
        assert!(s.purge(&key).await.unwrap());
        assert_eq!(s.generation(&key).await.unwrap(), before + 1, "a stored entry's generation is bumped");
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
        // Indexed again after the read (a later fetch), even with an earlier
        // expiry (TTL jitter): it stays.
        s.index_add("i", "p:q:1:full", far - 1000).await.unwrap();
        s.index_remove("i", &read).await.unwrap();
        assert_eq!(keys(s.index_members("i", "").await.unwrap()), vec!["p:q:1:full"]);
    }
}
