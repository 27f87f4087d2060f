//! The consistency verifier: measures how stale the cache is, and mends it.
//!
//! Why: change events can be missed (a socket down, a change the platform
//! never announces), and then a stored value is wrong until its TTL ends,
//! unseen. Every `cache.verify.interval` this takes the next `sample`
//! stored keys (the kind indexes of the store list them; a pass over all of
//! them is taken once, then listed again, so every entry is looked at once
//! per `ceil(entries / sample) × interval`), refetches each at background
//! priority (conditionally where it has validators) and compares the
//! canonical bytes. A changed or vanished one is purged through the
//! [`Invalidator`] (every instance drops its copy, every watcher hears
//! INVALIDATED) and counted with its age: `cxcache_verify_stale_total /
//! cxcache_verify_sampled_total` per kind is the stale share an operator
//! can put an SLO on. A refusal for budget ends the round at once (the key
//! is tried first next round): callers' misses come first.
//!
//! One instance of the fleet verifies at a time (a lease in the store,
//! [`crate::leader`]): the configured rate is the fleet's, not multiplied
//! by its size, and a successor takes over within [`LEASE_TTL`] of the
//! holder's death.
//!
//! Keys are rebuilt into requests from themselves (kind, id, variant) or
//! from the request this instance last saw for them; keys of query-style
//! requests the verifying instance has not seen are skipped
//! (`unverifiable`).

use std::collections::VecDeque;
use std::sync::Arc;

use rand::seq::SliceRandom;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use crate::cache::{Cache, Verdict};
use crate::config::VerifySettings;
use crate::entry::now_ms;
use crate::error::Error;
use crate::invalidation::{Invalidator, Purge};
use crate::keys;
use crate::metrics;

/// The verifier's fleet lease.
pub const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub sampled: usize,
    pub stale: usize,
    pub skipped: usize,
    /// Stopped early: the budget was needed.
    pub refused: bool,
}

/// The verifier of one instance.
pub struct Verifier {
    cache: Arc<Cache>,
    invalidator: Arc<Invalidator>,
    settings: VerifySettings,
    /// Keys of the pass under way, next first.
    pending: Mutex<VecDeque<String>>,
}

impl Verifier {
    pub fn new(cache: Arc<Cache>, invalidator: Arc<Invalidator>, settings: VerifySettings) -> Self {
        Verifier { cache, invalidator, settings, pending: Mutex::new(VecDeque::new()) }
    }

    /// Runs a round every `interval` until `shutdown` (nothing when the
    /// interval is zero: off).
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
        if self.settings.interval.is_zero() {
            return None;
        }
        Some(tokio::spawn(async move {
            let store = self.cache.tiers().store().clone();
            let key = keys::verifier_lease(self.invalidator.env());
            loop {
                let Some(lease) = crate::leader::campaign(
                    store.clone(),
                    key.clone(),
                    "consistency verifier",
                    LEASE_TTL,
                    &mut shutdown,
                )
                .await
                else {
                    return;
                };
                if lease.hold(self.rounds(&mut shutdown)).await == Some(true) {
                    lease.release().await;
                    return;
                }
            }
        }))
    }

    /// A round every `interval` while this instance holds the lease; true
    /// once shut down.
    async fn rounds(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return true,
            }
            let round = self.round().await;
            if round.stale > 0 || round.refused {
                tracing::info!(?round, "consistency verifier");
            }
        }
    }

    /// Every stored key, from the kind indexes, in random order (so
    /// instances verifying side by side seldom pick the same keys).
    async fn list(&self) -> VecDeque<String> {
        let env = self.invalidator.env();
        let store = self.cache.tiers().store();
        let mut all = Vec::new();
        for kind in self.cache.catalog().names() {
            match store.index_members(&keys::kind_index(env, kind), "").await {
                Ok(members) => all.extend(members.into_iter().map(|m| m.key)),
                Err(e) => tracing::debug!(kind, error = %e, "verifier: index read failed"),
            }
        }
        all.shuffle(&mut rand::thread_rng());
        all.into()
    }

    /// Verifies the next `sample` keys.
    pub async fn round(&self) -> Round {
        let mut round = Round::default();
        let mut pending = self.pending.lock().await;
        if pending.is_empty() {
            *pending = self.list().await;
        }
        let mut looked = 0;
        while looked < self.settings.sample {
            let Some(key) = pending.pop_front() else { break };
            looked += 1;
            let Some(r) = self.cache.request_for(&key) else {
                round.skipped += 1;
                metrics::verify_skipped("unverifiable");
                continue;
            };
            let entry = match self.cache.stored(&r).await {
                Ok(Some(e)) if !e.not_found => e,
                // Gone since it was listed, or a remembered 404.
                Ok(_) => continue,
                Err(_) => {
                    round.skipped += 1;
                    metrics::verify_skipped("failed");
                    continue;
                }
            };
            let verdict = match self.cache.verify(&r, &entry).await {
                Ok(v) => v,
                Err(Error::RateLimited { .. }) => {
                    pending.push_front(key);
                    round.refused = true;
                    metrics::verify_skipped("refused");
                    break;
                }
                Err(e) => {
                    tracing::debug!(%key, error = %e, "verifier: refetch failed");
                    round.skipped += 1;
                    metrics::verify_skipped("failed");
                    continue;
                }
            };
            if verdict == Verdict::Same {
                round.sampled += 1;
                metrics::verified(&r.kind_name, None);
                continue;
            }
            // Refreshed meanwhile (by a caller's miss or refresh ahead):
            // what is stored now is not what was compared.
            match self.cache.stored(&r).await {
                Ok(Some(now)) if now.stored_at_ms != entry.stored_at_ms => {
                    round.sampled += 1;
                    metrics::verified(&r.kind_name, None);
                    continue;
                }
                _ => {}
            }
            let age = entry.age(now_ms());
            let purge = Purge {
                keys: vec![key.clone()],
                reason: format!("consistency verifier: stored value {verdict:?} upstream"),
                actor: "verifier".into(),
                ..Default::default()
            };
            match self.invalidator.purge(purge, None).await {
                Ok(_) => {
                    round.sampled += 1;
                    round.stale += 1;
                    metrics::verified(&r.kind_name, Some(age));
                    tracing::info!(%key, ?verdict, age_s = age.as_secs(), "verifier purged a stale entry");
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "verifier: purge of a stale entry failed; retried next pass");
                    round.skipped += 1;
                    metrics::verify_skipped("failed");
                }
            }
        }
        round
    }
}
