//! One fetch per miss across instances, L1, and freshness without
//! stampedes: stale-while-revalidate, stale-if-error, 304 revalidation,
//! lease takeover when the fetching instance dies.

use std::time::{Duration, Instant};

use cxcache::proto::v1::{Freshness, GetRequest, Source};
use genesys_emulator::{queue_id, Fault};
use harness::*;
use tonic::Code;

const QUEUE_ROUTE: &str = "GET /api/v2/routing/queues/{id}";

/// An embedded-store instance whose config entries are fresh for `ttl_ms`
/// exactly (no jitter), so a test can step past expiry.
fn short_ttl(name: &str, ttl_ms: u64) -> Scenario {
    Scenario::new(name).exact_ttl(Duration::from_millis(ttl_ms))
}

/// Values stale after 300 ms, then served stale for 30 s when the upstream
/// fails (no stale-while-revalidate): the hung-upstream scenarios.
fn stale_on_failure(name: &str) -> Scenario {
    short_ttl(name, 300).configure(|c| {
        c.cache.stale_while_revalidate = Duration::ZERO;
        c.cache.max_staleness = Duration::from_secs(30);
    })
}

fn age_ms(got: &cxcache::proto::v1::GetResponse) -> i64 {
    let age = got.age.unwrap_or_default();
    age.seconds * 1000 + i64::from(age.nanos / 1_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_gets_for_one_cold_key_over_three_instances_make_one_call() {
    // Several connections per instance, 1000 calls in all, started together.
    let mut s = Scenario::new("stampede").cluster().instances(3).clients(4).start().await;
    let (clients, emu) = (&s.clients, s.emu());
    let id = queue_id(11);
    emu.inject_fault(slow(queue_path(&id), 400));
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(1000));
    let mut calls = Vec::new();
    for i in 0..1000 {
        let mut client = clients[i % clients.len()].clone();
        let (barrier, id) = (barrier.clone(), id.clone());
        calls.push(tokio::spawn(async move {
            barrier.wait().await;
            client.get(get_queue(&id)).await.map(|r| r.into_inner())
        }));
    }
    let mut values = std::collections::HashSet::new();
    let mut sources = std::collections::HashMap::new();
    for c in calls {
        let r = c.await.unwrap().expect("get");
        values.insert(r.value.clone());
        *sources.entry(r.source()).or_insert(0) += 1;
    }
    assert_eq!(emu.counters().route(QUEUE_ROUTE), 1, "one upstream call; sources {sources:?}");
    assert_eq!(values.len(), 1, "all 1000 got the same bytes");
    assert_eq!(sources.get(&Source::Upstream), Some(&1), "{sources:?}");
    println!("stampede sources: {sources:?}");
    s.stop().await;
}

/// A fetch slower than the lease TTL keeps its lease renewed: an instance
/// asking meanwhile waits for it instead of fetching again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_slower_than_the_lease_keeps_it() {
    let mut s = Scenario::new("renew")
        .cluster()
        .instances(2)
        .configure(|c| c.cache.lease_ttl = Duration::from_millis(600))
        .start()
        .await;
    let (a, b, emu) = (&s.instances[0], &s.instances[1], s.emu());
    let id = queue_id(17);
    emu.inject_fault(slow(queue_path(&id), 2500));
    let mut first = a.new_client().await;
    let req = get_queue(&id);
    let first = tokio::spawn(async move { first.get(req).await.map(|r| r.into_inner()) });
    // Twice the lease TTL in, the fetch still running.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = b.get(get_queue(&id)).await.expect("second Get");
    let first = first.await.unwrap().expect("first Get");
    assert_eq!(first.source(), Source::Upstream);
    assert_eq!(second.source(), Source::Coalesced, "B waited for A's fetch");
    assert_eq!(emu.counters().route(QUEUE_ROUTE), 1, "one upstream call");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_across_expiry_costs_one_call_per_ttl_and_nobody_waits() {
    let id = queue_id(12);
    let mut s = short_ttl("hot", 500)
        .configure(|c| {
            c.cache.stale_while_revalidate = Duration::from_secs(5);
            c.cache.early_refresh_beta = 0.0;
        })
        .start()
        .await;
    let (cx, emu) = (s.cx(), s.emu());
    cx.get(get_queue(&id)).await.unwrap();
    // From now on every upstream fetch takes 600 ms: a caller that waited
    // for one would show it.
    emu.inject_fault(slow(queue_path(&id), 600));
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut stale = 0;
    while started.elapsed() < Duration::from_millis(2300) {
        let t = Instant::now();
        let r = cx.get(get_queue(&id)).await.unwrap();
        worst = worst.max(t.elapsed());
        assert!(matches!(r.source(), Source::L1 | Source::Store | Source::Stale), "{:?}", r.source());
        stale += usize::from(r.source() == Source::Stale);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let calls = emu.counters().route(QUEUE_ROUTE);
    // 2.3 s of 500 ms windows (plus the 600 ms refresh each): 1 + at most 4.
    assert!((2..=5).contains(&calls), "upstream calls {calls}");
    assert!(stale > 0, "expiry was crossed");
    assert!(worst < Duration::from_millis(400), "a caller waited {worst:?}");
    println!("hot key: {calls} upstream calls in 2.3 s, worst latency {worst:?}, {stale} stale answers");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_within_max_staleness_then_the_error() {
    let mut s = short_ttl("sie", 300)
        .configure(|c| {
            c.cache.max_staleness = Duration::from_millis(1200);
            c.upstream.retry.max_attempts = 1;
        })
        .start()
        .await;
    let (cx, emu) = (s.cx(), s.emu());
    let id = queue_id(13);
    let first = cx.get(get_queue(&id)).await.unwrap();
    emu.inject_fault(failing("/api/", 503));
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A caller whose max_age the stored value exceeds gets the error, not it.
    let strict = GetRequest {
        freshness: Some(Freshness {
            max_age: Some(prost_types::Duration { seconds: 0, nanos: 100_000_000 }),
            ..Default::default()
        }),
        ..get_queue(&id)
    };
    assert_eq!(cx.get(strict).await.unwrap_err().code(), Code::Unavailable, "older than max_age");
    let stale = cx.get(get_queue(&id)).await.unwrap();
    assert_eq!(stale.source(), Source::Stale);
    assert_eq!(stale.value, first.value);
    assert!(age_ms(&stale) >= 400, "age {} ms", age_ms(&stale));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let err = cx.get(get_queue(&id)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "beyond max staleness: {err:?}");
    s.stop().await;
}

/// The emulator process gone altogether (connection refused): the stored
/// value is served stale with its age; past max staleness, UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_serves_stale_then_unavailable() {
    let mut s = short_ttl("down", 300)
        .configure(|c| c.cache.max_staleness = Duration::from_millis(1500))
        .start()
        .await;
    let cx = s.cx();
    let id = queue_id(19);
    let first = cx.get(get_queue(&id)).await.unwrap();
    s.emu().clone().shutdown().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let within = |limit: Duration| cx.get_within(get_queue(&id), limit);
    let stale = within(Duration::from_secs(3)).await.expect("stale while the upstream is down");
    assert_eq!(stale.source(), Source::Stale);
    assert_eq!(stale.value, first.value);
    assert!(age_ms(&stale) >= 400, "age {} ms", age_ms(&stale));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = within(Duration::from_secs(3)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "beyond max staleness: {err:?}");
    s.stop().await;
}

/// A hung upstream does not eat the caller's deadline when a stale value
/// exists: the value is served stale well within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_serves_stale_within_the_deadline() {
    let mut s = stale_on_failure("hung").start().await;
    let (cx, emu) = (s.cx(), s.emu());
    let id = queue_id(18);
    let first = cx.get(get_queue(&id)).await.unwrap();
    emu.inject_fault(held(queue_path(&id)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t = Instant::now();
    let got =
        cx.get_within(get_queue(&id), Duration::from_secs(2)).await.expect("stale, not DEADLINE_EXCEEDED");
    assert_eq!(got.source(), Source::Stale);
    assert_eq!(got.value, first.value);
    assert!(t.elapsed() < Duration::from_secs(2), "answered in {:?}", t.elapsed());
    assert_eq!(emu.held_count(), 1, "the refresh was under way upstream");
    emu.release_held();
    emu.clear_faults();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_revalidation_extends_the_ttl_without_a_body() {
    let mut s = short_ttl("etag", 300).start().await;
    let (cx, emu) = (s.cx(), s.emu());
    let id = queue_id(14);
    let first = cx.get(get_queue(&id)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let again = cx.get(get_queue(&id)).await.unwrap();
    assert_eq!(again.source(), Source::Revalidated);
    assert_eq!(again.value, first.value);
    assert_eq!(emu.counters().not_modified, 1, "the emulator answered 304");
    assert!(
        again.ttl_remaining.unwrap().nanos > 0 || again.ttl_remaining.unwrap().seconds > 0,
        "TTL extended"
    );
    assert_ne!(cx.get(get_queue(&id)).await.unwrap().source(), Source::Upstream, "served from cache again");
    // After a real change the body is fetched again.
    emu.mutate_queue(&id, serde_json::json!({"description": "changed"}));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let changed = cx.get(get_queue(&id)).await.unwrap();
    assert_eq!(changed.source(), Source::Upstream);
    assert_ne!(changed.value, first.value);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_serves_hot_keys_and_stays_within_its_byte_bound() {
    let mut s = Scenario::new("l1")
        .configure(|c| {
            c.cache.l1.max_bytes = 1 << 20;
            // Large values from a kind keyed by body: 40 read-only actions.
            let actions: serde_json::Map<String, serde_json::Value> =
                (0..40).map(|n| (format!("action-{n}"), serde_json::json!({ "cacheable": true }))).collect();
            allow_actions(c, actions.into());
        })
        .start()
        .await;
    let cx = s.cx();
    let id = queue_id(15);
    cx.get(get_queue(&id)).await.unwrap();
    assert_eq!(cx.get(get_queue(&id)).await.unwrap().source(), Source::Store);
    assert_eq!(cx.get(get_queue(&id)).await.unwrap().source(), Source::L1);
    // 40 values of ~60 KB each: 2.4 MB through a 1 MiB L1.
    let pad = "x".repeat(60_000);
    for n in 0..40 {
        let req = GetRequest {
            kind: "integrations.action.execute".into(),
            id: format!("action-{n}"),
            body_json: serde_json::json!({ "pad": pad, "n": n }).to_string(),
            ..Default::default()
        };
        cx.get(req.clone()).await.unwrap();
        cx.get(req).await.unwrap(); // second read fills L1
    }
    let bytes = cx.running.as_ref().unwrap().l1_bytes();
    assert!(bytes > 0 && bytes <= 1 << 20, "L1 holds {bytes} bytes");
    s.stop().await;
}

/// The instance holding the lease dies mid-fetch (the emulator holds its
/// response open): another instance takes over after the lease timeout, and
/// no waiter hangs past its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lease_holder_is_taken_over() {
    let s = Scenario::new("takeover")
        .cluster()
        .instances(0)
        .configure(|c| c.cache.lease_ttl = Duration::from_secs(3))
        .start()
        .await;
    let emu = s.emu();
    let id = queue_id(16);
    // Only the first answer is held (the dead holder's).
    emu.inject_fault(Fault { count: 1, ..held(queue_path(&id)) });
    let envs = [
        // Long enough that the quick waiter below surely finds it held.
        ("CXCACHE_CACHE__LEASE_TTL", "3s"),
        ("CXCACHE_CACHE__L1__ENABLED", "false"),
    ];
    let mut holder = s.process(&[], &envs);
    let mut holder_client = connect(holder.grpc_addr).await;
    let req = get_queue(&id);
    let pending = tokio::spawn(async move { holder_client.get(req).await });
    assert!(
        wait_until(Duration::from_secs(10), || emu.held_count() == 1).await,
        "the holder's fetch is held"
    );
    holder.kill();
    let _ = pending.await;

    let other = s.start_instance().await;
    // A waiter with a short deadline gives up in time rather than hanging.
    let t = Instant::now();
    let err = other.get_within(get_queue(&id), Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "gave up in {:?}", t.elapsed());
    assert!(emu.counters().route(QUEUE_ROUTE) == 0, "the quick waiter did not fetch itself");
    // A patient one gets the value once the dead holder's lease lapses.
    let got = other.get_within(get_queue(&id), Duration::from_secs(10)).await.expect("taken over");
    assert!(matches!(got.source(), Source::Upstream | Source::Coalesced), "{:?}", got.source());
    // The emulator counts a call when it answers: the dead holder's call
    // never was (its client is gone); the takeover is the one answered call.
    assert_eq!(emu.counters().route(QUEUE_ROUTE), 1, "the takeover");
    emu.release_held();
    other.stop().await;
}

/// The data-action door has a deadline of its own (`data_action.timeout`):
/// a hung upstream is answered stale within it, as a gRPC Get with a
/// deadline is, instead of holding the caller for the upstream's timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_action_door_answers_a_hung_upstream_stale_within_its_timeout() {
    let mut s = stale_on_failure("door-hung")
        .configure(|c| c.data_action.timeout = Duration::from_secs(2))
        .start()
        .await;
    let (cx, emu) = (s.cx(), s.emu());
    let url = format!("http://{}/data-action", cx.http_addr);
    let id = queue_id(19);
    let body = serde_json::json!({"kind": "routing.queue", "id": id});
    let http = reqwest::Client::new();
    assert_eq!(http.post(&url).json(&body).send().await.unwrap().status(), 200);
    emu.inject_fault(held(queue_path(&id)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t = Instant::now();
    let r = http.post(&url).json(&body).timeout(Duration::from_secs(20)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cxcache-source"], "STALE");
    assert!(t.elapsed() < Duration::from_secs(2), "answered in {:?}", t.elapsed());
    emu.release_held();
    emu.clear_faults();
    s.stop().await;
}
