//! The invalidation layer: purges by exact key, key prefix and tag, on
//! every instance, and everything that turns outside events into purges.
//!
//! - [`Invalidator::purge`]: validate ([`validate`]) → find the keys through
//!   the index sorted sets (one per kind, one per tag; never KEYS or a
//!   cluster-wide SCAN) → purge each with one atomic script that bumps its
//!   entity's generation and deletes it (so a fetch that began before the
//!   purge cannot store its old value afterwards) → drop local copies →
//!   publish on the bus and wait (bounded) for every instance's
//!   acknowledgement → one audit line ([`audit`]).
//! - [`Invalidator::purge_once`]: the same, at most once per event id
//!   (webhook and EventBridge doors).
//! - [`events`]: change-event envelopes and topic mappings, shared by the
//!   doors and the Notification API listener.
//! - [`follower`]: applies other instances' events here.
//!
//! It depends on the store, the catalog, the bus and a handle on this
//! instance's local copies — not on the read path.

pub mod audit;
pub mod events;
pub mod follower;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use tokio::time::Instant;

use crate::bus::{Bus, Event, EventKind};
use crate::catalog::Catalog;
use crate::entry::now_ms;
use crate::error::{Error, Result};
use crate::keys;
use crate::store::Store;
use crate::tiers::LocalCopies;

pub use validate::{validate, MAX_PATTERNS};

/// Purges run this many store scripts at once.
const PURGE_CONCURRENCY: usize = 32;
/// Keys per bus event: a purge of many keys is several events, so no one
/// message nears Redis's pub/sub output-buffer limits.
const EVENT_KEYS: usize = 1000;
/// Value of an event mark once its purge is done (while pending it is the
/// `set_nx` placeholder).
const DONE: &[u8] = b"done";

/// What to purge, and why.
#[derive(Debug, Clone, Default)]
pub struct Purge {
    pub keys: Vec<String>,
    pub prefixes: Vec<String>,
    pub tags: Vec<String>,
    pub reason: String,
    /// Who asked: `grpc:<peer>`, `webhook`, `eventbridge`, …
    pub actor: String,
    /// Upstream event id, for webhook purges.
    pub event_id: Option<String>,
}

/// The outcome of [`Invalidator::purge_once`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Once {
    /// Purged now; this many stored entries were removed.
    Purged(u64),
    /// This event's purge was done before: nothing to do.
    Duplicate,
    /// This event's purge is still under way elsewhere: retry soon.
    Pending,
}

/// An event mark taken for a purge still under way: dropped before the purge
/// finished (the request was cancelled), it deletes the mark.
struct PendingMark {
    store: Arc<dyn Store>,
    mark: Option<String>,
}

impl Drop for PendingMark {
    fn drop(&mut self) {
        if let Some(mark) = self.mark.take() {
            let store = self.store.clone();
            tokio::spawn(async move {
                let _ = store.delete(&[mark]).await;
            });
        }
    }
}

/// Purges for one namespace; built by the server from what it depends on.
pub struct Invalidator {
    pub env: String,
    pub store: Arc<dyn Store>,
    pub catalog: Arc<Catalog>,
    /// This instance's L1 copies and fetches under way.
    pub local: Arc<dyn LocalCopies>,
    pub bus: Arc<Bus>,
    /// How long a purge waits for every instance's acknowledgement.
    pub ack_timeout: Duration,
    /// How long a purge that could not be promised (a store failover, an
    /// instance not acknowledging) is retried when the caller gave no
    /// deadline; with one, until just before it.
    pub retry_for: Duration,
}

impl Invalidator {
    /// The namespace purged.
    pub fn env(&self) -> &str {
        &self.env
    }

    /// Purges what `p` names everywhere; returns how many stored entries
    /// were removed. What fails in a way a retry can mend (the store in
    /// failover, an instance slow to acknowledge) is retried, with backoff,
    /// until `deadline` (none: for `retry_for`); a repeated purge is
    /// harmless. The last error is returned when time runs out.
    pub async fn purge(&self, p: Purge, deadline: Option<Instant>) -> Result<u64> {
        validate(&self.env, &p)?;
        let until = deadline.unwrap_or_else(|| Instant::now() + self.retry_for);
        let mut pause = Duration::from_millis(50);
        let mut last = None;
        loop {
            // Each attempt ends by the deadline too (a store command stuck
            // on a dead node, an acknowledgement wait).
            let attempt = match tokio::time::timeout_at(until, self.purge_valid(p.clone(), until)).await {
                Ok(result) => result,
                Err(_) => Err(last.unwrap_or_else(|| Error::Unavailable {
                    message: "the purge could not be promised within the deadline; retry".into(),
                    retry_after: None,
                })),
            };
            match attempt {
                Err(e) if retryable(&e) && Instant::now() + pause < until => {
                    tracing::debug!(error = %e, retry_in = ?pause, "purge not promised yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                    last = Some(e);
                }
                other => return other,
            }
        }
    }

    /// One attempt at a purge already validated, its acknowledgement wait
    /// ending by `until`.
    async fn purge_valid(&self, p: Purge, until: Instant) -> Result<u64> {
        let store = &self.store;
        let mut targets: BTreeSet<String> = p.keys.iter().cloned().collect();
        let mut index_cleanup: Vec<(String, Vec<crate::store::Indexed>)> = Vec::new();
        for prefix in &p.prefixes {
            for kind in self.catalog.names() {
                let kind_ns = format!("{}:{kind}:", self.env);
                if kind_ns.starts_with(prefix.as_str()) || prefix.starts_with(&kind_ns) {
                    let index = keys::kind_index(&self.env, kind);
                    let members = store.index_members(&index, prefix).await?;
                    targets.extend(members.iter().map(|m| m.key.clone()));
                    index_cleanup.push((index, members));
                }
            }
        }
        for tag in &p.tags {
            // An entity's own tag has no index: its keys are named from the
            // catalog (a fetch under way holds one of them, and loses its lease).
            targets.extend(self.catalog.entity_keys_for_tag(&self.env, tag));
            let index = keys::tag_index(&self.env, tag);
            let members = store.index_members(&index, "").await?;
            targets.extend(members.iter().map(|m| m.key.clone()));
            index_cleanup.push((index, members));
        }

        let results: Vec<Result<bool>> = stream::iter(targets.iter().cloned().map(|key| {
            let store = store.clone();
            async move { store.purge(&keys::store_key(&key)).await }
        }))
        .buffer_unordered(PURGE_CONCURRENCY)
        .collect()
        .await;
        let purged = results.iter().filter(|r| matches!(r, Ok(true))).count() as u64;
        let failed = results.into_iter().find_map(Result::err);
        // Whatever was purged is forgotten and announced even if some key
        // failed: a retry of the whole call is harmless.
        for key in &targets {
            self.local.forget(&keys::store_key(key));
        }
        if failed.is_none() {
            // Only memberships unchanged since they were read: a fetch that
            // started after the purge has indexed its key again, and keeps it.
            for (index, members) in index_cleanup {
                if let Err(e) = store.index_remove(&index, &members).await {
                    tracing::debug!(%index, error = %e, "index tidy-up failed; entries expire by themselves");
                }
            }
        }

        let matched = targets.len();
        let published = self.announce(&p, targets.into_iter().collect(), until).await;
        audit::purge(&p, matched, purged);
        match failed {
            Some(e) => Err(e),
            None => published.map(|()| purged),
        }
    }

    /// [`Invalidator::purge`] at most once per `event_id` within `window`:
    /// a duplicate of a finished purge is acknowledged, one of a purge under
    /// way is told to retry (so a sender's retry is not swallowed if that
    /// first purge then fails), and a failed purge frees the id again.
    pub async fn purge_once(&self, event_id: &str, p: Purge, window: Duration) -> Result<Once> {
        validate(&self.env, &p)?;
        let mark = keys::event_mark(&self.env, event_id);
        if !self.store.set_nx(&mark, window).await? {
            return match self.store.get(&mark).await? {
                Some(v) if v.as_ref() == DONE => Ok(Once::Duplicate),
                // Still being purged, or the first attempt just failed and let go.
                _ => Ok(Once::Pending),
            };
        }
        // If this request is cancelled (the sender hung up) before the purge
        // is done, the guard frees the id, so the sender's retry is not
        // turned away as "pending" for the whole window.
        let mut pending = PendingMark { store: self.store.clone(), mark: Some(mark.clone()) };
        let result = self.purge_valid(p, Instant::now() + self.ack_timeout).await;
        pending.mark = None;
        match result {
            Ok(purged) => {
                if let Err(e) = self.store.set(&mark, Bytes::from_static(DONE), window).await {
                    tracing::debug!(error = %e, "marking the event done failed; duplicates will be retried");
                }
                Ok(Once::Purged(purged))
            }
            Err(e) => {
                // Let the sender's retry through: the purge did not happen.
                let _ = self.store.delete(&[mark]).await;
                Err(e)
            }
        }
    }

    /// Publishes the purge of `keys` on the bus, in events of at most
    /// [`EVENT_KEYS`] keys; the last waits for the acknowledgements (events
    /// on one channel arrive in order, so its acks cover the rest).
    async fn announce(&self, p: &Purge, keys: Vec<String>, until: Instant) -> Result<()> {
        let chunks: Vec<&[String]> =
            if keys.is_empty() { vec![&[]] } else { keys.chunks(EVENT_KEYS).collect() };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let event = Event {
                kind: EventKind::Invalidated,
                keys: chunk.to_vec(),
                prefix: p.prefixes.first().cloned(),
                tag: p.tags.first().cloned(),
                reason: p.reason.clone(),
                at_ms: now_ms(),
                origin: self.bus.instance_id.clone(),
                ack: None,
            };
            let sent = if i == last {
                let left = until.saturating_duration_since(Instant::now());
                self.bus.publish_acked(event, self.ack_timeout.min(left)).await
            } else {
                self.bus.publish(event).await.map(drop)
            };
            // The store purge is done, but other instances may hold L1
            // copies (up to `l1.ttl`) and watchers heard nothing: the caller
            // is told to retry rather than promised read-your-invalidation.
            if let Err(e) = sent {
                return Err(Error::Store(format!(
                    "purged in the store, but the other instances could not be told ({e}); retry"
                )));
            }
        }
        Ok(())
    }
}

/// Whether a failed purge may succeed if tried again soon.
fn retryable(e: &Error) -> bool {
    matches!(e, Error::Store(_) | Error::Unavailable { .. })
}
