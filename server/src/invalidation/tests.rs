//! The purge paths on the embedded store: no Redis, no network.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::store::{Indexed, MemoryStore, WriteGuard};

/// The embedded store, whose purges hang while `hang` is set.
struct Hanging {
    inner: MemoryStore,
    hang: AtomicBool,
}

#[async_trait]
impl Store for Hanging {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.inner.get(key).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        self.inner.set(key, value, ttl).await
    }
    async fn set_guarded(&self, key: &str, value: Bytes, ttl: Duration, guard: WriteGuard) -> Result<bool> {
        self.inner.set_guarded(key, value, ttl, guard).await
    }
    async fn generation(&self, key: &str) -> Result<u64> {
        self.inner.generation(key).await
    }
    async fn purge(&self, key: &str) -> Result<bool> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.purge(key).await
    }
    async fn try_lease(&self, key: &str, ttl: Duration) -> Result<Option<u64>> {
        self.inner.try_lease(key, ttl).await
    }
    async fn release_lease(&self, key: &str, token: u64) -> Result<()> {
        self.inner.release_lease(key, token).await
    }
    async fn lease_held(&self, key: &str) -> Result<bool> {
        self.inner.lease_held(key).await
    }
    async fn renew_lease(&self, key: &str, token: u64, ttl: Duration) -> Result<bool> {
        self.inner.renew_lease(key, token, ttl).await
    }
    async fn index_add(&self, index: &str, member: &str, expires_at_ms: i64) -> Result<()> {
        self.inner.index_add(index, member, expires_at_ms).await
    }
    async fn index_members(&self, index: &str, prefix: &str) -> Result<Vec<Indexed>> {
        self.inner.index_members(index, prefix).await
    }
    async fn index_remove(&self, index: &str, members: &[Indexed]) -> Result<()> {
        self.inner.index_remove(index, members).await
    }
    async fn set_nx(&self, key: &str, ttl: Duration) -> Result<bool> {
        self.inner.set_nx(key, ttl).await
    }
    async fn delete(&self, keys: &[String]) -> Result<u64> {
        self.inner.delete(keys).await
    }
    fn backend(&self) -> &'static str {
        "hanging"
    }
}

/// Nothing held locally.
struct NoCopies;

impl LocalCopies for NoCopies {
    fn forget(&self, _store_key: &str) {}
    fn forget_all(&self) {}
}

fn invalidator(store: Arc<dyn Store>) -> Invalidator {
    Invalidator {
        env: "t".into(),
        store,
        catalog: Arc::new(Catalog::with_presets(&Default::default()).unwrap()),
        local: Arc::new(NoCopies),
        bus: Bus::local("test".into()),
        ack_timeout: Duration::from_secs(1),
    }
}

fn purge_of(key: &str) -> Purge {
    Purge { keys: vec![key.into()], reason: "test".into(), actor: "webhook".into(), ..Default::default() }
}

/// A webhook request cancelled (the sender hung up) while its purge runs
/// must not leave the event's mark pending for the whole dedupe window:
/// the sender's retry has to get through.
#[tokio::test]
async fn a_cancelled_purge_frees_its_event_id_for_the_retry() {
    let store = Arc::new(Hanging { inner: MemoryStore::new(), hang: AtomicBool::new(true) });
    let inv = Arc::new(invalidator(store.clone()));
    let first = {
        let inv = inv.clone();
        tokio::spawn(async move {
            inv.purge_once("evt-1", purge_of("t:routing.queue:q1:full"), Duration::from_secs(3600)).await
        })
    };
    // Wait until the first attempt holds the mark, then cancel it.
    let mark = keys::event_mark("t", "evt-1");
    let held = async {
        while store.inner.get(&mark).await.unwrap().is_none() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), held).await.expect("the first attempt took the mark");
    first.abort();
    let _ = first.await;
    store.hang.store(false, Ordering::SeqCst);
    let retry = async {
        loop {
            match inv
                .purge_once("evt-1", purge_of("t:routing.queue:q1:full"), Duration::from_secs(3600))
                .await
            {
                Ok(Once::Pending) => tokio::task::yield_now().await,
                other => return other,
            }
        }
    };
    let got = tokio::time::timeout(Duration::from_secs(5), retry).await.expect("the retry is not held off");
    assert!(matches!(got, Ok(Once::Purged(_))), "{got:?}");
    assert_eq!(
        inv.purge_once("evt-1", purge_of("t:routing.queue:q1:full"), Duration::from_secs(3600))
            .await
            .unwrap(),
        Once::Duplicate
    );
}
