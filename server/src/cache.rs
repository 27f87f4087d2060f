//! The read path: request policy → tiers → coalesced upstream fetch →
//! normalization → store. The gRPC `Get` and the HTTP data-action door both
//! call [`Cache::get`].

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::catalog::Catalog;
use crate::coalesce::{Role, Singleflight};
use crate::config::CacheSettings;
use crate::entry::{now_ms, Entry};
use crate::error::Result;
use crate::normalize::normalize;
use crate::policy::{self, Freshness, Resolved};
use crate::proto::v1::GetRequest;
use crate::tiers::{Tier, Tiers};
use crate::ttl::TtlPolicy;
use crate::upstream::Upstream;

/// Where a served value came from (mirrors `cxcache.v1.Source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Store,
    Upstream,
    Stale,
    Coalesced,
}

/// A value served to a caller.
#[derive(Debug, Clone)]
pub struct Served {
    pub entry: Arc<Entry>,
    pub source: Source,
    pub key: String,
}

/// The outcome of one flight: the entry, and whether it came from upstream
/// (rather than from a store write that landed just before the flight).
#[derive(Clone)]
struct Flight {
    entry: Arc<Entry>,
    from_upstream: bool,
}

pub struct Cache {
    env: String,
    catalog: Arc<Catalog>,
    settings: Arc<CacheSettings>,
    ttl: Arc<TtlPolicy>,
    tiers: Arc<Tiers>,
    upstream: Arc<Upstream>,
    flights: Singleflight<Flight>,
}

impl Cache {
    pub fn new(
        env: String,
        catalog: Arc<Catalog>,
        settings: CacheSettings,
        tiers: Arc<Tiers>,
        upstream: Arc<Upstream>,
    ) -> Self {
        Cache {
            env,
            catalog,
            ttl: Arc::new(TtlPolicy::new(settings.ttl.clone())),
            settings: Arc::new(settings),
            tiers,
            upstream,
            flights: Singleflight::default(),
        }
    }

    pub fn env(&self) -> &str {
        &self.env
    }

    pub fn tiers(&self) -> &Arc<Tiers> {
        &self.tiers
    }

    /// Answers a Get: from cache when fresh enough, else one upstream fetch
    /// shared by all concurrent callers; stale on upstream failure.
    /// `deadline`: when the caller stops waiting (from `grpc-timeout`).
    pub async fn get(&self, req: &GetRequest, deadline: Option<Instant>) -> Result<Served> {
        let r = policy::resolve(req, &self.env, &self.catalog, &self.settings)?;
        let mut stale = None;
        if !r.freshness.force_refresh {
            match self.tiers.get(&r.store_key).await {
                Ok(Some((entry, tier))) => {
                    if acceptable(&entry, &r.freshness, now_ms()) {
                        let source = match tier {
                            Tier::Store => Source::Store,
                        };
                        return Ok(Served { entry, source, key: r.key });
                    }
                    stale = Some(entry);
                }
                Ok(None) => {}
                // A store outage must not take reads down: go upstream.
                Err(e) => tracing::warn!(key = %r.key, error = %e, "store read failed; treating as miss"),
            }
        }

        if let (true, Some(entry)) = (r.freshness.allow_stale, &stale) {
            // Stale-while-revalidate on request: answer now, refresh once in
            // the background (joined by any concurrent flight).
            let refresh = self.flight(&r, None);
            tokio::spawn(async move {
                let _ = refresh.await;
            });
            return Ok(Served { entry: entry.clone(), source: Source::Stale, key: r.key });
        }

        match self.flight(&r, deadline).await {
            (Ok(f), role) => {
                let source = match (role, f.from_upstream) {
                    (Role::Leader, true) => Source::Upstream,
                    (Role::Follower, true) => Source::Coalesced,
                    (_, false) => Source::Store,
                };
                Ok(Served { entry: f.entry, source, key: r.key })
            }
            (Err(e), _) if e.is_upstream_failure() => match stale {
                Some(entry) => {
                    tracing::info!(key = %r.key, error = %e, "upstream failed; serving stale");
                    Ok(Served { entry, source: Source::Stale, key: r.key })
                }
                None => Err(e),
            },
            (Err(e), _) => Err(e),
        }
    }

    /// Joins or starts the flight that fetches `r` upstream and stores it.
    fn flight(
        &self,
        r: &Resolved,
        deadline: Option<Instant>,
    ) -> impl std::future::Future<Output = (Result<Flight>, Role)> + Send + 'static {
        let fetch = Fetch {
            r: r.clone(),
            deadline,
            tiers: self.tiers.clone(),
            upstream: self.upstream.clone(),
            ttl: self.ttl.clone(),
            settings: self.settings.clone(),
        };
        let flights = self.flights.clone();
        let key = r.store_key.clone();
        async move { flights.run(&key, move || fetch.run()).await }
    }
}

/// Whether a stored entry satisfies the caller's freshness demands.
fn acceptable(entry: &Entry, freshness: &Freshness, now: i64) -> bool {
    entry.is_fresh(now) && freshness.max_age.is_none_or(|max| entry.age(now) <= max)
}

/// Everything one upstream fetch needs, owned, so it can run in its own task.
struct Fetch {
    r: Resolved,
    /// The deadline of the caller that started the flight.
    deadline: Option<Instant>,
    tiers: Arc<Tiers>,
    upstream: Arc<Upstream>,
    ttl: Arc<TtlPolicy>,
    settings: Arc<CacheSettings>,
}

impl Fetch {
    async fn run(self) -> Result<Flight> {
        let r = &self.r;
        // A flight that finished just before this one started may have
        // stored the value already: look once more before spending quota.
        if !r.freshness.force_refresh {
            if let Ok(Some((entry, _))) = self.tiers.get(&r.store_key).await {
                if acceptable(&entry, &r.freshness, now_ms()) {
                    return Ok(Flight { entry, from_upstream: false });
                }
            }
        }
        let fetched = self.upstream.fetch(&r.call, r.kind.paged, self.deadline).await?;
        let drop: Vec<String> =
            self.settings.drop_fields.iter().chain(r.kind.drop_fields.iter()).cloned().collect();
        let value = normalize(&fetched.body, &drop, r.projection.as_deref())?;
        let ttl: Duration = self.ttl.ttl(&r.kind, r.body.as_ref());
        let mut entry = Entry::new(value.into(), ttl, r.tags.clone());
        entry.etag = fetched.etag.unwrap_or_default();
        entry.last_modified = fetched.last_modified.unwrap_or_default();
        if let Err(e) = self.tiers.put(&r.store_key, &entry, ttl).await {
            // Serve what we fetched even if it could not be stored.
            tracing::warn!(key = %r.key, error = %e, "store write failed");
        }
        Ok(Flight { entry: Arc::new(entry), from_upstream: true })
    }
}
