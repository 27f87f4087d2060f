//! The freshness rules of the read path, on the embedded store with a
//! scripted fetcher and tokio's paused clock (entry times follow it via
//! [`crate::clock::follow_tokio_time`]): no Redis, no network, no sleeps.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use super::*;
use crate::bus::EventKind;
use crate::config::CacheSettings;
use crate::l1::L1;
use crate::proto::v1::Freshness as WireFreshness;
use crate::store::testing::TestStore;
use crate::store::MemoryStore;

const QUEUE: &str = "q1";
const TTL: Duration = Duration::from_secs(300); // the `config` class

/// A scripted upstream: answers from its queue, else `{"n": <call number>}`.
#[derive(Default)]
struct Script {
    calls: AtomicUsize,
    queue: Mutex<VecDeque<Result<Fetched>>>,
    validators: Mutex<Vec<Option<Validators>>>,
    /// While set, every call waits this long first.
    delay: Mutex<Duration>,
    /// What [`Fetcher::eagerness`] answers (None: 1, plenty of budget).
    eagerness: Mutex<Option<f64>>,
}

impl Script {
    fn then(&self, answer: Result<Fetched>) {
        self.queue.lock().push_back(answer);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn body(json: &str) -> Fetched {
    Fetched { body: Bytes::from(json.to_string()), etag: None, last_modified: None, not_modified: false }
}

fn down() -> Error {
    Error::Unavailable { message: "upstream answered 503".into(), retry_after: None }
}

#[async_trait::async_trait]
impl Fetcher for Script {
    async fn fetch(&self, call: &Call, _paged: bool, _deadline: Option<Instant>) -> Result<Fetched> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.validators.lock().push(call.validators.clone());
        let delay = *self.delay.lock();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let next = self.queue.lock().pop_front();
        next.unwrap_or_else(|| Ok(body(&format!(r#"{{"id":"{QUEUE}","n":{n}}}"#))))
    }

    fn eagerness(&self) -> f64 {
        self.eagerness.lock().unwrap_or(1.0)
    }
}

struct Rig {
    cache: Arc<Cache>,
    script: Arc<Script>,
    bus: Arc<Bus>,
}

fn rig(tune: impl FnOnce(&mut CacheSettings), l1: bool) -> Rig {
    rig_on(Arc::new(MemoryStore::new()), tune, l1)
}

fn rig_on(store: Arc<dyn crate::store::Store>, tune: impl FnOnce(&mut CacheSettings), l1: bool) -> Rig {
    crate::clock::follow_tokio_time();
    let mut settings = CacheSettings::default();
    settings.ttl.jitter = 0.0;
    settings.early_refresh_beta = 0.0;
    tune(&mut settings);
    let catalog = Arc::new(Catalog::with_presets(&Default::default()).unwrap());
    let l1 = l1.then(|| L1::new(1 << 20, Duration::from_secs(2)));
    let tiers = Arc::new(Tiers::new(store, l1, settings.stale_grace, crate::bus::Membership::always()));
    let script = Arc::new(Script::default());
    let bus = Bus::local("test".into());
    let cache = Arc::new(Cache::new("t".into(), catalog, settings, tiers, script.clone(), bus.clone()));
    Rig { cache, script, bus }
}

fn get() -> GetRequest {
    GetRequest { kind: "routing.queue".into(), id: QUEUE.into(), ..Default::default() }
}

fn with(f: WireFreshness) -> GetRequest {
    GetRequest { freshness: Some(f), ..get() }
}

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: s, nanos: 0 })
}

impl Rig {
    async fn get(&self, req: &GetRequest) -> Result<Served> {
        self.cache.get(req, None).await
    }

    async fn source(&self, req: &GetRequest) -> Source {
        self.get(req).await.expect("served").source
    }

    async fn value(&self) -> String {
        String::from_utf8(self.get(&get()).await.unwrap().entry.value.to_vec()).unwrap()
    }

    /// Waits for the next UPDATED event (a background refresh stored).
    async fn stored(&self, events: &mut tokio::sync::broadcast::Receiver<BusMessage>) {
        let wait = async {
            loop {
                if let Ok(BusMessage::Event(e)) = events.recv().await {
                    if e.kind == EventKind::Updated {
                        return;
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait).await.expect("a refresh was stored");
    }
}

async fn advance(d: Duration) {
    tokio::time::advance(d).await;
}

#[tokio::test(start_paused = true)]
async fn a_fresh_value_is_served_from_the_store_without_a_fetch() {
    let r = rig(|_| {}, false);
    assert_eq!(r.source(&get()).await, Source::Upstream);
    advance(TTL - Duration::from_secs(1)).await;
    assert_eq!(r.source(&get()).await, Source::Store);
    assert_eq!(r.script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn with_l1_the_second_get_is_an_l1_hit() {
    let r = rig(|_| {}, true);
    assert_eq!(r.source(&get()).await, Source::Upstream);
    assert_eq!(r.source(&get()).await, Source::Store, "the first read fills L1 from the store");
    assert_eq!(r.source(&get()).await, Source::L1);
    assert_eq!(r.script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_value_past_its_ttl_is_fetched_again() {
    let r = rig(|_| {}, false);
    r.get(&get()).await.unwrap();
    advance(TTL).await;
    assert_eq!(r.source(&get()).await, Source::Upstream);
    assert_eq!(r.script.calls(), 2);
    assert!(r.value().await.contains(r#""n":2"#));
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_serves_stale_at_once_and_refreshes_once() {
    let r = rig(|s| s.stale_while_revalidate = Duration::from_secs(30), false);
    r.get(&get()).await.unwrap();
    advance(TTL + Duration::from_secs(10)).await;
    let mut events = r.bus.subscribe();
    *r.script.delay.lock() = Duration::from_millis(500);
    let first = r.get(&get()).await.unwrap();
    assert_eq!(first.source, Source::Stale);
    assert!(String::from_utf8_lossy(&first.entry.value).contains(r#""n":1"#));
    assert_eq!(r.source(&get()).await, Source::Stale, "still stale while the one refresh runs");
    r.stored(&mut events).await;
    assert_eq!(r.script.calls(), 2, "one background refresh for both callers");
    assert_eq!(r.source(&get()).await, Source::Store);
    assert!(r.value().await.contains(r#""n":2"#));
}

#[tokio::test(start_paused = true)]
async fn past_the_stale_while_revalidate_window_the_caller_waits_for_the_fetch() {
    let r = rig(|s| s.stale_while_revalidate = Duration::from_secs(30), false);
    r.get(&get()).await.unwrap();
    advance(TTL + Duration::from_secs(31)).await;
    assert_eq!(r.source(&get()).await, Source::Upstream);
}

#[tokio::test(start_paused = true)]
async fn max_age_refuses_a_value_older_than_the_caller_allows() {
    let r = rig(|_| {}, false);
    r.get(&get()).await.unwrap();
    advance(Duration::from_secs(60)).await;
    let young = with(WireFreshness { max_age: secs(30), ..Default::default() });
    assert_eq!(r.source(&young).await, Source::Upstream);
    let old_enough = with(WireFreshness { max_age: secs(120), ..Default::default() });
    assert_eq!(r.source(&old_enough).await, Source::Store);
    assert_eq!(r.script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn max_age_overrides_stale_while_revalidate() {
    let r = rig(|s| s.stale_while_revalidate = Duration::from_secs(30), false);
    r.get(&get()).await.unwrap();
    advance(TTL + Duration::from_secs(5)).await;
    let strict = with(WireFreshness { max_age: secs(600), ..Default::default() });
    assert_eq!(r.source(&strict).await, Source::Upstream, "a caller with max_age never gets SWR's stale");
}

#[tokio::test(start_paused = true)]
async fn allow_stale_serves_any_stored_value_and_refreshes_in_the_background() {
    let r = rig(|_| {}, false);
    r.get(&get()).await.unwrap();
    advance(TTL + Duration::from_secs(600)).await;
    let mut events = r.bus.subscribe();
    let any = with(WireFreshness { allow_stale: true, ..Default::default() });
    assert_eq!(r.source(&any).await, Source::Stale);
    r.stored(&mut events).await;
    assert_eq!(r.source(&get()).await, Source::Store);
}

#[tokio::test(start_paused = true)]
async fn force_refresh_goes_upstream_even_when_fresh() {
    let r = rig(|_| {}, false);
    r.get(&get()).await.unwrap();
    let force = with(WireFreshness { force_refresh: true, ..Default::default() });
    assert_eq!(r.source(&force).await, Source::Upstream);
    assert_eq!(r.script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_the_old_value_within_max_staleness_only() {
    let r = rig(|s| s.max_staleness = Duration::from_secs(60), false);
    r.get(&get()).await.unwrap();
    advance(TTL + Duration::from_secs(30)).await;
    r.script.then(Err(down()));
    let served = r.get(&get()).await.unwrap();
    assert_eq!(served.source, Source::Stale);
    assert!(String::from_utf8_lossy(&served.entry.value).contains(r#""n":1"#));

    advance(Duration::from_secs(31)).await; // now 61 s past TTL
    r.script.then(Err(down()));
    let err = r.get(&get()).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_never_serves_older_than_the_callers_max_age() {
    let r = rig(|s| s.max_staleness = Duration::from_secs(3600), false);
    r.get(&get()).await.unwrap();
    advance(TTL + Duration::from_secs(30)).await;
    r.script.then(Err(down()));
    let strict = with(WireFreshness { max_age: secs(60), ..Default::default() });
    assert!(r.get(&strict).await.is_err(), "the stored value is 330 s old; the caller allows 60 s");
}

#[tokio::test(start_paused = true)]
async fn caller_errors_are_not_served_stale() {
    let r = rig(|_| {}, false);
    r.get(&get()).await.unwrap();
    advance(TTL + Duration::from_secs(1)).await;
    r.script.then(Err(Error::NotFound("/api/v2/routing/queues/q1".into())));
    assert!(matches!(r.get(&get()).await, Err(Error::NotFound(_))), "a 404 is an answer, not an outage");
}

#[tokio::test(start_paused = true)]
async fn upstream_failures_are_never_cached() {
    let r = rig(|_| {}, true);
    r.script.then(Err(down()));
    assert!(r.get(&get()).await.is_err());
    assert_eq!(r.source(&get()).await, Source::Upstream, "the failure left nothing behind");
    assert_eq!(r.script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_unchanged_resource_is_revalidated_with_its_validators() {
    let r = rig(|_| {}, false);
    r.script.then(Ok(Fetched { etag: Some("\"v1\"".into()), ..body(r#"{"id":"q1","name":"Sales"}"#) }));
    r.get(&get()).await.unwrap();
    advance(TTL + Duration::from_secs(1)).await;
    r.script.then(Ok(Fetched { body: Bytes::new(), etag: None, last_modified: None, not_modified: true }));
    let served = r.get(&get()).await.unwrap();
    assert_eq!(served.source, Source::Revalidated);
    assert!(String::from_utf8_lossy(&served.entry.value).contains("Sales"));
    let sent = r.script.validators.lock()[1].clone().expect("validators sent");
    assert_eq!(sent.etag.as_deref(), Some("\"v1\""));
    assert_eq!(served.entry.etag, "\"v1\"", "the validator is kept for the next revalidation");
    assert_eq!(r.source(&get()).await, Source::Store, "the revalidated value is fresh again");
}

#[tokio::test(start_paused = true)]
async fn early_refresh_renews_a_hot_key_before_it_expires() {
    // A huge beta makes XFetch's coin certain (its chance of not firing is
    // about 1e-7 at 290 s left).
    let r = rig(|s| s.early_refresh_beta = 1e12, false);
    r.get(&get()).await.unwrap();
    advance(Duration::from_secs(10)).await;
    let mut events = r.bus.subscribe();
    assert_eq!(r.source(&get()).await, Source::Store, "the caller never waits for an early refresh");
    r.stored(&mut events).await;
    assert_eq!(r.script.calls(), 2);
}

#[test]
fn xfetch_leads_expiry_less_as_the_budget_runs_low() {
    let mut e = Entry::new(Bytes::new(), TTL, vec![]);
    e.fresh_until_ms = 10_000;
    e.fetch_ms = 100;
    // A draw of 1/e: a lead of fetch_ms × beta = 100 ms at full eagerness.
    let draw = (-1.0f64).exp();
    assert!(xfetch(&e, 9_900, 1.0, draw, 1.0), "plenty of budget: as configured");
    assert!(!xfetch(&e, 9_899, 1.0, draw, 1.0));
    assert!(!xfetch(&e, 9_900, 1.0, draw, 0.5), "half as eager: half the lead");
    assert!(xfetch(&e, 9_950, 1.0, draw, 0.5));
    assert!(!xfetch(&e, 9_999, 1e12, draw, 0.0), "no budget to spare: never early");
    assert!(xfetch(&e, 10_000, 1.0, draw, 0.0), "expired is not early");
}

#[tokio::test(start_paused = true)]
async fn early_refresh_stops_while_the_budget_is_needed_and_resumes_after() {
    // The same certain coin as above.
    let r = rig(|s| s.early_refresh_beta = 1e12, false);
    r.get(&get()).await.unwrap();
    advance(Duration::from_secs(10)).await;
    *r.script.eagerness.lock() = Some(0.0);
    for _ in 0..20 {
        assert_eq!(r.source(&get()).await, Source::Store);
    }
    tokio::task::yield_now().await;
    assert_eq!(r.script.calls(), 1, "no early refresh while callers need the budget");
    *r.script.eagerness.lock() = Some(1.0);
    let mut events = r.bus.subscribe();
    assert_eq!(r.source(&get()).await, Source::Store);
    r.stored(&mut events).await;
    assert_eq!(r.script.calls(), 2, "budget to spare again: refreshed early");
}

#[tokio::test(start_paused = true)]
async fn without_early_refresh_a_fresh_key_is_left_alone() {
    let r = rig(|_| {}, false); // beta 0
    r.get(&get()).await.unwrap();
    advance(TTL - Duration::from_millis(1)).await;
    assert_eq!(r.source(&get()).await, Source::Store);
    tokio::task::yield_now().await;
    assert_eq!(r.script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_share_one_fetch() {
    let r = rig(|_| {}, false);
    *r.script.delay.lock() = Duration::from_millis(200);
    let gets: Vec<_> = (0..50)
        .map(|_| {
            let cache = r.cache.clone();
            tokio::spawn(async move { cache.get(&get(), None).await.map(|s| s.source) })
        })
        .collect();
    let mut sources = Vec::new();
    for g in gets {
        sources.push(g.await.unwrap().unwrap());
    }
    assert_eq!(r.script.calls(), 1);
    assert_eq!(sources.iter().filter(|s| **s == Source::Upstream).count(), 1);
    assert!(sources.iter().all(|s| matches!(s, Source::Upstream | Source::Coalesced)), "{sources:?}");
}

#[tokio::test(start_paused = true)]
async fn a_purge_detaches_the_fetch_under_way() {
    let r = rig(|_| {}, false);
    *r.script.delay.lock() = Duration::from_millis(200);
    let first = {
        let cache = r.cache.clone();
        tokio::spawn(async move { cache.get(&get(), None).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A purge: the store's generation bump refuses the old fetch's write,
    // and the local flight is detached.
    let sk = keys::store_key("t:routing.queue:q1:full");
    r.cache.tiers().store().purge(&sk).await.unwrap();
    r.cache.forget(&sk);
    let second = r.get(&get()).await.unwrap();
    assert_eq!(second.source, Source::Upstream, "a caller after the purge does not join the old fetch");
    assert_eq!(r.script.calls(), 2);
    first.await.unwrap().unwrap();
}

/// A purge this instance did not hear of (a bus gap), made elsewhere while
/// a fetch runs here: after the gap, later callers must not join that
/// fetch (its value is from before the purge); they start a new one.
#[tokio::test(start_paused = true)]
async fn after_a_gap_callers_do_not_join_a_fetch_from_before_it() {
    let r = rig(|_| {}, false);
    *r.script.delay.lock() = Duration::from_millis(200);
    let first = {
        let cache = r.cache.clone();
        tokio::spawn(async move { cache.get(&get(), None).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Another instance purges; the event is lost here, so only the gap says so.
    r.cache.tiers().store().purge(&keys::store_key("t:routing.queue:q1:full")).await.unwrap();
    r.cache.forget_all();
    let second = r.get(&get()).await.unwrap();
    assert_eq!(second.source, Source::Upstream, "not served the fetch from before the gap");
    assert_eq!(r.script.calls(), 2);
    first.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_deadline_shorter_than_the_fetch_is_deadline_exceeded() {
    let r = rig(|_| {}, false);
    *r.script.delay.lock() = Duration::from_secs(5);
    let deadline = Instant::now() + Duration::from_secs(1);
    assert!(matches!(r.cache.get(&get(), Some(deadline)).await, Err(Error::DeadlineExceeded(_))));
}

#[tokio::test(start_paused = true)]
async fn with_a_stale_value_a_hung_upstream_is_answered_stale_within_the_deadline() {
    let r = rig(|_| {}, false);
    r.get(&get()).await.unwrap();
    advance(TTL + Duration::from_secs(1)).await;
    *r.script.delay.lock() = Duration::from_secs(30);
    let started = Instant::now();
    let served = r.cache.get(&get(), Some(started + Duration::from_secs(2))).await.unwrap();
    assert_eq!(served.source, Source::Stale);
    assert!(started.elapsed() <= Duration::from_millis(1600), "{:?}", started.elapsed());
}

/// What a tag purge does to the store (the invalidation layer's steps):
/// the entity's keys named from the catalog, and its index's members.
async fn purge_tag(store: Arc<MemoryStore>, tag: String) {
    use crate::store::Store as _;
    let catalog = Catalog::with_presets(&Default::default()).unwrap();
    let index = keys::tag_index("t", &tag);
    let members = store.index_members(&index, "").await.unwrap();
    let mut targets = catalog.entity_keys_for_tag("t", &tag);
    targets.extend(members.iter().map(|m| m.key.clone()));
    for key in &targets {
        store.purge(&keys::store_key(key)).await.unwrap();
    }
    store.index_remove(&index, &members).await.unwrap();
}

/// A tag purge landing after a fetch took its lease and indexed its key but
/// before it called the upstream: the entry that fetch stores must still be
/// found by every later tag purge (it must not escape them for its whole TTL).
#[tokio::test(start_paused = true)]
async fn an_entry_stored_by_a_fetch_racing_a_tag_purge_does_not_escape_later_purges() {
    let inner = Arc::new(MemoryStore::new());
    let tag =
        Catalog::with_presets(&Default::default()).unwrap().get("routing.queue").unwrap().tags_for(QUEUE)[0]
            .clone();
    let store = Arc::new(TestStore { inner: inner.clone(), ..Default::default() });
    *store.after_index.lock() = Some(Box::pin(purge_tag(inner.clone(), tag.clone())));
    let r = rig_on(store.clone(), |_| {}, false);
    r.get(&get()).await.unwrap();
    assert!(store.after_index.lock().is_none(), "the racing purge ran inside the fetch");
    purge_tag(inner.clone(), tag).await;
    let after = r.source(&get()).await;
    assert_ne!(after, Source::Store, "the entry escaped a later tag purge");
}

fn kind_index() -> String {
    keys::kind_index("t", "routing.queue")
}

/// An entity's own tag (`queue:{id}`) keeps no index of its own: a tag
/// purge names the entity's keys from the catalog. A cached queue costs
/// its entry and one membership of the shared kind index, no key beside
/// (that one-member index cost a Redis key and up to 1 KB per entity).
#[tokio::test(start_paused = true)]
async fn a_cached_entity_writes_no_index_of_its_own() {
    let r = rig(|_| {}, false);
    r.get(&get()).await.unwrap();
    r.get(&GetRequest { variant: "summary".into(), ..get() }).await.unwrap();
    let store = r.cache.tiers().store();
    assert_eq!(store.index_members(&kind_index(), "").await.unwrap().len(), 2);
    let own = keys::tag_index("t", &format!("queue:{QUEUE}"));
    assert_eq!(store.index_members(&own, "").await.unwrap(), vec![], "an index per entity");
}

/// A store found down is skipped until a probe in the background reads it
/// again: only the first caller waits out a command timeout. (Before, each
/// time a skip of 1 s ran out, every miss then under way waited one.)
#[tokio::test(start_paused = true)]
async fn a_store_found_down_is_skipped_until_a_background_probe_finds_it_back() {
    let timeout = Duration::from_millis(500);
    let store = Arc::new(TestStore::default());
    *store.fail_after.lock() = timeout;
    store.down.store(true, Ordering::SeqCst);
    let r = rig_on(store.clone(), |_| {}, false);
    assert_eq!(r.source(&get()).await, Source::Upstream, "a store outage does not fail the read");
    assert!(!r.cache.tiers().store_available());
    // Long past the old skip, misses arriving together: none waits.
    advance(Duration::from_millis(2500)).await;
    let misses: Vec<_> = (0..5)
        .map(|_| {
            let cache = r.cache.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let source = cache.get(&get(), None).await.map(|s| s.source);
                (source, started.elapsed())
            })
        })
        .collect();
    for miss in misses {
        let (source, took) = miss.await.unwrap();
        assert!(matches!(source.unwrap(), Source::Upstream | Source::Coalesced));
        assert!(took < timeout, "a caller waited on a store known to be down: {took:?}");
    }
    // Back: the probe finds it within a retry period or two, and it is used again.
    store.down.store(false, Ordering::SeqCst);
    let back = Instant::now();
    while !r.cache.tiers().store_available() && back.elapsed() < crate::tiers::STORE_RETRY * 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(r.cache.tiers().store_available(), "the probe put the store back in use");
    assert_eq!(r.source(&get()).await, Source::Upstream);
    assert_eq!(r.source(&get()).await, Source::Store);
}

/// An upstream 404 is remembered briefly: asked again, no quota is spent;
/// its index memberships live as long as it does (random ids must not fill
/// the indexes for a full entry's retention).
#[tokio::test(start_paused = true)]
async fn a_404_is_remembered_for_its_own_short_ttl() {
    let r = rig(|_| {}, false);
    r.script.then(Err(Error::NotFound("/api/v2/routing/queues/q1".into())));
    assert!(matches!(r.get(&get()).await, Err(Error::NotFound(_))));
    assert!(matches!(r.get(&get()).await, Err(Error::NotFound(_))), "remembered");
    assert_eq!(r.script.calls(), 1, "the second ask spent no quota");
    let store = r.cache.tiers().store();
    let members = store.index_members(&kind_index(), "").await.unwrap();
    let limit = now_ms() + CacheSettings::default().ttl.not_found.as_millis() as i64;
    assert!(members.iter().all(|m| m.expires_at_ms <= limit), "{members:?} past {limit}");
    advance(CacheSettings::default().ttl.not_found + Duration::from_secs(1)).await;
    assert_eq!(r.source(&get()).await, Source::Upstream, "asked again once forgotten");
}

/// A fetch that stores nothing (the upstream failed) takes its index
/// memberships back: only stored entries are indexed.
#[tokio::test(start_paused = true)]
async fn a_failed_fetch_leaves_no_index_membership() {
    let r = rig(|_| {}, false);
    r.script.then(Err(down()));
    assert!(r.get(&get()).await.is_err());
    let store = r.cache.tiers().store();
    // Taken back in the background, right after the answer.
    let since = Instant::now();
    while !store.index_members(&kind_index(), "").await.unwrap().is_empty() && since.elapsed() < TTL {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.index_members(&kind_index(), "").await.unwrap(), vec![]);
    // A stored entry keeps its membership even when a later refresh fails.
    r.get(&get()).await.unwrap();
    advance(TTL + Duration::from_secs(1)).await;
    r.script.then(Err(down()));
    assert_eq!(r.source(&get()).await, Source::Stale);
    assert_eq!(store.index_members(&kind_index(), "").await.unwrap().len(), 1);
}

/// The L1 hit path's own cost (resolve, lookup, count), per Get: run in a
/// release build, `cargo test --release -p cxcache-server --lib -- --ignored
/// --nocapture l1_hit_cost`.
#[tokio::test]
#[ignore = "a measurement: run in a release build"]
async fn l1_hit_cost() {
    crate::metrics::install();
    let rig = rig(|_| {}, true);
    let req = get();
    rig.get(&req).await.unwrap();
    rig.get(&req).await.unwrap();
    assert_eq!(rig.source(&req).await, Source::L1);
    const N: u32 = 1_000_000;
    let started = std::time::Instant::now();
    for _ in 0..N {
        let r = rig.cache.resolve(std::hint::black_box(&req)).unwrap();
        let served = rig.cache.l1_hit(&r).expect("an L1 hit");
        std::hint::black_box(served);
    }
    let per = started.elapsed().as_nanos() as f64 / f64::from(N);
    println!("resolve + l1_hit: {per:.0} ns per Get");
}

/// Each event logged, with the name of the span it was logged in.
type Logged = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct Recorder(Logged);

impl<S> tracing_subscriber::Layer<S> for Recorder
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let span = ctx.event_span(event).map(|s| s.name().to_string());
        self.0.lock().push((message.0, span));
    }
}

/// With logs alone, a Get opens its span only past the tiers: a miss and a
/// failed refresh served stale run in it (so what they log names the
/// request), a hit opens none and logs nothing.
#[tokio::test(start_paused = true)]
async fn only_a_get_past_the_tiers_opens_its_span() {
    use tracing_subscriber::layer::SubscriberExt;
    let logged = Logged::default();
    let _logs =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(Recorder(logged.clone())));
    let r = rig(
        |s| (s.max_staleness, s.stale_while_revalidate) = (Duration::from_secs(3600), Duration::ZERO),
        false,
    );
    let opened = AtomicUsize::new(0);
    let open = || {
        opened.fetch_add(1, Ordering::SeqCst);
        tracing::info_span!("get", request_id = "req-1")
    };
    let resolved = r.cache.resolve(&get()).unwrap();
    let traced = || r.cache.get_within(&resolved, None, None, Trace::PastHit(&open));

    assert_eq!(traced().await.unwrap().source, Source::Upstream);
    assert_eq!(opened.load(Ordering::SeqCst), 1, "a miss runs in its span");
    assert_eq!(traced().await.unwrap().source, Source::Store);
    assert_eq!(opened.load(Ordering::SeqCst), 1, "a store hit opens no span");
    assert!(logged.lock().is_empty(), "a hit logs nothing: {:?}", logged.lock());

    advance(TTL + Duration::from_secs(1)).await;
    r.script.then(Err(down()));
    assert_eq!(traced().await.unwrap().source, Source::Stale);
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    let logged = logged.lock().clone();
    assert!(
        logged.contains(&("upstream failed; serving stale".into(), Some("get".into()))),
        "the fallback is logged inside the Get's span: {logged:?}"
    );
}
