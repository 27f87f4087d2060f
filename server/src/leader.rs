//! One worker per fleet (the notification listener, each change-callback
//! deliverer): a lease in the store, renewed while held. When its holder
//! dies, the lease runs out and another instance takes it. The renewal runs
//! in a task of its own ([`Leadership::keep`]): slow work of the holder (a
//! reconcile of thousands of topics, a POST that times out) must not let a
//! live lease lapse.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use crate::store::{Lease, Store};

/// A held lease.
pub struct Leadership {
    store: Arc<dyn Store>,
    key: String,
    /// What holds it, for logs.
    what: &'static str,
    pub ttl: Duration,
    token: Lease,
}

/// Tries for the lease under `key` until it is won (Some) or `shutdown`
/// turns true (None). `what` names the holder in logs.
pub async fn campaign(
    store: Arc<dyn Store>,
    key: String,
    what: &'static str,
    ttl: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Leadership> {
    let token = Lease::new();
    loop {
        if *shutdown.borrow() {
            return None;
        }
        match store.try_lease(&key, token, ttl).await {
            Ok(true) => return Some(Leadership { store, key, what, ttl, token }),
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, what, "lease: store unavailable"),
        }
        // Poll several times per lease period (one cheap command), jittered
        // so instances spread: a takeover comes at most ~ttl/7 after expiry.
        let pause = ttl / 8 + ttl.mul_f64(rand::thread_rng().gen_range(0.0..0.02));
        tokio::select! {
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return None,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Keeps a lease renewed (every third of its TTL) until dropped; says when
/// it was lost.
pub struct Keeper {
    lost: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Keeper {
    /// Resolves once the lease was lost, or could not be renewed within its TTL.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Leadership {
    /// Starts renewing the lease in the background.
    pub fn keep(&self) -> Keeper {
        let (tx, lost) = watch::channel(false);
        let (store, key, ttl, token, what) =
            (self.store.clone(), self.key.clone(), self.ttl, self.token, self.what);
        let task = tokio::spawn(async move {
            let mut renewed = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(ttl / 3).await;
                match store.renew_lease(&key, token, ttl).await {
                    Ok(true) => renewed = tokio::time::Instant::now(),
                    Ok(false) => {
                        tracing::warn!(what, "lease lost");
                        break;
                    }
                    Err(e) if renewed.elapsed() >= ttl => {
                        tracing::warn!(error = %e, what, "lease not renewed in time");
                        break;
                    }
                    Err(e) => tracing::debug!(error = %e, "lease renewal failed; retrying"),
                }
            }
            let _ = tx.send(true);
        });
        Keeper { lost, task }
    }

    /// Runs `work` while the lease holds, renewing it meanwhile: its
    /// result, or None once the lease was lost (and `work` dropped).
    pub async fn hold<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        let mut keeper = self.keep();
        tokio::select! {
            _ = keeper.lost() => None,
            done = work => Some(done),
        }
    }

    /// Lets another instance take over at once.
    pub async fn release(self) {
        if let Err(e) = self.store.release_lease(&self.key, self.token).await {
            tracing::debug!(error = %e, what = self.what, "lease release failed; it expires by itself");
        }
    }
}
