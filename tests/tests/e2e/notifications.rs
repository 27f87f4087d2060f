//! Hearing changes from the platform: Notification API channels (emulated)
//! drive purges on every instance and Watch events, one listener per fleet,
//! channel expiry, closing warnings, dropped sockets, takeover after a kill,
//! and topics spread over channels within the platform's limits.
//!
//! The EventBridge door (forged → 401, malformed → 400, replay ignored) goes
//! through the same topic mapping; its test is
//! `invalidation::webhook_and_eventbridge_doors_verify_dedupe_and_purge`.

use std::time::{Duration, Instant};

use cxcache::config::Config;
use cxcache::proto::v1::{watch_event::Type, InvalidateRequest, WatchEvent, WatchRequest};
use futures::StreamExt;
use genesys_emulator::{queue_id, EmulatorConfig, EmulatorHandle};
use harness::*;
use tonic::Streaming;

/// How long a killed instance's fleet registry entry outlives it (the
/// server's `bus::FLEET_TTL`).
const FLEET_ENTRY_TTL: Duration = Duration::from_secs(2);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn emu_config() -> EmulatorConfig {
    EmulatorConfig {
        heartbeat_interval: ms(200),
        closing_grace: ms(500),
        rate_limit: 100_000,
        ..EmulatorConfig::default()
    }
}

/// Instances that listen to the (emulated) Notification API, at test speed.
fn notifying(c: &mut Config) {
    c.upstream.rate_limit.allowed = 100_000;
    let n = &mut c.notifications;
    n.enabled = Some(true);
    n.lease_ttl = ms(1000);
    n.reconcile_interval = ms(200);
    n.heartbeat_timeout = ms(1000);
    n.backoff_base = ms(50);
    n.backoff_cap = ms(500);
}

/// A scenario of instances listening in front of an emulator of `emu`.
fn listening(name: &str, emu: EmulatorConfig) -> Scenario {
    Scenario::new(name).emulator(emu).configure(notifying)
}

fn audit_topic(id: &str) -> String {
    format!("v2.audits.entitytype.QUEUE.entityid.{id}")
}

/// Whether `topic` is subscribed on a channel with a connected socket.
fn covered(emu: &EmulatorHandle, topic: &str) -> bool {
    emu.notification_channels().iter().any(|c| c.sockets > 0 && c.topics.iter().any(|t| t == topic))
}

async fn wait_covered(emu: &EmulatorHandle, topic: &str) {
    assert!(wait_until(Duration::from_secs(5), || covered(emu, topic)).await, "{topic} never subscribed");
}

/// Waits until one of `insts` is the fleet's listener. Its takeover purge
/// is done by then, so values cached afterwards stay cached.
async fn wait_listener(insts: &[&Instance]) {
    let leader =
        || insts.iter().any(|i| i.running.as_ref().unwrap().notifications().is_some_and(|s| s.leader));
    assert!(wait_until(Duration::from_secs(10), leader).await, "no listener elected");
}

/// Whether an INVALIDATED event for `key` comes within `limit` (others skipped).
async fn invalidated(stream: &mut Streaming<WatchEvent>, key: &str, limit: Duration) -> bool {
    wait_event(stream, Type::Invalidated, key, limit).await.is_some()
}

/// The queue's `description`, as `inst` serves it.
async fn description(inst: &Instance, id: &str) -> String {
    let got = inst.get(get_queue(id)).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&got.value).unwrap();
    v["description"].as_str().unwrap_or_default().to_string()
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_mutation_purges_every_instance_and_reaches_watchers() {
    let mut s = listening("notify", emu_config()).cluster().instances(2).start().await;
    let (a, b, emu) = (&s.instances[0], &s.instances[1], s.emu());
    wait_listener(&[a, b]).await;
    let id = queue_id(3);
    let topic = audit_topic(&id);
    let key = a.get(get_queue(&id)).await.unwrap().key;
    let mut stream = b.watch(WatchRequest { keys: vec![key.clone()], ..Default::default() }).await;

    let mut delays = Vec::new();
    for round in 1..=30 {
        // Both instances hold the value (B in L1 too).
        a.get(get_queue(&id)).await.unwrap();
        b.get(get_queue(&id)).await.unwrap();
        wait_covered(emu, &topic).await;
        let marker = format!("round-{round}");
        let sent = Instant::now();
        assert!(emu.mutate_queue(&id, serde_json::json!({ "description": marker })));
        assert!(invalidated(&mut stream, &key, Duration::from_secs(3)).await, "round {round}: no event on B");
        delays.push(sent.elapsed());
        assert_eq!(description(a, &id).await, marker, "A serves the new value");
        assert_eq!(description(b, &id).await, marker, "B serves the new value");
    }
    delays.sort();
    let (p50, p99) = (percentile(&delays, 50), percentile(&delays, 99));
    println!(
        "mutation -> Watch event on another instance: p50 {p50:?} p99 {p99:?} over {} rounds",
        delays.len()
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
    let leaders =
        [a, b].iter().filter(|i| i.running.as_ref().unwrap().notifications().unwrap().leader).count();
    assert_eq!(leaders, 1, "one listener per fleet");
    assert_eq!(emu.notification_channels().len(), 1, "one channel for one topic");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_channel_is_replaced_without_losing_events() {
    let mut s = listening("expiry", EmulatorConfig { channel_ttl: ms(1500), ..emu_config() })
        .configure(|c| c.notifications.renew_before = ms(600))
        .start()
        .await;
    let (cx, emu) = (s.cx(), s.emu().clone());
    wait_listener(&[cx]).await;
    let mut stream =
        cx.watch(WatchRequest { kinds: vec!["routing.queue".into()], ..Default::default() }).await;
    let mut channels_seen = std::collections::BTreeSet::new();
    let started = Instant::now();
    let mut round = 0;
    // Mutations keep coming across at least three channel lifetimes.
    while started.elapsed() < Duration::from_millis(5000) {
        round += 1;
        let id = queue_id(round % 4);
        let key = cx.get(get_queue(&id)).await.unwrap().key;
        wait_covered(&emu, &audit_topic(&id)).await;
        channels_seen.extend(emu.notification_channels().into_iter().map(|c| c.id));
        let marker = format!("round-{round}");
        assert!(emu.mutate_queue(&id, serde_json::json!({ "description": marker })));
        assert!(invalidated(&mut stream, &key, Duration::from_secs(2)).await, "round {round}: event lost");
        assert_eq!(description(cx, &id).await, marker);
        tokio::time::sleep(ms(30)).await;
    }
    let status = cx.running.as_ref().unwrap().notifications().unwrap();
    println!("{round} mutations over {} channels; status {status:?}", channels_seen.len());
    assert!(channels_seen.len() >= 3, "channels were replaced: {channels_seen:?}");
    assert_eq!(status.gap_purges, 0, "replacement left no gap");
    // Replaced channels were unsubscribed: only the live one carries topics.
    let carrying = || emu.notification_channels().iter().filter(|c| !c.topics.is_empty()).count();
    assert!(
        wait_until(Duration::from_secs(3), || carrying() == 1).await,
        "{:?}",
        emu.notification_channels()
    );
    s.stop_instances().await;
    // A listener that stops unsubscribes what it held.
    assert_eq!(carrying(), 0, "{:?}", emu.notification_channels());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_warnings_and_dropped_sockets_leave_nothing_stale() {
    let mut s = listening("closing", emu_config()).start().await;
    let (cx, emu) = (s.cx(), s.emu());
    wait_listener(&[cx]).await;
    let status = || cx.running.as_ref().unwrap().notifications().unwrap();
    let id = queue_id(1);
    let topic = audit_topic(&id);
    let key = cx.get(get_queue(&id)).await.unwrap().key;
    let mut stream = cx.watch(WatchRequest { keys: vec![key.clone()], ..Default::default() }).await;
    wait_covered(emu, &topic).await;

    // Heartbeats keep an idle socket alive past the heartbeat timeout.
    tokio::time::sleep(ms(1500)).await;
    assert_eq!(status().gap_purges, 0, "no spurious reconnect: {:?}", status());

    // Closing warning: a second socket opens before the warned one is let
    // go; past the grace the channel still has its (new) socket.
    let channel = emu.notification_channels()[0].id.clone();
    assert!(emu.warn_channel_closing(&channel));
    tokio::time::sleep(ms(700)).await;
    assert_eq!(emu.notification_channels()[0].sockets, 1, "reconnected within the grace");
    assert!(emu.mutate_queue(&id, serde_json::json!({ "description": "after-closing" })));
    assert!(invalidated(&mut stream, &key, Duration::from_secs(2)).await);
    assert_eq!(description(cx, &id).await, "after-closing");
    assert_eq!(status().gap_purges, 0, "the switch left no gap");

    // Unexpected disconnect: the event sent meanwhile is lost, but the
    // reconnect purges the channel's topics, so nothing stale is served.
    wait_covered(emu, &topic).await;
    let gaps = status().gap_purges;
    assert!(emu.drop_channel_sockets(&channel));
    assert!(emu.mutate_queue(&id, serde_json::json!({ "description": "during-gap" })));
    assert!(invalidated(&mut stream, &key, Duration::from_secs(3)).await, "gap purge reaches watchers");
    assert!(status().gap_purges > gaps);
    assert_eq!(description(cx, &id).await, "during-gap");
    wait_covered(emu, &topic).await;
    assert!(emu.mutate_queue(&id, serde_json::json!({ "description": "after-reconnect" })));
    assert!(invalidated(&mut stream, &key, Duration::from_secs(2)).await);
    assert_eq!(description(cx, &id).await, "after-reconnect");

    // The listener's state is on /metrics (its gauges are set from the
    // scraped instance's listener, so other instances do not move them).
    let text = cx.metrics_text().await;
    let metric = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.split(' ').next() == Some(name));
        line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(metric("cxcache_notifications_leader"), 1.0);
    assert_eq!(metric("cxcache_notifications_channels_connected"), 1.0);
    assert_eq!(metric("cxcache_notifications_topics"), 1.0);
    // Heard: after-closing and after-reconnect (the one during the gap was lost).
    assert!(metric("cxcache_notifications_events_total") >= 2.0, "{text}");
    assert!(metric("cxcache_notifications_gap_purges_total") >= 1.0, "{text}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_listener_hands_over_within_the_lease_timeout() {
    let s = listening("takeover", emu_config()).cluster().instances(0).start().await;
    let emu = s.emu();
    let lease = ms(1000);
    let mut listener = s.process(
        &[],
        &[
            ("CXCACHE_NOTIFICATIONS__ENABLED", "true"),
            ("CXCACHE_NOTIFICATIONS__LEASE_TTL", "1s"),
            ("CXCACHE_NOTIFICATIONS__RECONCILE_INTERVAL", "200ms"),
            ("CXCACHE_UPSTREAM__RATE_LIMIT__ALLOWED", "100000"),
        ],
    );
    // The process holds the lease before the in-process instance starts.
    let p = connect(listener.grpc_addr).await;
    let (q1, q2, q3) = (queue_id(1), queue_id(2), queue_id(3));
    // Its takeover purge may drop a value cached just before it: fetch
    // again until the topic is covered.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        p.clone().get(get_queue(&q1)).await.unwrap();
        if wait_until(Duration::from_secs(1), || covered(emu, &audit_topic(&q1))).await {
            break;
        }
        assert!(Instant::now() < deadline, "{} never subscribed", audit_topic(&q1));
    }
    let b = s.start_instance().await;
    let b_status = || b.running.as_ref().unwrap().notifications().unwrap();
    let mut stream =
        b.watch(WatchRequest { kinds: vec!["routing.queue".into()], ..Default::default() }).await;

    // The process's listener purges; B's watcher hears it over the bus.
    let k1 = b.get(get_queue(&q1)).await.unwrap().key;
    let k2 = b.get(get_queue(&q2)).await.unwrap().key;
    wait_covered(emu, &audit_topic(&q2)).await;
    assert!(!b_status().leader);
    assert!(emu.mutate_queue(&q1, serde_json::json!({ "description": "before-kill" })));
    assert!(invalidated(&mut stream, &k1, Duration::from_secs(2)).await);
    b.get(get_queue(&q2)).await.unwrap();

    // SIGKILL: the lease is not released; its sockets die.
    listener.kill();
    let killed = Instant::now();
    assert!(wait_until(Duration::from_secs(3), || !covered(emu, &audit_topic(&q2))).await);
    // A change nobody hears.
    assert!(emu.mutate_queue(&q2, serde_json::json!({ "description": "during-gap" })));

    // B reports itself the listener once its takeover purge is promised,
    // and a purge waits for every live instance of the fleet: the killed
    // one's registry entry lives 2 s after its last renewal.
    let bound = lease.max(FLEET_ENTRY_TTL);
    assert!(
        wait_until(bound + Duration::from_secs(2), || b_status().leader).await,
        "B took over: {:?}",
        b_status()
    );
    let took = killed.elapsed();
    println!("takeover {took:?} after the kill (lease {lease:?}, fleet entry {FLEET_ENTRY_TTL:?})");
    assert!(took < bound + Duration::from_millis(1500), "took {took:?}");
    // No stale hit after the takeover.
    assert_eq!(description(&b, &q2).await, "during-gap");
    let _ = k2;

    // Mutations after the takeover are heard through B's channels.
    let k3 = b.get(get_queue(&q3)).await.unwrap().key;
    wait_covered(emu, &audit_topic(&q3)).await;
    assert!(emu.mutate_queue(&q3, serde_json::json!({ "description": "after-takeover" })));
    assert!(invalidated(&mut stream, &k3, Duration::from_secs(2)).await);
    assert_eq!(description(&b, &q3).await, "after-takeover");
    // The dead listener's channels were unsubscribed by its successor.
    let own = b_status().channels;
    let foreign = || {
        emu.notification_channels()
            .into_iter()
            .filter(|c| !c.topics.is_empty() && !own.contains(&c.id))
            .count()
    };
    assert!(wait_until(Duration::from_secs(3), || foreign() == 0).await, "{:?}", emu.notification_channels());
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_queues_spread_over_channels_and_unsubscribe_when_dropped() {
    let mut s = listening("spread", EmulatorConfig { queues: 2600, ..emu_config() })
        .cluster()
        .configure(|c| {
            c.upstream.rate_limit.burst = 5000;
            c.cache.watch_buffer = 4096;
            // Not a heartbeat test: under the 2500-miss burst a socket can
            // miss the 1 s test timeout, and its (correct) gap purge would
            // remove keys this test counts.
            c.notifications.heartbeat_timeout = Duration::from_secs(10);
        })
        .start()
        .await;
    let (cx, emu, env) = (s.cx(), s.emu(), &s.env);
    // Values cached before the takeover purge would be purged by it.
    wait_listener(&[cx]).await;
    let started = Instant::now();
    let client = cx.client.clone();
    futures::stream::iter(0..2500)
        .map(|n| {
            let mut client = client.clone();
            async move { client.get(get_queue(&queue_id(n))).await.expect("get") }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    println!("2500 queues cached in {:?}", started.elapsed());
    let total =
        |emu: &EmulatorHandle| emu.notification_channels().iter().map(|c| c.topics.len()).sum::<usize>();
    assert!(
        wait_until(Duration::from_secs(15), || total(emu) == 2500).await,
        "all topics subscribed: {}",
        total(emu)
    );
    let channels = emu.notification_channels();
    let sizes: Vec<usize> = channels.iter().map(|c| c.topics.len()).filter(|n| *n > 0).collect();
    println!("topics per channel: {sizes:?}");
    assert_eq!(sizes.len(), 3, "{sizes:?}");
    assert!(sizes.iter().all(|n| *n <= 1000));
    assert!(channels.iter().all(|c| c.sockets == 1));

    // Dropping the keys drops the topics. The purge of 2500 keys travels
    // the bus as several events; a watcher hears every key.
    let prefix = format!("{env}:routing.queue:");
    let mut stream = cx.watch(WatchRequest { prefixes: vec![prefix.clone()], ..Default::default() }).await;
    let req = InvalidateRequest { prefixes: vec![prefix], reason: "test".into(), ..Default::default() };
    let purged = cx.client.clone().invalidate(req).await.unwrap().into_inner().purged;
    assert_eq!(purged, 2500);
    let mut heard = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while heard.len() < 2500 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(ev))) if ev.r#type() == Type::Invalidated => {
                heard.insert(ev.key);
            }
            Ok(Some(Ok(ev))) => assert_ne!(ev.r#type(), Type::Lagged, "the watcher lagged"),
            other => panic!("{} of 2500 purged keys heard: {other:?}", heard.len()),
        }
    }
    assert!(
        wait_until(Duration::from_secs(5), || total(emu) == 0).await,
        "topics unsubscribed: {}",
        total(emu)
    );
    s.stop().await;
}
