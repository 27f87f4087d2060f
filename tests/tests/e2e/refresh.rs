//! Issue 14 end to end: background work on spare budget only.
//!
//! - Refresh ahead: under a foreground miss load that needs the whole
//!   budget, no background call is made (the emulator logs each call's
//!   `x-cxcache-priority`); once the load stops, hot and pinned keys are
//!   refreshed ahead and no caller sees a miss on them over three TTL
//!   windows (short, exact TTLs). The same on a budget of a few calls (8
//!   per second), counted from `cxcache_upstream_calls_total` by priority,
//!   with stale-while-revalidate and XFetch wanting calls as well.
//! - The verifier: 5 % of the cached queues changed in the emulator without
//!   any change event are each found within the time the sample rate
//!   implies, purged (every instance and watcher hears it), counted, and
//!   reported by the staleness metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cxcache::config::{Credential, PinnedKey, Secret};
use cxcache::proto::v1::cache_client::CacheClient;
use cxcache::proto::v1::{watch_event, Source, WatchRequest};
use genesys_emulator::{queue_id, EmulatorConfig, RequestRecord};
use harness::*;
use serde_json::json;
use tonic::transport::Channel;

const TTL: Duration = Duration::from_secs(2);
const ANALYTICS_ROUTE: &str = "POST /api/v2/analytics/conversations/aggregates/query";

fn background(r: &RequestRecord) -> bool {
    r.priority.as_deref() == Some("background")
}

fn is_miss(source: Source) -> bool {
    !matches!(source, Source::L1 | Source::Store)
}

/// Every read of a caller reading each of `hot` every 100 ms until `stop`:
/// (unix ms, id, source).
type Reads = Arc<parking_lot::Mutex<Vec<(u64, String, Source)>>>;

fn read_hot_keys(
    client: CacheClient<Channel>,
    hot: Vec<String>,
    stop: Arc<AtomicBool>,
) -> (Reads, tokio::task::JoinHandle<()>) {
    let reads: Reads = Default::default();
    let log = reads.clone();
    let reader = tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            for id in &hot {
                let mut req = tonic::Request::new(get_queue(id));
                req.set_timeout(Duration::from_secs(10));
                if let Ok(resp) = client.clone().get(req).await {
                    log.lock().push((unix_ms(), id.clone(), resp.into_inner().source()));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (reads, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_keys_are_refreshed_ahead_on_spare_budget_only() {
    let client = (format!("ahead-{}", std::process::id()), "secret".to_string());
    let emu = EmulatorConfig {
        rate_limit: 20,
        window: Duration::from_secs(2),
        clients: vec![client.clone()],
        ..EmulatorConfig::default()
    };
    let pinned = queue_id(9);
    let pinned_cfg = pinned.clone();
    let mut s = Scenario::new("refresh-ahead")
        .cluster()
        .emulator(emu)
        .exact_ttl(TTL)
        .clients(4)
        .configure(move |c| {
            c.upstream.credentials = vec![Credential {
                client_id: client.0.clone(),
                client_secret: Secret::new(client.1.clone()),
            }];
            c.upstream.rate_limit.allowed = 20;
            c.upstream.rate_limit.window = Duration::from_secs(2);
            c.upstream.rate_limit.burst = 0;
            c.cache.early_refresh_beta = 0.0;
            let ahead = &mut c.cache.refresh_ahead;
            ahead.hot_requests = 3;
            ahead.interval = Duration::from_millis(200);
            ahead.lead = 0.3;
            ahead.pinned =
                vec![PinnedKey { kind: "routing.queue".into(), id: pinned_cfg.clone(), variant: "".into() }];
        })
        .start()
        .await;
    let emu = s.emu();
    let hot: Vec<String> = (0..5).map(queue_id).collect();
    let hot_paths: Vec<String> = hot.iter().map(|id| queue_path(id)).collect();
    for id in &hot {
        for _ in 0..3 {
            s.cx().get(get_queue(id)).await.expect("warm a hot key");
        }
    }

    // Callers keep reading the hot keys, every 100 ms each, throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, reader) = read_hot_keys(s.cx().client.clone(), hot.clone(), stop.clone());

    // Phase 1: distinct analytics misses from four clients, two TTL
    // windows long, more than the budget can serve.
    let load_start = unix_ms();
    let load_end_at = tokio::time::Instant::now() + TTL * 2;
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = s
        .clients
        .iter()
        .map(|c| {
            let (c, next, failed) = (c.clone(), next.clone(), failed.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < load_end_at {
                    let mut req = tonic::Request::new(distinct_analytics(
                        "ahead",
                        next.fetch_add(1, Ordering::Relaxed),
                    ));
                    req.set_timeout(Duration::from_secs(10));
                    if c.clone().get(req).await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let load_end = unix_ms();
    let log = emu.requests(10_000);
    let during: Vec<&RequestRecord> = log
        .iter()
        .filter(|r| (load_start + 200..load_end).contains(&r.at_ms) && r.route != "POST /oauth/token")
        .collect();
    // While the workers were still starting Gets: demand above the budget.
    let asking_until = load_start + (TTL * 2).as_millis() as u64;
    let foreground = during.iter().filter(|r| !background(r) && r.at_ms < asking_until).count();
    let bg = during.iter().filter(|r| background(r)).count();
    let budget = 20.0 * (asking_until - load_start - 200) as f64 / 2000.0;
    eprintln!(
        "phase 1: {foreground} foreground calls of a budget of {budget:.0} while asking, {bg} background \
         until {} ms, {} analytics Gets ({} failed)",
        load_end - load_start,
        next.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(
        bg,
        0,
        "background calls under a foreground load that needs the budget: {:?}",
        during.iter().filter(|r| background(r)).map(|r| (r.at_ms - load_start, &r.path)).collect::<Vec<_>>()
    );
    // Four callers always waiting for quota: the limiter's pace (95 %, a
    // token resting once nearly spent) over the first windows, not idle.
    assert!(foreground as f64 >= 0.6 * budget, "the load needed the budget: {foreground} of {budget:.0}");

    // Phase 2: the load stopped. Each hot key is refreshed ahead (at
    // background priority) soon...
    let refreshed_all = wait_until(Duration::from_secs(5), || {
        let log = emu.requests(10_000);
        hot_paths.iter().all(|p| log.iter().any(|r| r.at_ms >= load_end && background(r) && &r.path == p))
    })
    .await;
    assert!(refreshed_all, "every hot key refreshed ahead once the load stopped");
    // ...and from then on, over three TTL windows, no caller misses.
    let watch_start = unix_ms();
    tokio::time::sleep(TTL * 3).await;
    let watch_end = unix_ms();
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    let late_misses: Vec<_> = reads
        .lock()
        .iter()
        .filter(|(at, _, source)| *at >= watch_start && is_miss(*source))
        .cloned()
        .collect();
    assert!(late_misses.is_empty(), "callers missed hot keys after the load: {late_misses:?}");

    let log = emu.requests(10_000);
    let window: Vec<&RequestRecord> =
        log.iter().filter(|r| (watch_start..watch_end).contains(&r.at_ms)).collect();
    let mut per_path: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for r in &window {
        let e = per_path.entry(r.path.as_str()).or_default();
        if background(r) {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }
    eprintln!("phase 2 calls per path (foreground, background): {per_path:?}");
    for p in hot_paths.iter().chain(std::iter::once(&queue_path(&pinned))) {
        let (fg, bg) = per_path.get(p.as_str()).copied().unwrap_or_default();
        assert_eq!(fg, 0, "{p}: no foreground call over three windows");
        assert!(bg >= 2, "{p}: refreshed ahead in the windows ({bg})");
    }
    // The pinned key was never asked for, and is fresh.
    let pinned_get = s.cx().get(get_queue(&pinned)).await.expect("pinned key");
    assert!(!is_miss(pinned_get.source()), "the pinned key is stored fresh");
    let text = s.cx().metrics_text().await;
    assert!(
        text.contains(r#"cxcache_refresh_ahead_total{kind="routing.queue",outcome="refreshed"}"#),
        "{text}"
    );
    s.stop().await;
}

/// Upstream calls of `client_id` at `priority` so far, from `/metrics`.
fn calls_of(text: &str, client_id: &str, priority: &str) -> f64 {
    metric(text, &format!(r#"cxcache_upstream_calls_total{{client_id="{client_id}",priority="{priority}"}}"#))
}

/// The same property on a budget of a few calls (8 per 1 s window), with
/// every kind of background work wanting calls at once: refresh ahead,
/// XFetch and stale-while-revalidate. While four callers keep a
/// foreground miss load waiting for quota, the instance's background calls
/// are exactly 0, by its own metric and the emulator's log: a background
/// call is refused at once while a foreground caller of the instance
/// waits for quota or waited within the last second (`upstream::pressure`),
/// and over the measured interval callers always wait (the interval starts
/// once the load's first paced call shows the banked burst was spent, and
/// ends while workers still wait). Meanwhile the hot keys expire and are
/// served stale (the refresh they want is refused). Once the load stops,
/// they are refreshed ahead, and no caller misses them over three TTLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_small_budget_background_calls_wait_for_the_foreground_load() {
    const ALLOWED: u32 = 8;
    const WINDOW: Duration = Duration::from_secs(1);
    const MEASURED: Duration = Duration::from_secs(3);
    let client = (format!("small-{}", std::process::id()), "secret".to_string());
    let client_id = client.0.clone();
    let emu = EmulatorConfig {
        rate_limit: ALLOWED,
        window: WINDOW,
        clients: vec![client.clone()],
        ..EmulatorConfig::default()
    };
    let mut s = Scenario::new("small-budget")
        .cluster()
        .emulator(emu)
        .exact_ttl(TTL)
        .clients(4)
        .configure(move |c| {
            c.upstream.credentials = vec![Credential {
                client_id: client.0.clone(),
                client_secret: Secret::new(client.1.clone()),
            }];
            c.upstream.rate_limit.allowed = ALLOWED;
            c.upstream.rate_limit.window = WINDOW;
            c.upstream.rate_limit.burst = 0; // 2 calls
                                             // No rest when nearly spent: the emulator rounds the time to
                                             // reset up to a second, so in 1 s windows a rest would idle up
                                             // to half the budget. The limiter alone keeps every window
                                             // under the budget (at most burst - 1 + 6 = 7 calls).
            c.upstream.rate_limit.nearly_spent = 0;
            // XFetch wants a refresh within about 20 fetch times of expiry
            // (far more eager, on 6 calls a second, its refreshes of keys
            // just refreshed would starve refresh ahead); an expired entry
            // is served stale for one more TTL while it is refreshed in the
            // background.
            c.cache.early_refresh_beta = 20.0;
            c.cache.stale_while_revalidate = TTL;
            let ahead = &mut c.cache.refresh_ahead;
            ahead.hot_requests = 3;
            ahead.interval = Duration::from_millis(200);
            ahead.lead = 0.3;
        })
        .start()
        .await;
    let emu = s.emu();
    let hot: Vec<String> = (20..23).map(queue_id).collect();
    let hot_paths: Vec<String> = hot.iter().map(|id| queue_path(id)).collect();
    for id in &hot {
        for _ in 0..3 {
            s.cx().get(get_queue(id)).await.expect("warm a hot key");
        }
    }

    // Callers read the hot keys every 100 ms throughout; every answer's
    // source is kept.
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, reader) = read_hot_keys(s.cx().client.clone(), hot.clone(), stop.clone());

    // Phase 1: distinct analytics misses from four callers, more than the
    // budget serves.
    let load_start = unix_ms();
    let load_over = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = s
        .clients
        .iter()
        .map(|c| {
            let (c, next, load_over) = (c.clone(), next.clone(), load_over.clone());
            tokio::spawn(async move {
                while !load_over.load(Ordering::Relaxed) {
                    let mut req = tonic::Request::new(distinct_analytics(
                        "small",
                        next.fetch_add(1, Ordering::Relaxed),
                    ));
                    req.set_timeout(Duration::from_secs(10));
                    let _ = c.clone().get(req).await;
                }
            })
        })
        .collect();
    let analytics = |from: u64| {
        emu.requests(10_000).iter().filter(|r| r.at_ms >= from && r.route == ANALYTICS_ROUTE).count()
    };
    // The burst (2 calls) is spent once a third call went out: from then
    // on, callers wait for their turn.
    assert!(wait_until(Duration::from_secs(5), || analytics(load_start) >= 3).await, "the load started");
    let before = s.cx().metrics_text().await;
    let from = unix_ms();
    tokio::time::sleep(MEASURED).await;
    let after = s.cx().metrics_text().await;
    let to = unix_ms();
    load_over.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let load_end = unix_ms();

    let fg = calls_of(&after, &client_id, "foreground") - calls_of(&before, &client_id, "foreground");
    let bg = calls_of(&after, &client_id, "background") - calls_of(&before, &client_id, "background");
    let log = emu.requests(10_000);
    let measured: Vec<&RequestRecord> =
        log.iter().filter(|r| (from..to).contains(&r.at_ms) && r.route != "POST /oauth/token").collect();
    let logged_bg: Vec<_> =
        measured.iter().filter(|r| background(r)).map(|r| (r.at_ms - from, &r.path)).collect();
    // The limiter paces 8 per 1 s as 6 per window (8 less the burst of 2).
    let paced = 6.0 * (to - from) as f64 / WINDOW.as_millis() as f64;
    let stale_reads = reads
        .lock()
        .iter()
        .filter(|(at, _, source)| (from..to).contains(at) && *source == Source::Stale)
        .count();
    eprintln!(
        "small budget, {} ms measured: {fg} foreground calls of {paced:.0} paced ({} logged), {bg} background \
         ({} logged); {stale_reads} hot reads served stale meanwhile",
        to - from,
        measured.len() - logged_bg.len(),
        logged_bg.len()
    );
    assert_eq!(bg, 0.0, "background calls while callers waited for quota (metric)");
    assert!(logged_bg.is_empty(), "background calls in the emulator's log: {logged_bg:?}");
    assert!(fg >= 0.8 * paced, "the foreground load used the budget: {fg} of {paced:.0}");
    assert!(measured.iter().all(|r| r.status != 429), "no call over the budget");
    assert!(stale_reads > 0, "the hot keys expired meanwhile: stale-while-revalidate wanted calls");

    // Phase 2: the load stopped. Each hot key is refreshed ahead soon...
    let refreshed_all = wait_until(Duration::from_secs(5), || {
        let log = emu.requests(10_000);
        hot_paths.iter().all(|p| log.iter().any(|r| r.at_ms >= load_end && background(r) && &r.path == p))
    })
    .await;
    assert!(refreshed_all, "every hot key refreshed ahead once the load stopped");
    // ...and over three TTL windows from then, no caller misses one.
    let watch_start = unix_ms();
    tokio::time::sleep(TTL * 3).await;
    let watch_end = unix_ms();
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    let watched: Vec<_> = reads.lock().iter().filter(|(at, ..)| *at >= watch_start).cloned().collect();
    let missed: Vec<_> = watched.iter().filter(|(_, _, source)| is_miss(*source)).collect();
    assert!(missed.is_empty(), "callers missed hot keys after the load: {missed:?}");
    assert!(watched.len() >= 3 * 20, "the callers kept reading: {} reads", watched.len());
    let log = emu.requests(10_000);
    for p in &hot_paths {
        let calls: Vec<_> =
            log.iter().filter(|r| (watch_start..watch_end).contains(&r.at_ms) && &r.path == p).collect();
        eprintln!("{p}: {} background calls over three TTLs, {} reads, no miss", calls.len(), watched.len());
        assert!(calls.iter().all(|r| background(r)), "{p}: no foreground call over three TTLs");
        assert!(calls.len() >= 2, "{p}: refreshed ahead in the windows ({})", calls.len());
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verifier_finds_purges_and_counts_every_silent_change() {
    const QUEUES: usize = 40;
    const SAMPLE: usize = 5;
    const INTERVAL: Duration = Duration::from_millis(250);
    // Budget to spare for the sample rate (20 calls/s): 3000 a minute.
    let emu =
        EmulatorConfig { rate_limit: 3000, window: Duration::from_secs(60), ..EmulatorConfig::default() };
    let mut s = Scenario::new("verifier")
        .cluster()
        .alone()
        .emulator(emu)
        .configure(|c| {
            c.upstream.rate_limit.allowed = 3000;
            c.cache.verify.interval = INTERVAL;
            c.cache.verify.sample = SAMPLE;
        })
        .start()
        .await;
    // A second instance, configured alike: the fleet verifies through one
    // of them at a time (a lease), and both hear the purges.
    let other = s.start_instance().await;
    let ids: Vec<String> = (0..QUEUES).map(queue_id).collect();
    for id in &ids {
        s.cx().get(get_queue(id)).await.expect("cache a queue");
        other.get(get_queue(id)).await.expect("and on the other instance");
    }
    let before = s.cx().metrics_text().await;
    let stale_before = metric(&before, r#"cxcache_verify_stale_total{kind="routing.queue"}"#);
    // 5 %: two queues change upstream, silently.
    let changed = [ids[7].clone(), ids[23].clone()];
    let keys: Vec<String> = changed.iter().map(|id| format!("{}:routing.queue:{id}:full", s.env)).collect();
    let mut watch = other.watch(WatchRequest { keys: keys.clone(), ..Default::default() }).await;
    for id in &changed {
        assert!(s.emu().mutate_queue_silently(id, json!({"description": "changed without an event"})));
    }
    let started = tokio::time::Instant::now();
    // One pass over every entry takes ceil(entries / sample) rounds.
    let implied = INTERVAL * QUEUES.div_ceil(SAMPLE) as u32;
    let limit = implied * 2 + Duration::from_secs(2);
    let mut found: BTreeMap<String, Duration> = BTreeMap::new();
    while found.len() < keys.len() {
        let left = limit.saturating_sub(started.elapsed());
        let Some(ev) = next_event(&mut watch, left).await else {
            panic!("INVALIDATED for every changed key within {limit:?}; found {found:?}");
        };
        if ev.r#type() == watch_event::Type::Invalidated && keys.contains(&ev.key) {
            found.entry(ev.key.clone()).or_insert(started.elapsed());
        }
    }
    eprintln!("found both silent changes after {found:?}; one pass takes {implied:?}");
    for id in &changed {
        let resp = other.get(get_queue(id)).await.expect("refetched");
        assert_eq!(resp.source(), Source::Upstream, "the other instance's copy is gone too");
        assert!(String::from_utf8_lossy(&resp.value).contains("changed without an event"));
    }
    // Let one more pass run: nothing else is stale.
    tokio::time::sleep(implied + INTERVAL).await;
    let text = s.cx().metrics_text().await;
    let stale = metric(&text, r#"cxcache_verify_stale_total{kind="routing.queue"}"#) - stale_before;
    let sampled = metric(&text, r#"cxcache_verify_sampled_total{kind="routing.queue"}"#);
    let aged = metric(&text, r#"cxcache_verify_stale_age_seconds_count{kind="routing.queue"}"#);
    eprintln!("verifier: {sampled} sampled, {stale} stale");
    assert_eq!(stale, 2.0, "exactly the two changed queues counted stale");
    assert!(sampled >= QUEUES as f64, "every entry sampled at least once: {sampled}");
    assert!(aged >= 2.0, "their ages are in the histogram");
    // The rate is the fleet's: over 2 s, one verifier's rounds at most
    // (two side by side would sample about twice as many).
    let window = Duration::from_secs(2);
    let at = |text: &str| metric(text, r#"cxcache_verify_sampled_total{kind="routing.queue"}"#);
    let from = at(&s.cx().metrics_text().await);
    tokio::time::sleep(window).await;
    let sampled_in_window = at(&s.cx().metrics_text().await) - from;
    let one_verifier = (SAMPLE as u32 * (window.as_millis() / INTERVAL.as_millis() + 2) as u32) as f64;
    eprintln!(
        "verifier fleet: {sampled_in_window} sampled in {window:?}; one verifier at most {one_verifier}"
    );
    assert!(sampled_in_window > 0.0, "the fleet verifies");
    assert!(sampled_in_window <= one_verifier, "{sampled_in_window} sampled: more than one verifier ran");
    other.stop().await;
    s.stop().await;
}

/// The value of one series in a Prometheus text exposition (0 if absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}
