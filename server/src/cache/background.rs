//! What refresh ahead and the consistency verifier ask of the cache: the
//! stored entry of a request, one background refresh that can be awaited
//! (so a refusal for budget is seen), one background comparison with the
//! upstream, and a request rebuilt from a stored key.
//!
//! Why here and not in those loops: they must go through the same flight,
//! lease and normalization as a caller's miss (one fetch per key across the
//! fleet, the same bytes), which are the cache's own.

use std::sync::Arc;

use super::{normalized, Cache};
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::keys::{self, Key};
use crate::policy::{self, Resolved};
use crate::proto::v1::GetRequest;
use crate::upstream::{Priority, Validators};

/// What the upstream says of a stored entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The same canonical bytes (or a 304 to its validators).
    Same,
    /// Different bytes: the stored value is stale.
    Changed,
    /// The upstream no longer has it (404).
    Gone,
}

impl Cache {
    /// The tracker of keys asked for (refresh ahead's hot keys).
    pub fn hot(&self) -> &Arc<super::hot::Tracker> {
        &self.hot
    }

    /// The TTL the policy gives `r` (its kind and body; no jitter).
    pub fn base_ttl(&self, r: &Resolved) -> std::time::Duration {
        self.ttl.base_ttl(&r.kind, r.body.as_ref())
    }

    /// The entry stored for `r` (the store, not L1).
    pub async fn stored(&self, r: &Resolved) -> Result<Option<Arc<Entry>>> {
        self.tiers.get_stored(&r.store_key).await
    }

    /// Refreshes `r` now at background priority through the usual flight
    /// (revalidating against `stored` when it has validators): `Err` with
    /// [`Error::RateLimited`] when the budget is needed by callers.
    pub async fn refresh_ahead(&self, r: &Resolved, stored: Option<Arc<Entry>>) -> Result<()> {
        let stored = stored.filter(|e| !e.not_found);
        self.flight(r, None, stored, true, Priority::Background).await.0.map(drop)
    }

    /// Fetches `r` at background priority (conditionally where `stored`
    /// has validators) and compares it with `stored`; stores nothing.
    pub async fn verify(&self, r: &Resolved, stored: &Entry) -> Result<Verdict> {
        let mut call = r.call();
        call.priority = Priority::Background;
        if !stored.etag.is_empty() || !stored.last_modified.is_empty() {
            call.validators = Some(Validators {
                etag: Some(stored.etag.clone()).filter(|s| !s.is_empty()),
                last_modified: Some(stored.last_modified.clone()).filter(|s| !s.is_empty()),
            });
        }
        match self.fetcher.fetch(&call, r.kind.paged, None).await {
            Ok(f) if f.not_modified => Ok(Verdict::Same),
            Ok(f) if normalized(&self.settings, r, &f.body)? == stored.value => Ok(Verdict::Same),
            Ok(_) => Ok(Verdict::Changed),
            Err(Error::NotFound(_)) => Ok(Verdict::Gone),
            Err(e) => Err(e),
        }
    }

    /// The request behind a stored logical key: the one last asked for it
    /// here, else rebuilt from the key when it names everything (kind, id,
    /// variant; not query parameters or a body, whose keys are hashes).
    pub fn request_for(&self, key: &str) -> Option<Resolved> {
        if let Some(r) = self.hot.request(key) {
            return Some(r);
        }
        let k = Key::parse(key)?;
        if k.query.is_some() {
            return None;
        }
        let req = GetRequest {
            kind: k.kind.to_string(),
            id: k.entity().unwrap_or_default().to_string(),
            variant: k.variant.filter(|v| *v != keys::FULL_VARIANT).unwrap_or_default().to_string(),
            ..Default::default()
        };
        policy::resolve(&req, &self.env, &self.catalog, &self.settings).ok().filter(|r| r.key == key)
    }

    /// A request named in config (a pinned key), resolved.
    pub fn resolve_quietly(&self, req: &GetRequest) -> Result<Resolved> {
        policy::resolve(req, &self.env, &self.catalog, &self.settings)
    }
}
