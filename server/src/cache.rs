//! The read path: request policy → tiers → coalesced upstream fetch →
//! normalization → store. The gRPC `Get` and the HTTP data-action door both
//! call [`Cache::get`].
//!
//! Freshness rules, in order:
//! - a fresh value (within its TTL and the caller's `max_age`) is served
//!   from L1 or the store; hot keys near expiry may start one background
//!   refresh early (probabilistic early refresh, XFetch);
//! - a value past its TTL but within `stale_while_revalidate` (or any stored
//!   value when the caller sets `allow_stale`) is served at once, marked
//!   stale, while one background refresh runs;
//! - otherwise the caller joins the one fetch of that key (this instance:
//!   [`crate::coalesce`]; the fleet: a lease in the store), which revalidates
//!   with ETag/Last-Modified when it has them;
//! - if the upstream fails, a value at most `max_staleness` past its TTL is
//!   served stale; otherwise the upstream's error is returned.
//!
//! The cache reads the upstream through [`Fetcher`], so these rules are
//! unit-tested on the embedded store with a scripted fetcher and paused
//! time (`cache/tests.rs`). Gets are counted here, whichever door they
//! came through.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use rand::Rng;
use tokio::time::Instant;

use crate::bus::{Bus, BusMessage};
use crate::catalog::Catalog;
use crate::coalesce::{Panicked, Role, Singleflight};
use crate::config::CacheSettings;
use crate::entry::{now_ms, Entry};
use crate::error::{Error, Result};
use crate::keys;
use crate::metrics;
use crate::normalize::normalize;
use crate::policy::{self, Freshness, Resolved};
use crate::proto::v1::GetRequest;
use crate::source::Source;
use crate::store::{Indexed, Lease};
use crate::tiers::{LocalCopies, Tiers};
use crate::ttl::TtlPolicy;
use crate::upstream::{Call, Fetched, Priority, Upstream, Validators};

mod background;
pub mod hot;
mod prepared;
#[cfg(test)]
mod tests;

pub use background::Verdict;

/// Where the cache gets what it does not hold: the upstream client in
/// production, a scripted double in unit tests.
#[async_trait::async_trait]
pub trait Fetcher: Send + Sync {
    /// Performs `call` (a paged kind: every page), within `deadline`.
    async fn fetch(&self, call: &Call, paged: bool, deadline: Option<Instant>) -> Result<Fetched>;

    /// How eager early refreshes may be now, by the budget left: 0 (none)
    /// to 1 (as configured). See [`crate::upstream::Upstream::eagerness`].
    fn eagerness(&self) -> f64 {
        1.0
    }
}

#[async_trait::async_trait]
impl Fetcher for Upstream {
    async fn fetch(&self, call: &Call, paged: bool, deadline: Option<Instant>) -> Result<Fetched> {
        Upstream::fetch(self, call, paged, deadline).await
    }

    fn eagerness(&self) -> f64 {
        Upstream::eagerness(self)
    }
}

/// A fetch task that panicked fails its callers once, as an internal error.
impl From<Panicked> for Error {
    fn from(p: Panicked) -> Self {
        Error::Internal(p.to_string())
    }
}

/// A value served to a caller.
#[derive(Debug, Clone)]
pub struct Served {
    pub entry: Arc<Entry>,
    pub source: Source,
    pub key: String,
}

/// Where a Get's span is (the span that names its request id in every
/// line logged on its behalf, and in exported traces).
#[derive(Clone, Copy)]
pub enum Trace<'a> {
    /// The caller runs the whole Get in its span already (or has none).
    Current,
    /// Open the span only when the Get goes past the tiers (a miss, a
    /// refresh, a call-through): a hit logs nothing, so nothing would read
    /// a span made for it, and making one is a visible share of a Redis
    /// hit's cost.
    PastHit(&'a (dyn Fn() -> tracing::Span + Sync)),
}

impl Trace<'_> {
    async fn around<F: std::future::Future>(self, work: F) -> F::Output {
        match self {
            Trace::Current => work.await,
            Trace::PastHit(open) => tracing::Instrument::instrument(work, open()).await,
        }
    }
}

/// How a flight got its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Fetched upstream (full body).
    Fetched,
    /// Upstream answered 304: the stored value was confirmed.
    Revalidated,
    /// Found stored by a fetch that finished just before this flight.
    Stored,
    /// Fetched by another instance that held the key's lease.
    Remote,
}

/// The outcome of one flight.
#[derive(Clone)]
struct Outcome {
    entry: Arc<Entry>,
    origin: Origin,
}

pub struct Cache {
    env: String,
    catalog: Arc<Catalog>,
    settings: Arc<CacheSettings>,
    ttl: Arc<TtlPolicy>,
    tiers: Arc<Tiers>,
    fetcher: Arc<dyn Fetcher>,
    bus: Arc<Bus>,
    flights: Singleflight<Outcome, Error>,
    /// Request times of keys asked for (refresh ahead's hot keys).
    hot: Arc<hot::Tracker>,
    /// Plain requests already resolved (see [`prepared`]).
    prepared: prepared::Prepared,
}

/// How many plain requests [`Cache::resolve`] remembers (a few hundred bytes
/// each, a few KiB at most: bodies over [`prepared::MAX_BODY`] are not kept).
const PREPARED_REQUESTS: usize = 10_000;

impl Cache {
    pub fn new(
        env: String,
        catalog: Arc<Catalog>,
        settings: CacheSettings,
        tiers: Arc<Tiers>,
        fetcher: Arc<dyn Fetcher>,
        bus: Arc<Bus>,
    ) -> Self {
        let ahead = &settings.refresh_ahead;
        let hot = Arc::new(hot::Tracker::new(ahead.hot_requests, ahead.max_keys));
        Cache {
            hot,
            env,
            catalog,
            ttl: Arc::new(TtlPolicy::new(settings.ttl.clone())),
            settings: Arc::new(settings),
            tiers,
            fetcher,
            bus,
            flights: Singleflight::default(),
            prepared: prepared::Prepared::new(PREPARED_REQUESTS),
        }
    }

    pub fn tiers(&self) -> &Arc<Tiers> {
        &self.tiers
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Answers a Get by `deadline` (when the caller stops waiting), and
    /// counts it: served by kind and source, or failed by code.
    pub async fn get(&self, req: &GetRequest, deadline: Option<Instant>) -> Result<Served> {
        let r = self.resolve(req)?;
        match self.l1_hit(&r) {
            Some(served) => Ok(served),
            None => self.get_resolved(&r, deadline).await,
        }
    }

    /// The request checked against the catalog and its key built; a bad
    /// one is counted as failed. A plain request seen before is not
    /// resolved again ([`prepared`]).
    pub fn resolve(&self, req: &GetRequest) -> Result<Arc<Resolved>> {
        self.prepared
            .get_or_resolve(req, || policy::resolve(req, &self.env, &self.catalog, &self.settings))
            .inspect(|r| self.hot.record(r))
            .inspect_err(|e| {
                metrics::get_failed(e.code().name());
            })
    }

    /// The hit path: an acceptable value in this instance's L1, answered
    /// (and counted) without an await. `None`: take [`Cache::get_resolved`].
    pub fn l1_hit(&self, r: &Resolved) -> Option<Served> {
        if !r.cacheable || r.freshness.force_refresh {
            return None;
        }
        let started = std::time::Instant::now();
        let (entry, now) = self.tiers.l1_get(&r.store_key)?;
        if entry.not_found || !acceptable(&entry, &r.freshness, now) {
            return None;
        }
        if self.should_refresh_early(&entry, now) {
            self.refresh_in_background(r, true);
        }
        metrics::get_served(&r.kind_name, Source::L1, started.elapsed());
        Some(Served { entry, source: Source::L1, key: r.key.clone() })
    }

    /// Answers a resolved Get through every tier, by `deadline`, and counts it.
    pub async fn get_resolved(&self, r: &Resolved, deadline: Option<Instant>) -> Result<Served> {
        self.get_within(r, deadline, None, Trace::Current).await
    }

    /// [`Cache::get_resolved`], also ended at `limit` (the server's own
    /// bound, `limits.request_timeout`) by the same single timer. Only the
    /// caller's deadline reaches the tiers and the upstream: the server's
    /// limit is a backstop, not a budget to spend waiting out a Retry-After.
    /// `trace` says where the Get's span is: see [`Trace`].
    pub async fn get_within(
        &self,
        r: &Resolved,
        deadline: Option<Instant>,
        limit: Option<Instant>,
        trace: Trace<'_>,
    ) -> Result<Served> {
        let started = std::time::Instant::now();
        let (bound, callers) = match (deadline, limit) {
            (Some(d), Some(l)) if l < d => (Some(l), false),
            (Some(d), _) => (Some(d), true),
            (None, l) => (l, false),
        };
        let result = match bound {
            Some(b) => match tokio::time::timeout_at(b, self.serve(r, deadline, trace)).await {
                Err(_) if callers => {
                    Err(Error::DeadlineExceeded("no answer within the caller's deadline".into()))
                }
                Err(_) => Err(Error::DeadlineExceeded("limits.request_timeout passed".into())),
                // An upstream call cut short by the caller's deadline is the
                // deadline's doing, not the upstream's.
                Ok(Err(Error::Unavailable { message, .. }))
                    if callers && Instant::now() + Duration::from_millis(20) >= b =>
                {
                    Err(Error::DeadlineExceeded(message))
                }
                Ok(other) => other,
            },
            None => self.serve(r, None, trace).await,
        };
        match &result {
            // The catalog's name, never the caller's spelling: the label
            // set stays bounded by the catalog.
            Ok(served) => metrics::get_served(&r.kind_name, served.source, started.elapsed()),
            Err(e) => metrics::get_failed(e.code().name()),
        }
        result
    }

    /// A hit (fresh, or stale within its grace) is answered from the tiers;
    /// everything else runs in the Get's span ([`Trace`]).
    async fn serve(&self, r: &Resolved, deadline: Option<Instant>, trace: Trace<'_>) -> Result<Served> {
        let served = |entry: Arc<Entry>, source: Source| Served { entry, source, key: r.key.clone() };
        if !r.cacheable {
            let called = trace.around(self.call_through(r, deadline)).await;
            return called.map(|entry| served(entry, Source::Upstream));
        }
        let mut stored = None;
        let mut store_error = None;
        if !r.freshness.force_refresh {
            match self.tiers.get(&r.store_key).await {
                // A remembered 404: answered as one while fresh, else a miss
                // (never served stale, never a fallback).
                Ok(Some((entry, _))) if entry.not_found => {
                    if acceptable(&entry, &r.freshness, now_ms()) {
                        return Err(not_found(r));
                    }
                }
                Ok(Some((entry, tier))) => {
                    let now = now_ms();
                    if acceptable(&entry, &r.freshness, now) {
                        if self.should_refresh_early(&entry, now) {
                            self.refresh_in_background(r, true);
                        }
                        return Ok(served(entry, tier));
                    }
                    let swr = self.settings.stale_while_revalidate;
                    let within_swr = !swr.is_zero() && entry.staleness(now) <= swr;
                    if r.freshness.allow_stale || (within_swr && r.freshness.max_age.is_none()) {
                        self.refresh_in_background(r, false);
                        return Ok(served(entry, Source::Stale));
                    }
                    stored = Some(entry);
                }
                Ok(None) => {}
                // A store outage must not take reads down: go upstream.
                Err(e) => store_error = Some(e),
            }
        }
        trace.around(self.serve_past_hit(r, deadline, stored, store_error)).await
    }

    /// The rest of a Get the tiers could not answer: the coalesced fetch,
    /// and the stale fallback when it fails.
    async fn serve_past_hit(
        &self,
        r: &Resolved,
        deadline: Option<Instant>,
        stored: Option<Arc<Entry>>,
        store_error: Option<Error>,
    ) -> Result<Served> {
        let served = |entry: Arc<Entry>, source: Source| Served { entry, source, key: r.key.clone() };
        if let Some(e) = store_error {
            tracing::warn!(key = %r.key, error = %e, "store read failed; treating as miss");
        }

        // With a stale value to fall back on, a hung upstream must not eat
        // the caller's whole deadline: wait for the fetch at most 80 % of
        // it, then serve stale (the fetch goes on and stores when done).
        let fallback = stored.as_ref().is_some_and(|e| self.stale_fallback_ok(e, &r.freshness));
        let mut outcome = match deadline.filter(|_| fallback) {
            Some(d) => {
                let budget = d.saturating_duration_since(Instant::now()).mul_f64(0.8);
                match tokio::time::timeout(
                    budget,
                    self.flight(r, deadline, stored.clone(), false, Priority::Foreground),
                )
                .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => (
                        Err(Error::DeadlineExceeded("upstream too slow for the deadline".into())),
                        Role::Leader,
                    ),
                }
            }
            None => self.flight(r, deadline, stored.clone(), false, Priority::Foreground).await,
        };
        // A joined flight runs on its starter's deadline: if that one gave up
        // while this caller still has time, start over on our own deadline.
        for _ in 0..3 {
            // So did a background refresh refused budget (it never waits).
            let gave_up_early = matches!(
                outcome,
                (Err(Error::DeadlineExceeded(_) | Error::RateLimited { .. }), Role::Follower)
            ) && deadline.is_none_or(|d| Instant::now() < d);
            if !gave_up_early {
                break;
            }
            outcome = self.flight(r, deadline, stored.clone(), false, Priority::Foreground).await;
        }
        match outcome {
            (Ok(f), _) if f.entry.not_found => Err(not_found(r)),
            (Ok(f), role) => {
                let source = match (f.origin, role) {
                    (Origin::Fetched, Role::Leader) => Source::Upstream,
                    (Origin::Fetched, Role::Follower) | (Origin::Remote, _) => Source::Coalesced,
                    (Origin::Revalidated, _) => Source::Revalidated,
                    (Origin::Stored, _) => Source::Store,
                };
                Ok(served(f.entry, source))
            }
            (Err(e), _) if e.is_upstream_failure() => match stored {
                Some(entry) if self.stale_fallback_ok(&entry, &r.freshness) => {
                    tracing::info!(key = %r.key, error = %e, "upstream failed; serving stale");
                    Ok(served(entry, Source::Stale))
                }
                _ => Err(e),
            },
            (Err(e), _) => Err(e),
        }
    }

    /// An action that may have side effects: called upstream for this
    /// caller alone, never coalesced with another caller's call, never
    /// stored, never served stale.
    async fn call_through(&self, r: &Resolved, deadline: Option<Instant>) -> Result<Arc<Entry>> {
        let fetched = self.fetcher.fetch(&r.call(), r.kind.paged, deadline).await?;
        let value = normalized(&self.settings, r, &fetched.body)?;
        Ok(Arc::new(Entry::new(value, Duration::ZERO, Vec::new())))
    }

    /// Whether `entry` may stand in for a failed fetch: within
    /// `max_staleness`, and never older than the caller's own `max_age`.
    fn stale_fallback_ok(&self, entry: &Entry, freshness: &Freshness) -> bool {
        let now = now_ms();
        entry.staleness(now) <= self.settings.max_staleness
            && freshness.max_age.is_none_or(|max| entry.age(now) <= max)
    }

    /// XFetch: refresh before expiry with a probability that rises as expiry
    /// nears (and earlier for values slow to fetch), so hot keys do not all
    /// expire at once and callers never wait; less eager as the budget runs
    /// low, none while callers need it ([`Fetcher::eagerness`]).
    fn should_refresh_early(&self, entry: &Entry, now: i64) -> bool {
        let beta = self.settings.early_refresh_beta;
        if beta <= 0.0 || entry.fetch_ms <= 0 {
            return false;
        }
        // The largest gap any draw gives: until the entry is that close to
        // expiry no draw can refresh it, so most hits skip the draw.
        if !xfetch(entry, now, beta, f64::EPSILON, 1.0) {
            return false;
        }
        let draw: f64 = rand::thread_rng().gen_range(f64::EPSILON..=1.0);
        // Most draws fall short of expiry even at full eagerness: only the
        // others look at the budget (a lock on the credentials' state).
        xfetch(entry, now, beta, draw, 1.0) && xfetch(entry, now, beta, draw, self.fetcher.eagerness())
    }

    /// One refresh of `r` nobody waits for, on the budget foreground calls
    /// leave (see [`crate::upstream::Priority`]).
    pub(crate) fn refresh_in_background(&self, r: &Resolved, force: bool) {
        let refresh = self.flight(r, None, None, force, Priority::Background);
        tokio::spawn(async move {
            if let (Err(e), _) = refresh.await {
                tracing::debug!(error = %e, "background refresh failed");
            }
        });
    }

    /// Joins or starts the flight that fetches `r` upstream and stores it.
    fn flight(
        &self,
        r: &Resolved,
        deadline: Option<Instant>,
        stored: Option<Arc<Entry>>,
        force: bool,
        priority: Priority,
    ) -> impl std::future::Future<Output = (Result<Outcome>, Role)> + Send + 'static {
        let fetch = Fetch {
            r: r.clone(),
            deadline,
            priority,
            stored,
            force: force || r.freshness.force_refresh,
            env: self.env.clone(),
            tiers: self.tiers.clone(),
            fetcher: self.fetcher.clone(),
            ttl: self.ttl.clone(),
            settings: self.settings.clone(),
            bus: self.bus.clone(),
        };
        let flights = self.flights.clone();
        let key = r.store_key.clone();
        async move {
            let (flight, role) = flights.join(&key, move || fetch.run());
            let _waiting = (role == Role::Follower).then(metrics::coalesced_waiter);
            (flight.await, role)
        }
    }
}

/// A fetch that stored nothing takes back what it wrote: its index
/// memberships, unless an entry is stored under the key (one from before
/// this fetch, which still needs them), then its lease. Only memberships
/// unchanged since are removed: a fetch that started after (a purge took
/// our lease) indexed again, and keeps them.
async fn abandon(store: Arc<dyn crate::store::Store>, key: String, held: Held) {
    if let Ok(None) = store.get(&key).await {
        for (index, member) in &held.indexed {
            if let Err(e) = store.index_remove(index, std::slice::from_ref(member)).await {
                tracing::debug!(%index, error = %e, "index membership left to expire");
            }
        }
    }
    if let Err(e) = store.release_lease(&key, held.lease).await {
        tracing::debug!(error = %e, "lease release failed; it expires by itself");
    }
}

/// An upstream body as stored and served: volatile fields (the settings'
/// and the kind's) dropped, the requested variant's projection applied.
fn normalized(settings: &CacheSettings, r: &Resolved, body: &[u8]) -> Result<bytes::Bytes> {
    let drop: Vec<String> = settings.drop_fields.iter().chain(r.kind.drop_fields.iter()).cloned().collect();
    Ok(normalize(body, &drop, r.projection())?.into())
}

/// The answer for a resource the upstream does not have.
fn not_found(r: &Resolved) -> Error {
    Error::NotFound(format!("{} not found upstream", r.key))
}

/// XFetch's rule for one uniform `draw` in (0, 1]: refresh once `now`
/// plus `fetch_ms × beta × −ln(draw)`, scaled by `eagerness` (0 to 1: how
/// much budget is spare), reaches the entry's expiry. Eagerness 0 never
/// refreshes a fresh entry early; 1 is the configured behaviour.
fn xfetch(entry: &Entry, now: i64, beta: f64, draw: f64, eagerness: f64) -> bool {
    let gap = -(entry.fetch_ms as f64) * beta * draw.ln() * eagerness.clamp(0.0, 1.0);
    now as f64 + gap >= entry.fresh_until_ms as f64
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
    /// Foreground for a caller's miss, background for refreshes.
    priority: Priority,
    /// The stored (stale) entry, for conditional revalidation.
    stored: Option<Arc<Entry>>,
    /// Go upstream even if a fresh value is stored.
    force: bool,
    env: String,
    tiers: Arc<Tiers>,
    fetcher: Arc<dyn Fetcher>,
    ttl: Arc<TtlPolicy>,
    settings: Arc<CacheSettings>,
    bus: Arc<Bus>,
}

/// Whether this instance fetches (under its lease), or another instance
/// already did.
enum Claim {
    Held(Held),
    Done(Arc<Entry>),
}

/// What a fetch holds in the store while it runs: its lease, and the index
/// memberships it wrote (taken back if it stores nothing).
struct Held {
    lease: Lease,
    indexed: Vec<(String, Indexed)>,
}

impl Fetch {
    #[tracing::instrument(level = "debug", name = "fetch", skip_all, fields(key = %self.r.key))]
    async fn run(self) -> Result<Outcome> {
        let r = &self.r;
        let ttl = self.ttl.ttl(&r.kind, r.body.as_ref());
        let l1_ticket = self.tiers.l1_ticket(&r.store_key);
        // A store outage must not take reads down: without the store, fetch
        // without the fleet lease (this instance still coalesces its own
        // callers) and keep the value in L1 only.
        let prepared = if self.tiers.store_available() { Some(self.prepare(ttl).await) } else { None };
        let held = match prepared {
            Some(Ok(Claim::Held(held))) => Some(held),
            Some(Ok(Claim::Done(entry))) => return Ok(Outcome { entry, origin: Origin::Remote }),
            Some(Err(e @ Error::Store(_))) => {
                self.tiers.note_failure(&e, &r.store_key);
                tracing::debug!(key = %r.key, error = %e, "store unavailable: fetching without storing");
                None
            }
            Some(Err(e)) => return Err(e),
            // Skipped after a failure (not a new one: the skip must not
            // extend itself).
            None => None,
        };
        let result = match &held {
            Some(h) => {
                // Renewed while the fetch runs: a live but slow fetch (an
                // analytics job, a quota wait) is not taken for a dead one.
                tokio::select! {
                    result = self.lead(ttl, Some(h)) => result,
                    never = self.keep_lease(h.lease) => match never {},
                }
            }
            None => self.lead(ttl, None).await,
        };
        match held {
            // Tidied up in the background: callers never wait for it (a
            // store that just went away would hold them a timeout or more).
            Some(h) if !matches!(result, Ok((_, true))) => {
                tokio::spawn(abandon(self.tiers.store().clone(), r.store_key.clone(), h));
            }
            Some(_) => {}
            None => {
                if let Ok((f, _)) = &result {
                    self.tiers.fill_l1(&r.store_key, f.entry.clone(), l1_ticket);
                }
            }
        }
        result.map(|(outcome, _)| outcome)
    }

    /// Extends the fleet lease every third of its TTL while the fetch runs;
    /// once it is lost (a purge does not touch it, only expiry does), stops.
    async fn keep_lease(&self, lease: Lease) -> std::convert::Infallible {
        let every = self.settings.lease_ttl / 3;
        loop {
            tokio::time::sleep(every).await;
            match self.tiers.store().renew_lease(&self.r.store_key, lease, self.settings.lease_ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(key = %self.r.key, "fetch lease lost (purged or expired): its write will be refused");
                    return std::future::pending().await;
                }
                Err(e) => tracing::debug!(key = %self.r.key, error = %e, "lease renewal failed; retrying"),
            }
        }
    }

    /// Takes the fleet lease (or finds that another instance fetched the
    /// key meanwhile), then indexes the key before the upstream is called:
    /// a prefix or tag purge from now on finds it and deletes the lease,
    /// which refuses our write; one that read the indexes before cannot
    /// have preceded our upstream call. (Indexing before the lease instead
    /// let a purge in between drop the key from its indexes unnoticed.)
    async fn prepare(&self, ttl: Duration) -> Result<Claim> {
        let r = &self.r;
        let store = self.tiers.store().clone();
        let started_ms = now_ms();
        let lease = match self.lease(started_ms).await? {
            Claim::Held(held) => held.lease,
            done => return Ok(done),
        };
        let expires = started_ms + self.tiers.retention(ttl).as_millis() as i64;
        let mut indexes = vec![keys::kind_index(&self.env, &r.kind_name)];
        indexes.extend(r.indexed_tags().iter().map(|t| keys::tag_index(&self.env, t)));
        let added = join_all(indexes.iter().map(|i| store.index_add(i, &r.key, expires))).await;
        let mut held = Held { lease, indexed: Vec::with_capacity(indexes.len()) };
        let mut failed = None;
        for (index, added) in indexes.into_iter().zip(added) {
            match added {
                Ok(member) => held.indexed.push((index, member)),
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            None => Ok(Claim::Held(held)),
            Some(e) => {
                tokio::spawn(abandon(store, r.store_key.clone(), held));
                Err(e)
            }
        }
    }

    /// Takes the key's fleet-wide fetch lease, or waits for the holder's
    /// result (woken by its bus event, with a slow poll as a backstop), and
    /// takes over if the holder disappears. Bounded by the deadline.
    async fn lease(&self, started_ms: i64) -> Result<Claim> {
        let r = &self.r;
        let store = self.tiers.store();
        let mut events = self.bus.subscribe();
        let lease = Lease::new();
        loop {
            if store.try_lease(&r.store_key, lease, self.settings.lease_ttl).await? {
                return Ok(Claim::Held(Held { lease, indexed: Vec::new() }));
            }
            let mut pause = Duration::from_millis(20);
            loop {
                if let Some(entry) = self.tiers.get_stored(&r.store_key).await? {
                    let newer = entry.stored_at_ms >= started_ms;
                    if newer || (!self.force && acceptable(&entry, &r.freshness, now_ms())) {
                        return Ok(Claim::Done(entry));
                    }
                }
                if !store.lease_held(&r.store_key).await? {
                    break; // holder finished without storing, or died: try to take over
                }
                let wait = match self.deadline {
                    Some(d) if Instant::now() >= d => {
                        return Err(Error::DeadlineExceeded(format!(
                            "another instance is still fetching {}",
                            r.key
                        )))
                    }
                    Some(d) => pause.min(d - Instant::now()),
                    None => pause,
                };
                let key = r.key.as_str();
                let _ = tokio::time::timeout(wait, async {
                    loop {
                        match events.recv().await {
                            Ok(BusMessage::Event(e)) if e.keys.iter().any(|k| k == key) => return,
                            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(_) => return,
                        }
                    }
                })
                .await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        }
    }

    /// The lease holder's work: fetch (conditionally when possible),
    /// normalize, store under the lease (none: the store is down),
    /// announce. Returns the outcome and whether this fetch stored it.
    /// An upstream 404 is stored too, briefly (negative caching): random
    /// ids asked for again cost no quota, and stay in the store only that
    /// long.
    async fn lead(&self, ttl: Duration, held: Option<&Held>) -> Result<(Outcome, bool)> {
        let r = &self.r;
        // A fetch that finished just before this one may have stored the
        // value already: look once more before spending quota.
        if !self.force && held.is_some() {
            match self.tiers.get_stored(&r.store_key).await {
                Ok(Some(entry)) if acceptable(&entry, &r.freshness, now_ms()) => {
                    return Ok((Outcome { entry, origin: Origin::Stored }, false));
                }
                // A store error (noted by the tiers) is just no stored value.
                Ok(_) | Err(_) => {}
            }
        }
        let mut call = r.call();
        call.priority = self.priority;
        let previous = self
            .stored
            .as_ref()
            .filter(|e| !e.not_found && (!e.etag.is_empty() || !e.last_modified.is_empty()));
        if let Some(prev) = previous {
            call.validators = Some(Validators {
                etag: Some(prev.etag.clone()).filter(|s| !s.is_empty()),
                last_modified: Some(prev.last_modified.clone()).filter(|s| !s.is_empty()),
            });
        }
        let began = Instant::now();
        let not_found_ttl = self.settings.ttl.not_found;
        let fetched = match self.fetcher.fetch(&call, r.kind.paged, self.deadline).await {
            Ok(fetched) => fetched,
            Err(Error::NotFound(_)) if !not_found_ttl.is_zero() => {
                let entry = Entry::not_found(not_found_ttl, r.tags());
                let stored = match held {
                    Some(h) => self.store(&entry, not_found_ttl, h).await,
                    None => false,
                };
                return Ok((Outcome { entry: Arc::new(entry), origin: Origin::Fetched }, stored));
            }
            Err(e) => return Err(e),
        };
        let fetch_ms = began.elapsed().as_millis() as i64;

        let (mut entry, origin) = match (fetched.not_modified, previous) {
            (true, Some(prev)) => (Entry::new(prev.value.clone(), ttl, r.tags()), Origin::Revalidated),
            _ => (Entry::new(normalized(&self.settings, r, &fetched.body)?, ttl, r.tags()), Origin::Fetched),
        };
        entry.etag = fetched.etag.or_else(|| previous.map(|p| p.etag.clone())).unwrap_or_default();
        entry.last_modified =
            fetched.last_modified.or_else(|| previous.map(|p| p.last_modified.clone())).unwrap_or_default();
        entry.fetch_ms = fetch_ms.max(1);

        let stored = match held {
            Some(h) => self.store(&entry, self.tiers.retention(ttl), h).await,
            None => false,
        };
        if stored && origin == Origin::Fetched {
            self.bus.publish_update(&r.key).await;
        }
        Ok((Outcome { entry: Arc::new(entry), origin }, stored))
    }

    /// Stores `entry` for `keep` under the fetch's lease; returns whether
    /// it landed. A negative entry's memberships are shortened to its own
    /// short life (they were written for a full entry's).
    async fn store(&self, entry: &Entry, keep: Duration, held: &Held) -> bool {
        let r = &self.r;
        match self.tiers.put(&r.store_key, entry, keep, held.lease).await {
            Ok(true) => {
                if entry.not_found {
                    let until = now_ms() + keep.as_millis() as i64;
                    let store = self.tiers.store();
                    for (index, member) in &held.indexed {
                        let _ = store.index_rescore(index, member, until).await;
                    }
                }
                true
            }
            // A purge happened meanwhile (it took the lease): serve what we
            // fetched to our callers, but never store it over the purge.
            Ok(false) => {
                tracing::debug!(key = %r.key, "write refused: purged during the fetch");
                false
            }
            // Serve what we fetched even if it could not be stored.
            Err(e) => {
                tracing::warn!(key = %r.key, error = %e, "store write failed");
                false
            }
        }
    }
}

impl LocalCopies for Cache {
    /// Its L1 copy and its running fetch (later callers start a new one).
    fn forget(&self, store_key: &str) {
        self.tiers.evict_l1(store_key);
        self.flights.forget(store_key);
    }

    fn forget_all(&self) {
        self.tiers.clear_l1();
        self.flights.forget_all();
    }
}
