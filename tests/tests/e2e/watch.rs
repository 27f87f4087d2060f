//! Watch streams that resume: positions, replay of what a subscriber
//! missed, RESET when that cannot be had, heartbeats (issue 15, server side).

use std::time::Duration;

use cxcache::proto::v1::{watch_event::Type, InvalidateRequest, WatchEvent, WatchRequest};
use harness::*;

fn purge(keys: &[String], reason: &str) -> InvalidateRequest {
    InvalidateRequest { keys: keys.to_vec(), reason: reason.into(), ..Default::default() }
}

/// Messages until (and without) the first HEARTBEAT after the replay.
async fn until_heartbeat(stream: &mut tonic::Streaming<WatchEvent>) -> Vec<WatchEvent> {
    let mut got = Vec::new();
    while let Some(ev) = next_message(stream, Duration::from_secs(10)).await {
        if ev.r#type() == Type::Heartbeat {
            return got;
        }
        got.push(ev);
    }
    panic!("no heartbeat after {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumed_after_a_five_second_disconnect_replays_exactly_the_missed_events() {
    let mut s = Scenario::new("resume").cluster().instances(2).start().await;
    let env = s.env.clone();
    let (a, b) = (&s.instances[0], &s.instances[1]);
    let queue = |n: usize| format!("{env}:routing.queue:r{n}:full");
    let watch = || WatchRequest { kinds: vec!["routing.queue".into()], ..Default::default() };

    let mut stream = a.watch(watch()).await;
    let hello = next_message(&mut stream, Duration::from_secs(10)).await.expect("a first message");
    assert_eq!(hello.r#type(), Type::Heartbeat);
    b.client.clone().invalidate(purge(&[queue(0)], "before")).await.unwrap();
    let seen = wait_event(&mut stream, Type::Invalidated, &queue(0), Duration::from_secs(10)).await.unwrap();
    drop(stream); // disconnected

    // Five seconds of purges through the other instance while nobody listens,
    // some for keys the stream does not watch.
    let started = std::time::Instant::now();
    let mut missed = Vec::new();
    for n in 1..=10 {
        b.client.clone().invalidate(purge(&[queue(n)], "missed")).await.unwrap();
        missed.push(queue(n));
        let other = format!("{env}:user:u{n}:full");
        b.client.clone().invalidate(purge(&[other], "not watched")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await; // the disconnect lasts 5 s
    }
    assert!(started.elapsed() >= Duration::from_secs(5));

    let mut resumed = a.watch(WatchRequest { resume_after: seen.position.clone(), ..watch() }).await;
    let replay = until_heartbeat(&mut resumed).await;
    let keys: Vec<&str> = replay.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        missed.iter().map(String::as_str).collect::<Vec<_>>(),
        "exactly the missed events, in order"
    );
    assert!(replay.iter().all(|e| e.r#type() == Type::Invalidated && e.reason == "missed"), "{replay:?}");
    let seqs: Vec<u64> = replay.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());

    // Then live.
    b.client.clone().invalidate(purge(&[queue(11)], "live")).await.unwrap();
    assert!(wait_event(&mut resumed, Type::Invalidated, &queue(11), Duration::from_secs(10)).await.is_some());

    // The other instance has a log of its own: the same position resets there.
    let mut elsewhere = b.watch(WatchRequest { resume_after: seen.position.clone(), ..watch() }).await;
    let first = next_message(&mut elsewhere, Duration::from_secs(10)).await.unwrap();
    assert_eq!(first.r#type(), Type::Reset, "{first:?}");
    assert_eq!(
        next_message(&mut elsewhere, Duration::from_secs(10)).await.unwrap().r#type(),
        Type::Heartbeat
    );
    let metrics = a.metrics_text().await;
    assert!(metrics.contains("cxcache_watch_resumes_total{outcome=\"replayed\"}"), "{metrics}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_come_at_the_asked_interval_and_a_bad_position_is_refused() {
    let mut s = Scenario::new("heartbeat").start().await;
    let cx = s.cx();
    let req = WatchRequest {
        prefixes: vec![format!("{}:", s.env)],
        heartbeat_interval: Some(prost_types::Duration { seconds: 0, nanos: 100_000_000 }),
        ..Default::default()
    };
    let mut stream = cx.watch(req.clone()).await;
    let started = std::time::Instant::now();
    let mut beats = Vec::new();
    while beats.len() < 11 {
        let ev = next_message(&mut stream, Duration::from_secs(5)).await.expect("a heartbeat");
        assert_eq!(ev.r#type(), Type::Heartbeat);
        beats.push(ev);
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(3),
        "10 intervals of 100 ms: {took:?}"
    );
    assert!(beats.iter().all(|b| b.position == beats[0].position), "nothing happened: one position");

    let bad = WatchRequest { resume_after: "not-a-position".into(), ..req };
    let e = cx.new_client().await.watch(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("resume_after"), "{}", e.message());
    s.stop().await;
}
