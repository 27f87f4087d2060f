//! A whole Redis Cluster going away: reads keep working (L1, then the
//! upstream without the fleet lease), nothing waits on a dead store for
//! long, and the store is used again once it is back.

use std::time::{Duration, Instant};

use cxcache::proto::v1::{GetRequest, Source};
use genesys_emulator::{queue_id, EmulatorConfig};
use harness::*;

async fn get_within(cx: &Instance, req: GetRequest, limit: Duration) -> Source {
    cx.get_within(req, limit).await.expect("Get during the outage").source()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_survive_a_redis_outage_and_the_store_is_used_again_after() {
    // A private cluster: this test kills every node.
    // While Redis is away the limiter spends a quarter of the budget at its
    // steady rate (no burst): a budget of 6000/min lets the twenty misses
    // below through in about a second.
    let mut s = Scenario::new("outage")
        .private_cluster()
        .emulator(EmulatorConfig { rate_limit: 6000, ..EmulatorConfig::default() })
        .configure(|c| {
            c.redis.command_timeout = Duration::from_millis(500);
            c.upstream.rate_limit.allowed = 6000;
        })
        .start()
        .await;
    let (cx, env, cluster) = (s.cx(), &s.env, s.cluster());
    assert_eq!(get_within(cx, get_queue(&queue_id(0)), Duration::from_secs(5)).await, Source::Upstream);

    for port in cluster.ports() {
        cluster.kill_node(port).unwrap();
    }
    // A value never seen: fetched upstream, served, kept in L1.
    let started = Instant::now();
    assert_eq!(get_within(cx, get_queue(&queue_id(1)), Duration::from_secs(10)).await, Source::Upstream);
    println!("first miss during the outage answered in {:?}", started.elapsed());
    assert_eq!(get_within(cx, get_queue(&queue_id(1)), Duration::from_secs(5)).await, Source::L1);
    // Later misses skip the dead store instead of waiting on it: twenty in a
    // row take far less than twenty command timeouts.
    let started = Instant::now();
    for n in 2..22 {
        assert_eq!(get_within(cx, get_queue(&queue_id(n)), Duration::from_secs(5)).await, Source::Upstream);
    }
    let twenty = started.elapsed();
    println!("20 misses during the outage in {twenty:?}");
    assert!(twenty < Duration::from_secs(5), "misses waited on the dead store: {twenty:?}");

    // An Invalidate cannot be promised fleet-wide now: UNAVAILABLE (retry),
    // yet this instance's own L1 copy is dropped at once.
    let logical1 = format!("{env}:routing.queue:{}:full", queue_id(1));
    let err = cx.client.clone().invalidate(invalidate(&[&logical1], &[], &[])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(get_within(cx, get_queue(&queue_id(1)), Duration::from_secs(5)).await, Source::Upstream);

    // Back up (empty: nothing was persisted): new values are stored again.
    for port in cluster.ports() {
        cluster.restart_node(port).unwrap();
    }
    assert!(cluster.wait_ok(Duration::from_secs(30)), "the cluster came back");
    let redis = s.redis().await;
    let logical = format!("{env}:routing.queue:{}:full", queue_id(30));
    let key = cxcache::keys::store_key(&logical);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got =
            tokio::time::timeout(Duration::from_secs(3), cx.client.clone().get(get_queue(&queue_id(30))))
                .await;
        println!(
            "after recovery: {:?}",
            got.map(|r| r.map(|r| r.into_inner().source()).map_err(|s| s.code()))
        );
        if keys_of_env(&redis, env).await.contains(&key) {
            break;
        }
        assert!(Instant::now() < deadline, "the store was not used again after Redis came back");
        // Evict the L1 copy so the next Get goes through the store path.
        let _ = cx.client.clone().invalidate(invalidate(&[&logical], &[], &[])).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stop().await;
}

/// Every Redis node killed while 16 callers read: no Get fails and none
/// waits on the dead store for long. While this instance cannot renew its
/// fleet membership its L1 does not serve (purges elsewhere might pass it
/// by), so the reads go upstream, coalesced per key, within the limiter's
/// fallback share: the budget here is large enough that quota is not what
/// is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_killed_under_load_fails_no_get_and_none_waits_a_second() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut s = Scenario::new("outage-load")
        .private_cluster()
        .alone()
        .emulator(EmulatorConfig { rate_limit: 1_000_000, ..EmulatorConfig::default() })
        .configure(|c| c.upstream.rate_limit.allowed = 1_000_000)
        .start()
        .await;
    let (cx, cluster) = (s.cx(), s.cluster());
    for q in 0..20 {
        cx.get(get_queue(&queue_id(q))).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..16)
        .map(|n| {
            let (mut client, stop) = (cx.client.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut gets, mut failed, mut slowest) = (0u64, 0u64, Duration::ZERO);
                let mut q = n;
                while !stop.load(Ordering::Relaxed) {
                    q = (q + 7) % 20;
                    let mut req = tonic::Request::new(get_queue(&queue_id(q)));
                    req.set_timeout(Duration::from_secs(5));
                    let started = Instant::now();
                    let ok = client.get(req).await.is_ok();
                    slowest = slowest.max(started.elapsed());
                    gets += 1;
                    failed += u64::from(!ok);
                }
                (gets, failed, slowest)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for port in cluster.ports() {
        cluster.kill_node(port).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(
        std::env::var("CXCACHE_FAULT_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5),
    ))
    .await;
    stop.store(true, Ordering::Relaxed);
    let (mut gets, mut failed, mut slowest) = (0, 0, Duration::ZERO);
    for r in readers {
        let (g, f, w) = r.await.unwrap();
        (gets, failed, slowest) = (gets + g, failed + f, slowest.max(w));
    }
    println!("all nodes killed under 16 callers: {gets} Gets, {failed} failed, slowest {slowest:?}");
    assert_eq!(failed, 0, "{failed} of {gets} Gets failed");
    assert!(slowest < Duration::from_secs(1), "a Get took {slowest:?}");
    for port in cluster.ports() {
        cluster.restart_node(port).unwrap();
    }
    s.stop().await;
}
