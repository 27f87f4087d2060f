//! Refresh ahead and the verifier on the embedded store, with a scripted
//! upstream and tokio's paused clock (entry times follow it).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::ahead::{self, RefreshAhead};
use super::verify::Verifier;
use crate::bus::Bus;
use crate::cache::{Cache, Fetcher};
use crate::catalog::Catalog;
use crate::config::{CacheSettings, PinnedKey, RefreshAheadSettings, VerifySettings};
use crate::entry::{now_ms, Entry};
use crate::error::{Error, Result};
use crate::invalidation::Invalidator;
use crate::proto::v1::GetRequest;
use crate::source::Source;
use crate::store::testing::TestStore;
use crate::store::MemoryStore;
use crate::tiers::Tiers;
use crate::upstream::{Call, Fetched, Priority};

const TTL: Duration = Duration::from_secs(10);

/// A scripted upstream: each path answers `{"id": path, "v": version}`,
/// versions changed by the test; background calls refused while `busy`.
#[derive(Default)]
struct Upstream {
    versions: Mutex<std::collections::HashMap<String, u32>>,
    busy: AtomicBool,
    foreground: AtomicUsize,
    background: AtomicUsize,
}

#[async_trait::async_trait]
impl Fetcher for Upstream {
    async fn fetch(&self, call: &Call, _paged: bool, _deadline: Option<Instant>) -> Result<Fetched> {
        if call.priority == Priority::Background {
            if self.busy.load(Ordering::SeqCst) {
                return Err(Error::RateLimited { retry_after: Duration::from_secs(1) });
            }
            self.background.fetch_add(1, Ordering::SeqCst);
        } else {
            self.foreground.fetch_add(1, Ordering::SeqCst);
        }
        let v = *self.versions.lock().get(&call.path).unwrap_or(&0);
        let id = call.path.rsplit('/').next().unwrap_or_default();
        Ok(Fetched {
            body: Bytes::from(format!(r#"{{"id":"{id}","v":{v}}}"#)),
            etag: None,
            last_modified: None,
            not_modified: false,
        })
    }
}

struct Rig {
    cache: Arc<Cache>,
    upstream: Arc<Upstream>,
    invalidator: Arc<Invalidator>,
    bus: Arc<Bus>,
    /// The store, counting the calls that reach it.
    store: Arc<TestStore>,
}

fn rig(ahead: RefreshAheadSettings) -> Rig {
    crate::clock::follow_tokio_time();
    let mut settings = CacheSettings::default();
    settings.ttl.jitter = 0.0;
    settings.ttl.config = TTL;
    settings.early_refresh_beta = 0.0;
    settings.l1.enabled = false;
    settings.refresh_ahead = ahead;
    let catalog = Arc::new(Catalog::with_presets(&Default::default()).unwrap());
    let counted = Arc::new(TestStore { inner: Arc::new(MemoryStore::new()), ..Default::default() });
    let store: Arc<dyn crate::store::Store> = counted.clone();
    let tiers =
        Arc::new(Tiers::new(store.clone(), None, settings.stale_grace, crate::bus::Membership::always()));
    let upstream = Arc::new(Upstream::default());
    let bus = Bus::local("test".into());
    let cache =
        Arc::new(Cache::new("t".into(), catalog.clone(), settings, tiers, upstream.clone(), bus.clone()));
    let invalidator = Arc::new(Invalidator {
        env: "t".into(),
        store,
        catalog,
        local: cache.clone(),
        bus: bus.clone(),
        ack_timeout: Duration::from_millis(100),
        retry_for: Duration::from_millis(100),
    });
    Rig { cache, upstream, invalidator, bus, store: counted }
}

fn queue(id: &str) -> GetRequest {
    GetRequest { kind: "routing.queue".into(), id: id.into(), ..Default::default() }
}

fn settings(hot: u32) -> RefreshAheadSettings {
    RefreshAheadSettings {
        hot_requests: hot,
        interval: Duration::from_millis(500),
        lead: 0.2,
        ..Default::default()
    }
}

impl Rig {
    async fn source(&self, req: &GetRequest) -> Source {
        self.cache.get(req, None).await.expect("served").source
    }
}

#[test]
fn an_entry_is_due_within_the_lead_plus_one_interval() {
    let mut e = Entry::new(Bytes::new(), TTL, vec![]);
    e.stored_at_ms = 0;
    e.fresh_until_ms = 10_000;
    let interval = Duration::from_millis(500);
    assert!(!ahead::due(&e, 7_499, 0.2, interval));
    assert!(ahead::due(&e, 7_500, 0.2, interval), "2 s (20 %) + 0.5 s before expiry");
    assert!(ahead::due(&e, 11_000, 0.2, interval), "expired: due");
}

/// A key asked for fewer than `hot_requests` times cannot be hot: a round
/// reads nothing of it from the store (it read every tracked key's whole
/// entry every interval, up to `max_keys` values a second however cold),
/// and forgets it once it was not asked for within its TTL.
#[tokio::test(start_paused = true)]
async fn a_round_reads_nothing_of_keys_asked_fewer_than_the_hot_count() {
    let rig = rig(settings(3));
    let refresher = RefreshAhead::new(rig.cache.clone(), settings(3)).unwrap();
    for n in 0..50 {
        assert_eq!(rig.source(&queue(&format!("q{n}"))).await, Source::Upstream);
    }
    assert_eq!(rig.cache.hot().len(), 50);
    let before = rig.store.calls.load(Ordering::SeqCst);
    refresher.round().await;
    assert_eq!(rig.store.calls.load(Ordering::SeqCst), before, "store calls for 50 cold keys");
    tokio::time::advance(TTL + Duration::from_secs(1)).await;
    refresher.round().await;
    assert_eq!(rig.cache.hot().len(), 0, "cold keys are forgotten after their TTL");
}

#[tokio::test(start_paused = true)]
async fn hot_keys_never_expire_under_callers_and_cold_ones_are_left() {
    let rig = rig(settings(3));
    let refresher = RefreshAhead::new(rig.cache.clone(), settings(3)).unwrap();
    let (hot, cold) = (queue("hot"), queue("cold"));
    assert_eq!(rig.source(&hot).await, Source::Upstream);
    assert_eq!(rig.source(&cold).await, Source::Upstream);
    // Callers read the hot key every second for three TTL windows; the
    // refresher runs every interval: no read ever misses.
    let start = Instant::now();
    while start.elapsed() < TTL * 3 {
        tokio::time::advance(Duration::from_millis(500)).await;
        refresher.round().await;
        if start.elapsed().as_millis().is_multiple_of(1000) {
            assert_eq!(rig.source(&hot).await, Source::Store, "at {:?}", start.elapsed());
        }
    }
    assert_eq!(rig.upstream.foreground.load(Ordering::SeqCst), 2, "only the two first misses");
    let refreshes = rig.upstream.background.load(Ordering::SeqCst);
    assert!((3..=4).contains(&refreshes), "about one refresh per window: {refreshes}");
    // The cold key was asked for once: it expired and is fetched again.
    assert_eq!(rig.source(&cold).await, Source::Upstream);
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_uses_no_budget_callers_need_and_catches_up_after() {
    let rig = rig(settings(2));
    let refresher = RefreshAhead::new(rig.cache.clone(), settings(2)).unwrap();
    let hot = queue("hot");
    rig.source(&hot).await;
    rig.source(&hot).await;
    rig.upstream.busy.store(true, Ordering::SeqCst);
    tokio::time::advance(TTL - Duration::from_secs(2)).await;
    let round = refresher.round().await;
    assert_eq!((round.refreshed, round.refused), (0, 1), "refused, and the round stops");
    assert_eq!(rig.upstream.background.load(Ordering::SeqCst), 0);
    // The budget frees up before expiry: the next round refreshes it.
    rig.upstream.busy.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(refresher.round().await.refreshed, 1);
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(rig.source(&hot).await, Source::Store, "still fresh past the first expiry");
}

#[tokio::test(start_paused = true)]
async fn pinned_keys_are_fetched_and_kept_fresh_without_callers() {
    let mut s = settings(0);
    s.pinned = vec![PinnedKey { kind: "routing.queue".into(), id: "ivr".into(), variant: String::new() }];
    let rig = rig(s.clone());
    let refresher = RefreshAhead::new(rig.cache.clone(), s).unwrap();
    assert_eq!(refresher.round().await.refreshed, 1, "fetched at once");
    for _ in 0..60 {
        tokio::time::advance(Duration::from_millis(500)).await;
        refresher.round().await;
    }
    assert_eq!(rig.source(&queue("ivr")).await, Source::Store);
    assert_eq!(rig.upstream.foreground.load(Ordering::SeqCst), 0);
    assert!(rig.upstream.background.load(Ordering::SeqCst) >= 4);
}

#[tokio::test(start_paused = true)]
async fn the_verifier_purges_changed_entries_counts_them_and_stops_when_refused() {
    let rig = rig(settings(0));
    let ids: Vec<String> = (0..10).map(|i| format!("q{i}")).collect();
    for id in &ids {
        rig.source(&queue(id)).await;
    }
    // Two change upstream, silently.
    for id in ["q3", "q7"] {
        rig.upstream.versions.lock().insert(format!("/api/v2/routing/queues/{id}"), 1);
    }
    let mut events = rig.bus.subscribe();
    let verifier = Verifier::new(
        rig.cache.clone(),
        rig.invalidator.clone(),
        VerifySettings { interval: TTL, sample: 4 },
    );
    rig.upstream.busy.store(true, Ordering::SeqCst);
    let refused = verifier.round().await;
    assert!(refused.refused && refused.sampled == 0, "{refused:?}");
    rig.upstream.busy.store(false, Ordering::SeqCst);
    // 10 keys, 4 per round: one pass in three rounds.
    let mut stale = 0;
    let mut sampled = 0;
    for _ in 0..3 {
        let round = verifier.round().await;
        stale += round.stale;
        sampled += round.sampled;
    }
    assert_eq!((sampled, stale), (10, 2));
    // Purged through the invalidator: the bus carried both keys.
    let mut purged = Vec::new();
    while let Ok(msg) = events.try_recv() {
        if let crate::bus::BusMessage::Event(e) = msg {
            purged.extend(e.keys.iter().cloned());
        }
    }
    purged.sort();
    assert_eq!(purged, ["t:routing.queue:q3:full", "t:routing.queue:q7:full"]);
    assert_eq!(rig.source(&queue("q3")).await, Source::Upstream, "the next read fetches the new value");
    assert_eq!(rig.source(&queue("q4")).await, Source::Store, "unchanged entries stay");
    let _ = now_ms();
}
