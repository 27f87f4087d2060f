//! A test double of the store: the embedded store, with faults and hooks a
//! test can switch on (a store that is down, purges that hang, a purge
//! landing inside a fetch). One double for every layer's unit tests, so
//! the production trait carries no test hooks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::{Indexed, Lease, MemoryStore, Store};
use crate::error::{Error, Result};

#[derive(Default)]
pub struct TestStore {
    pub inner: Arc<MemoryStore>,
    /// While set, every call fails as an unreachable store would, after
    /// `fail_after` (a command timeout).
    pub down: AtomicBool,
    pub fail_after: Mutex<Duration>,
    /// While set, purges never finish.
    pub hang_purges: AtomicBool,
    /// Run once, right after the first write to an index (inside a fetch,
    /// between taking its lease and calling the upstream).
    pub after_index: Mutex<Option<BoxFuture<'static, ()>>>,
    /// Calls that reached the store (failed ones included).
    pub calls: AtomicUsize,
}

impl TestStore {
    async fn enter(&self) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            let after = *self.fail_after.lock();
            tokio::time::sleep(after).await;
            return Err(Error::Store("test store is down".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for TestStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.enter().await?;
        self.inner.get(key).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        self.enter().await?;
        self.inner.set(key, value, ttl).await
    }
    async fn commit(&self, key: &str, value: Bytes, ttl: Duration, lease: Lease) -> Result<bool> {
        self.enter().await?;
        self.inner.commit(key, value, ttl, lease).await
    }
    async fn purge(&self, key: &str) -> Result<bool> {
        self.enter().await?;
        if self.hang_purges.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.purge(key).await
    }
    async fn try_lease(&self, key: &str, lease: Lease, ttl: Duration) -> Result<bool> {
        self.enter().await?;
        self.inner.try_lease(key, lease, ttl).await
    }
    async fn release_lease(&self, key: &str, lease: Lease) -> Result<()> {
        self.enter().await?;
        self.inner.release_lease(key, lease).await
    }
    async fn lease_held(&self, key: &str) -> Result<bool> {
        self.enter().await?;
        self.inner.lease_held(key).await
    }
    async fn renew_lease(&self, key: &str, lease: Lease, ttl: Duration) -> Result<bool> {
        self.enter().await?;
        self.inner.renew_lease(key, lease, ttl).await
    }
    async fn index_add(&self, index: &str, member: &str, expires_at_ms: i64) -> Result<Indexed> {
        self.enter().await?;
        let added = self.inner.index_add(index, member, expires_at_ms).await;
        let hook = self.after_index.lock().take();
        if let Some(hook) = hook {
            hook.await;
        }
        added
    }
    async fn index_rescore(&self, index: &str, member: &Indexed, expires_at_ms: i64) -> Result<()> {
        self.enter().await?;
        self.inner.index_rescore(index, member, expires_at_ms).await
    }
    async fn index_members(&self, index: &str, prefix: &str) -> Result<Vec<Indexed>> {
        self.enter().await?;
        self.inner.index_members(index, prefix).await
    }
    async fn index_remove(&self, index: &str, members: &[Indexed]) -> Result<()> {
        self.enter().await?;
        self.inner.index_remove(index, members).await
    }
    async fn set_nx(&self, key: &str, ttl: Duration) -> Result<bool> {
        self.enter().await?;
        self.inner.set_nx(key, ttl).await
    }
    async fn delete(&self, keys: &[String]) -> Result<u64> {
        self.enter().await?;
        self.inner.delete(keys).await
    }
    fn backend(&self) -> &'static str {
        "test"
    }
}
