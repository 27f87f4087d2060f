//! One listener per fleet: a lease in the store, renewed while held. When
//! its holder dies, the lease runs out (`notifications.lease_ttl`) and
//! another instance takes it.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use crate::error::Result;
use crate::store::Store;

/// A held listener lease.
pub struct Leadership {
    store: Arc<dyn Store>,
    key: String,
    pub ttl: Duration,
    token: u64,
}

/// Tries for the lease until it is won (Some) or `shutdown` turns true (None).
pub async fn campaign(
    store: Arc<dyn Store>,
    env: &str,
    ttl: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Leadership> {
    let key = crate::keys::listener_lease(env);
    loop {
        if *shutdown.borrow() {
            return None;
        }
        match store.try_lease(&key, ttl).await {
            Ok(Some(token)) => return Some(Leadership { store, key, ttl, token }),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "listener lease: store unavailable"),
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

impl Leadership {
    /// Extends the lease; false when it was lost (another holds it now).
    pub async fn renew(&self) -> Result<bool> {
        self.store.renew_lease(&self.key, self.token, self.ttl).await
    }

    /// Lets another instance take over at once.
    pub async fn release(self) {
        if let Err(e) = self.store.release_lease(&self.key, self.token).await {
            tracing::debug!(error = %e, "listener lease release failed; it expires by itself");
        }
    }
}
