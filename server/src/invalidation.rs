//! Purges by exact key, key prefix and tag, on every instance.
//!
//! Keys are found through index sorted sets kept in the store (one per kind,
//! one per tag; see [`crate::store`]) — never KEYS or a cluster-wide SCAN.
//! Each key is purged by one atomic script that bumps its entity's
//! generation and deletes it, so a fetch that began before the purge cannot
//! store its (old) value afterwards. Then the purge is published on the bus
//! and, with Redis, `purge` waits (bounded) until every instance has
//! acknowledged dropping its L1 copies: once it returns, no instance serves
//! the old value. Every purge writes one JSON audit line.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{KeysInterface, Pool};
use futures::stream::{self, StreamExt};

use crate::bus::{Bus, BusMessage, Event, EventKind};
use crate::cache::Cache;
use crate::entry::now_ms;
use crate::error::{Error, FieldViolation, Result};
use crate::keys;

/// Purges run this many store scripts at once.
const PURGE_CONCURRENCY: usize = 32;
/// Most keys one Invalidate call may name directly.
pub const MAX_NAMED: usize = 1000;
/// Prefixes or tags one call may name (each can match many keys).
pub const MAX_PATTERNS: usize = 100;
/// Keys per bus event: a purge of many keys is several events, so no one
/// message nears Redis's pub/sub output-buffer limits.
const EVENT_KEYS: usize = 1000;

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

pub struct Invalidator {
    env: String,
    cache: Arc<Cache>,
    bus: Arc<Bus>,
    ack_timeout: Duration,
}

impl Invalidator {
    pub fn new(cache: Arc<Cache>, bus: Arc<Bus>, ack_timeout: Duration) -> Self {
        Invalidator { env: cache.env().to_string(), cache, bus, ack_timeout }
    }

    /// Checks a purge request; bad input purges nothing.
    pub fn validate(&self, p: &Purge) -> Result<()> {
        let mut bad = Vec::new();
        if p.keys.is_empty() && p.prefixes.is_empty() && p.tags.is_empty() {
            bad.push(FieldViolation::new("keys", "name at least one key, prefix or tag"));
        }
        if p.keys.len() > MAX_NAMED {
            bad.push(FieldViolation::new("keys", format!("at most {MAX_NAMED} keys per call")));
        }
        if p.prefixes.len() > MAX_PATTERNS {
            bad.push(FieldViolation::new("prefixes", format!("at most {MAX_PATTERNS} prefixes per call")));
        }
        if p.tags.len() > MAX_PATTERNS {
            bad.push(FieldViolation::new("tags", format!("at most {MAX_PATTERNS} tags per call")));
        }
        let ns = format!("{}:", self.env);
        for (i, key) in p.keys.iter().enumerate() {
            if key.split(':').count() < 3 || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bad.push(FieldViolation::new(format!("keys[{i}]"), "not a cxcache key ({env}:{kind}:{id}…)"));
            } else if !key.starts_with(&ns) {
                bad.push(FieldViolation::new(
                    format!("keys[{i}]"),
                    format!("not in this server's namespace {ns:?}"),
                ));
            }
        }
        for (i, prefix) in p.prefixes.iter().enumerate() {
            // A prefix must at least name a kind: `prod:` alone would purge
            // the whole namespace, which is a deployment, not a purge.
            if !prefix.starts_with(&ns) || prefix.len() <= ns.len() {
                bad.push(FieldViolation::new(
                    format!("prefixes[{i}]"),
                    format!("must start with {ns:?} and name at least part of a kind"),
                ));
            }
        }
        for (i, tag) in p.tags.iter().enumerate() {
            if tag.is_empty() || tag.len() > 256 || tag.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bad.push(FieldViolation::new(format!("tags[{i}]"), "1-256 characters, no spaces"));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(bad))
        }
    }

    /// Purges what `p` names everywhere; returns how many stored entries
    /// were removed.
    pub async fn purge(&self, p: Purge) -> Result<u64> {
        self.validate(&p)?;
        let store = self.cache.tiers().store().clone();
        let mut targets: BTreeSet<String> = p.keys.iter().cloned().collect();
        let mut index_cleanup: Vec<(String, Vec<crate::store::Indexed>)> = Vec::new();
        for prefix in &p.prefixes {
            for kind in self.cache.catalog().names() {
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
            self.cache.forget_local(&keys::store_key(key));
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
        let published = self.announce(&p, targets.into_iter().collect()).await;
        audit(&p, matched, purged);
        match failed {
            Some(e) => Err(e),
            None => published.map(|()| purged),
        }
    }

    /// Publishes the purge of `keys` on the bus, in events of at most
    /// [`EVENT_KEYS`] keys; the last carries the acknowledgement counter
    /// (events on one channel arrive in order, so its acks cover the rest).
    async fn announce(&self, p: &Purge, keys: Vec<String>) -> Result<()> {
        let chunks: Vec<&[String]> =
            if keys.is_empty() { vec![&[]] } else { keys.chunks(EVENT_KEYS).collect() };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let ack = (i == last)
                .then(|| self.bus.pool().map(|_| format!("cx:ack:{{{}}}:{}", self.env, uuid::Uuid::new_v4())))
                .flatten();
            let event = Event {
                kind: EventKind::Invalidated,
                keys: chunk.to_vec(),
                prefix: p.prefixes.first().cloned(),
                tag: p.tags.first().cloned(),
                reason: p.reason.clone(),
                at_ms: now_ms(),
                origin: self.bus.instance_id.clone(),
                ack: ack.clone(),
            };
            match self.bus.publish(event).await {
                Ok(receivers) => {
                    if let (Some(ack), Some(pool)) = (ack, self.bus.pool()) {
                        self.await_acks(pool, &ack, receivers).await;
                    }
                }
                // The store purge is done, but other instances may hold L1
                // copies (up to `l1.ttl`) and watchers heard nothing: the
                // caller is told to retry rather than promised
                // read-your-invalidation.
                Err(e) => {
                    return Err(Error::Store(format!(
                        "purged in the store, but the other instances could not be told ({e}); retry"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Waits until `expected` instances acknowledged an event, or the timeout.
    async fn await_acks(&self, pool: &Pool, ack: &str, expected: u64) {
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let got: u64 = pool.get::<Option<u64>, _>(ack).await.ok().flatten().unwrap_or(0);
            if got >= expected {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(expected, got, "not every instance acknowledged the purge in time");
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// Keeps this instance in step with the bus: forgets L1 copies and running
/// fetches of what others purge or update, clears L1 on a gap, and
/// acknowledges purges.
pub fn spawn_follower(cache: Arc<Cache>, bus: &Bus) -> tokio::task::JoinHandle<()> {
    let mut rx = bus.subscribe();
    let pool = bus.pool().cloned();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(BusMessage::Event(event)) => {
                    for key in &event.keys {
                        cache.forget_local(&keys::store_key(key));
                    }
                    if let (Some(ack), Some(pool)) = (&event.ack, &pool) {
                        let _ = pool.incr::<i64, _>(ack.as_str()).await;
                        let _ = pool.pexpire::<i64, _>(ack.as_str(), 30_000, None).await;
                    }
                }
                Ok(BusMessage::Gap) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    cache.tiers().clear_l1()
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// One structured line per purge (target `cxcache::audit`): with JSON logs
/// every field is a top-level field of the line; lists are JSON arrays
/// encoded as strings.
fn audit(p: &Purge, matched: usize, purged: u64) {
    let list = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
    tracing::info!(
        target: "cxcache::audit",
        audit = "purge",
        actor = %p.actor,
        reason = %p.reason,
        event_id = p.event_id.as_deref().unwrap_or(""),
        keys = %list(&p.keys),
        prefixes = %list(&p.prefixes),
        tags = %list(&p.tags),
        matched,
        purged,
        "purge"
    );
}
