//! The same sequences on both backends: the embedded store always, Redis
//! when `CXCACHE_TEST_REDIS_URL` names one (`scripts/test.sh` always does).

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::keys;

async fn backends() -> Vec<Arc<dyn Store>> {
    let mut all: Vec<Arc<dyn Store>> = vec![Arc::new(MemoryStore::new())];
    if let Ok(url) = std::env::var("CXCACHE_TEST_REDIS_URL") {
        let settings = RedisSettings::default();
        all.push(Arc::new(RedisStore::connect(&url, &settings).await.expect("test redis")));
    }
    all
}

fn fresh_key(name: &str) -> String {
    keys::store_key(&format!("contract-{}:k:{name}:full", uuid::Uuid::new_v4().simple()))
}

fn v(b: &'static [u8]) -> Bytes {
    Bytes::from_static(b)
}

const TTL: Duration = Duration::from_secs(60);

/// A fetch's lease request sent twice (fred replays a command after a
/// connection drop): the second must not find the lease "held by someone
/// else", or the fetcher waits out the lease on itself.
#[tokio::test]
async fn a_replayed_lease_request_finds_its_own_lease() {
    for s in backends().await {
        let key = fresh_key("replay");
        let lease = Lease::new();
        assert!(s.try_lease(&key, lease, TTL).await.unwrap(), "{}", s.backend());
        assert!(s.try_lease(&key, lease, TTL).await.unwrap(), "{}: the replay is locked out", s.backend());
        assert!(
            !s.try_lease(&key, Lease::new(), TTL).await.unwrap(),
            "{}: another fetcher is not",
            s.backend()
        );
        // A replayed commit of a write that landed is still a success.
        assert!(s.commit(&key, v(b"v"), TTL, lease).await.unwrap());
        assert!(s.commit(&key, v(b"v"), TTL, lease).await.unwrap(), "{}: replayed commit", s.backend());
        assert!(!s.lease_held(&key).await.unwrap(), "{}: the commit released the lease", s.backend());
    }
}

/// A purge during a fetch refuses the fetch's write, however long ago the
/// key was last purged: there is no counter that could expire and restart
/// at the value the fetch read (the old generation ABA).
#[tokio::test]
async fn a_purge_during_a_fetch_refuses_its_write_even_after_old_bookkeeping_expired() {
    for s in backends().await {
        let key = fresh_key("aba");
        s.set(&key, v(b"v0"), TTL).await.unwrap();
        s.purge(&key).await.unwrap(); // an old purge
        s.set(&key, v(b"v1"), TTL).await.unwrap();
        let lease = Lease::new();
        assert!(s.try_lease(&key, lease, TTL).await.unwrap()); // a fetch begins
        s.purge(&key).await.unwrap(); // a purge while it runs
        let wrote = s.commit(&key, v(b"stale"), TTL, lease).await.unwrap();
        assert!(!wrote, "{}: a value fetched before the purge was stored after it", s.backend());
        assert_eq!(s.get(&key).await.unwrap(), None, "{}", s.backend());
        assert!(!s.renew_lease(&key, lease, TTL).await.unwrap(), "{}: the purge took the lease", s.backend());
        // A fetch that starts after the purge stores.
        let next = Lease::new();
        assert!(s.try_lease(&key, next, TTL).await.unwrap());
        assert!(s.commit(&key, v(b"new"), TTL, next).await.unwrap(), "{}", s.backend());
        assert_eq!(s.get(&key).await.unwrap(), Some(v(b"new")));
    }
}

/// Purges of keys never cached write nothing (random keys purged by the
/// thousand must not grow Redis).
#[tokio::test]
async fn a_purge_of_an_unknown_key_writes_nothing() {
    for s in backends().await {
        let key = fresh_key("unknown");
        assert!(!s.purge(&key).await.unwrap());
        assert_eq!(s.get(&key).await.unwrap(), None);
        assert!(!s.lease_held(&key).await.unwrap());
    }
}

/// Index reads come in pages; members sharing one score across a page
/// boundary are neither lost nor read twice.
#[tokio::test]
async fn index_reads_page_through_ties() {
    for s in backends().await {
        let index = format!("cx:tag:{{contract-{}:t}}", uuid::Uuid::new_v4().simple());
        let at = crate::entry::now_ms() + 60_000;
        let mut want = Vec::new();
        for n in 0..2500 {
            // 1200 members share one score; the rest spread.
            let score = if n < 1200 { at } else { at + n };
            let m = format!("e:k:{n:05}:full");
            s.index_add(&index, &m, score).await.unwrap();
            want.push(m);
        }
        let mut got: Vec<String> =
            s.index_members(&index, "").await.unwrap().into_iter().map(|m| m.key).collect();
        got.sort();
        assert_eq!(got, want, "{}", s.backend());
        let some = s.index_members(&index, "e:k:0001").await.unwrap();
        assert_eq!(some.len(), 10, "{}: prefix filter", s.backend());
        let _ = s.delete(&[index]).await;
    }
}
