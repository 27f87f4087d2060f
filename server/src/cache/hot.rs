//! Which keys are hot: the last few request times of each key asked for.
//!
//! Why: refresh ahead spends background budget only on keys callers will
//! ask for again, and "asked for at least N times within its last TTL
//! window" is that guess made exact and cheap: a key keeps its N most
//! recent request times (a ring), and is hot while the oldest of them is
//! within one TTL of now. The TTL is the entry's own, so the tracker needs
//! no TTL policy. Recording is on every Get (hits included), so it is a
//! shard lock and a hash lookup, no allocation once the key is known;
//! the request itself is kept (its freshness demands cleared) so a
//! refresh or a verification can repeat it.
//!
//! Bounded: at most `max_keys` keys; past it new keys are not tracked
//! until refresh ahead forgets cold ones ([`Tracker::forget`]).

use std::collections::HashMap;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::policy::{Freshness, Resolved};

const SHARDS: usize = 16;

struct Slot {
    request: Resolved,
    /// Most recent last; at most `n` long.
    times: VecDeque<Instant>,
}

/// A tracked key as refresh ahead sees it.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub request: Resolved,
    /// The `n`-th most recent request (None: fewer than `n` so far).
    pub nth_latest: Option<Instant>,
    pub latest: Instant,
}

impl Tracked {
    /// Asked for at least `n` times within `window` before `now`.
    pub fn hot(&self, window: Duration, now: Instant) -> bool {
        self.nth_latest.is_some_and(|t| now.saturating_duration_since(t) <= window)
    }
}

/// One lock's share of the tracked keys (foldhash: every Get looks here).
type Shard = Mutex<HashMap<String, Slot, foldhash::fast::RandomState>>;

/// The request times of recently asked-for keys.
pub struct Tracker {
    n: usize,
    max_keys: usize,
    len: AtomicUsize,
    shards: Vec<Shard>,
    /// Picks a key's shard.
    hasher: foldhash::fast::RandomState,
}

impl Tracker {
    /// Tracks up to `max_keys` keys, `n` request times each (0: nothing is
    /// tracked, no key is ever hot).
    pub fn new(n: u32, max_keys: usize) -> Self {
        Tracker {
            n: n as usize,
            max_keys,
            len: AtomicUsize::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect(),
            hasher: Default::default(),
        }
    }

    fn shard(&self, key: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// One request of `r`, now.
    pub fn record(&self, r: &Resolved) {
        if self.n == 0 || !r.cacheable {
            return;
        }
        let now = Instant::now();
        let mut shard = self.shard(&r.key).lock();
        if let Some(slot) = shard.get_mut(&r.key) {
            if slot.times.len() == self.n {
                slot.times.pop_front();
            }
            slot.times.push_back(now);
            return;
        }
        if self.len.load(Ordering::Relaxed) >= self.max_keys {
            return;
        }
        self.len.fetch_add(1, Ordering::Relaxed);
        let mut request = r.clone();
        request.freshness = Freshness::default();
        let mut times = VecDeque::with_capacity(self.n);
        times.push_back(now);
        shard.insert(r.key.clone(), Slot { request, times });
    }

    /// Every tracked key.
    pub fn tracked(&self) -> Vec<Tracked> {
        let mut out = Vec::new();
        for shard in &self.shards {
            for slot in shard.lock().values() {
                let Some(&latest) = slot.times.back() else { continue };
                let nth_latest = (slot.times.len() == self.n).then(|| slot.times[0]);
                out.push(Tracked { request: slot.request.clone(), nth_latest, latest });
            }
        }
        out
    }

    /// The request last seen for `key`, if tracked.
    pub fn request(&self, key: &str) -> Option<Resolved> {
        self.shard(key).lock().get(key).map(|s| s.request.clone())
    }

    /// Stops tracking `key` (cold: not asked for within its TTL).
    pub fn forget(&self, key: &str) {
        if self.shard(key).lock().remove(key).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::config::CacheSettings;
    use crate::proto::v1::GetRequest;

    fn queue(id: &str) -> Resolved {
        let catalog = Catalog::with_presets(&Default::default()).unwrap();
        let req = GetRequest { kind: "routing.queue".into(), id: id.into(), ..Default::default() };
        crate::policy::resolve(&req, "t", &catalog, &CacheSettings::default()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_hot_while_its_last_n_requests_fit_in_one_window() {
        let tracker = Tracker::new(3, 100);
        let r = queue("q1");
        let window = Duration::from_secs(10);
        tracker.record(&r);
        tracker.record(&r);
        let t = &tracker.tracked()[0];
        assert!(!t.hot(window, Instant::now()), "two requests are not three");
        tokio::time::advance(Duration::from_secs(4)).await;
        tracker.record(&r);
        let t = &tracker.tracked()[0];
        assert!(t.hot(window, Instant::now()));
        // The oldest of the three leaves the window after 10 s.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(t.hot(window, Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!t.hot(window, Instant::now()));
        // Two more requests push both of t = 0 out: hot again (4 s, now, now).
        tracker.record(&r);
        assert!(!tracker.tracked()[0].hot(window, Instant::now()));
        tracker.record(&r);
        assert!(tracker.tracked()[0].hot(window, Instant::now()));
    }

    /// The hot-path cost of recording (every Get records), per call: run
    /// in a release build, `cargo test --release -p cxcache-server --lib
    /// -- --ignored --nocapture records_cost`.
    #[test]
    #[ignore = "a measurement: run in a release build"]
    fn records_cost() {
        const N: u32 = 2_000_000;
        let per = |started: std::time::Instant, n: u32| started.elapsed().as_nanos() as f64 / n as f64;
        let tracker = Tracker::new(3, 10_000);
        let one = queue("q1");
        tracker.record(&one);
        let started = std::time::Instant::now();
        for _ in 0..N {
            tracker.record(std::hint::black_box(&one));
        }
        let same_key = per(started, N);
        let many: Vec<Resolved> = (0..1000).map(|i| queue(&format!("q{i}"))).collect();
        for r in &many {
            tracker.record(r);
        }
        let started = std::time::Instant::now();
        for i in 0..N {
            tracker.record(std::hint::black_box(&many[i as usize % many.len()]));
        }
        let thousand_keys = per(started, N);
        // Two threads on one key: one shard lock, contended.
        let tracker = std::sync::Arc::new(tracker);
        let started = std::time::Instant::now();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (tracker, one) = (tracker.clone(), one.clone());
                std::thread::spawn(move || {
                    for _ in 0..N / 2 {
                        tracker.record(std::hint::black_box(&one));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let contended = per(started, N);
        let off = Tracker::new(0, 10_000);
        let started = std::time::Instant::now();
        for _ in 0..N {
            off.record(std::hint::black_box(&one));
        }
        let disabled = per(started, N);
        println!(
            "Tracker::record: {same_key:.0} ns (one key), {thousand_keys:.0} ns (1000 keys), \
             {contended:.0} ns wall per call (2 threads, one key), {disabled:.1} ns (hot_requests = 0)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tracking_is_bounded_and_forgets() {
        let tracker = Tracker::new(2, 2);
        for id in ["a", "b", "c"] {
            tracker.record(&queue(id));
        }
        assert_eq!(tracker.len(), 2, "the third key is not tracked");
        assert!(tracker.request(&queue("c").key).is_none());
        tracker.forget(&queue("a").key);
        tracker.record(&queue("c"));
        assert_eq!(tracker.len(), 2);
        assert!(tracker.request(&queue("c").key).is_some());
        let off = Tracker::new(0, 10);
        off.record(&queue("a"));
        assert!(off.is_empty(), "N = 0 tracks nothing");
    }
}
