//! Stream behaviour with paused time and the in-process bus.

use std::time::Duration;

use tokio_stream::StreamExt;

use super::*;
use crate::bus::{Event, EventKind, Membership};
use crate::catalog::Catalog;

const SETTINGS: Settings =
    Settings { buffer: 64, heartbeat: Duration::from_secs(1), heartbeat_min: Duration::from_millis(100) };

fn request(resume_after: &str) -> WatchRequest {
    WatchRequest { prefixes: vec!["p:".into()], resume_after: resume_after.into(), ..Default::default() }
}

fn start(bus: &Arc<Bus>, req: WatchRequest) -> ReceiverStream<Result<WatchEvent, Status>> {
    let catalog = Arc::new(Catalog::with_presets(&Default::default()).unwrap());
    let filter = Filter::from_request(&req, catalog).unwrap();
    let opening = Opening::from_request(&req, &SETTINGS).unwrap();
    let (_tx, rx) = watch::channel(false);
    std::mem::forget(_tx); // streams outlive the test's shutdown sender
    open(bus.clone(), filter, opening, &SETTINGS, rx)
}

async fn next(s: &mut ReceiverStream<Result<WatchEvent, Status>>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(30), s.next()).await.expect("an event in time").unwrap().unwrap()
}

fn kind(ev: &WatchEvent) -> Type {
    Type::try_from(ev.r#type).unwrap()
}

async fn purge(bus: &Bus, keys: &[&str]) {
    let event = Event {
        kind: EventKind::Invalidated,
        keys: keys.iter().map(|k| k.to_string()).collect(),
        prefix: None,
        tag: None,
        reason: "test".into(),
        at_ms: 0,
        origin: "test".into(),
        ack: None,
    };
    bus.publish(event).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stream_opens_with_a_heartbeat_and_beats_at_its_interval() {
    let bus = Bus::local("t".into());
    let mut s = start(&bus, request(""));
    let first = next(&mut s).await;
    assert_eq!((kind(&first), first.sequence), (Type::Heartbeat, 1));
    assert_eq!(first.position, format!("{}-0", bus.journal().epoch()));
    let t0 = tokio::time::Instant::now();
    let second = next(&mut s).await;
    assert_eq!(kind(&second), Type::Heartbeat);
    assert_eq!(t0.elapsed(), Duration::from_secs(1), "the configured interval");
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_comes_after_every_event_queued_before_it_and_carries_its_position() {
    let bus = Bus::local("t".into());
    let mut s = start(&bus, request(""));
    next(&mut s).await;
    purge(&bus, &["p:user:1:full"]).await;
    purge(&bus, &["x:user:1:full"]).await; // matches nothing, still moves the position
    let ev = next(&mut s).await;
    assert_eq!((kind(&ev), ev.key.as_str()), (Type::Invalidated, "p:user:1:full"));
    let hb = next(&mut s).await;
    assert_eq!(kind(&hb), Type::Heartbeat);
    assert_eq!(hb.position, format!("{}-2", bus.journal().epoch()));
}

#[tokio::test(start_paused = true)]
async fn no_heartbeat_while_membership_has_lapsed() {
    let bus = Bus::local_with_membership("t".into(), Membership::lapsed());
    let mut s = start(&bus, request(""));
    purge(&bus, &["p:user:1:full"]).await;
    let ev = next(&mut s).await;
    assert_eq!(kind(&ev), Type::Invalidated, "no heartbeat first: the instance may be missing purges");
    let quiet = tokio::time::timeout(Duration::from_secs(10), s.next()).await;
    assert!(quiet.is_err(), "no heartbeat in 10 intervals: {quiet:?}");
}

#[tokio::test(start_paused = true)]
async fn a_resume_replays_the_missed_events_then_beats_then_goes_live() {
    let bus = Bus::local("t".into());
    let mut s = start(&bus, request(""));
    purge(&bus, &["p:user:1:full"]).await;
    next(&mut s).await; // heartbeat
    let seen = next(&mut s).await;
    drop(s); // the connection is cut
    purge(&bus, &["p:user:2:full"]).await;
    purge(&bus, &["x:user:9:full"]).await;
    purge(&bus, &["p:user:3:full"]).await;
    let mut s = start(&bus, request(&seen.position));
    let a = next(&mut s).await;
    let b = next(&mut s).await;
    assert_eq!((kind(&a), a.key.as_str(), a.sequence), (Type::Invalidated, "p:user:2:full", 1));
    assert_eq!((kind(&b), b.key.as_str()), (Type::Invalidated, "p:user:3:full"));
    let hb = next(&mut s).await;
    assert_eq!(kind(&hb), Type::Heartbeat, "then live: {hb:?}");
    assert_eq!(hb.position, format!("{}-4", bus.journal().epoch()));
    purge(&bus, &["p:user:4:full"]).await;
    assert_eq!(next(&mut s).await.key, "p:user:4:full");
}

#[tokio::test(start_paused = true)]
async fn a_resume_that_cannot_be_honoured_starts_with_reset() {
    let bus = Bus::local("t".into());
    purge(&bus, &["p:user:1:full"]).await;
    let mut s = start(&bus, request("someoneelse-1"));
    let first = next(&mut s).await;
    assert_eq!(kind(&first), Type::Reset);
    assert!(first.reason.contains("another instance"), "{}", first.reason);
    assert_eq!(kind(&next(&mut s).await), Type::Heartbeat);
}

#[tokio::test(start_paused = true)]
async fn a_multi_key_event_cut_midway_is_replayed_whole() {
    let bus = Bus::local("t".into());
    let mut s = start(&bus, request(""));
    next(&mut s).await;
    purge(&bus, &["p:a:1:full", "p:a:2:full", "p:a:3:full"]).await;
    let first = next(&mut s).await;
    assert_eq!(first.position, format!("{}-0", bus.journal().epoch()), "not yet the whole event");
    drop(s);
    let mut s = start(&bus, request(&first.position));
    let keys: Vec<String> =
        [next(&mut s).await, next(&mut s).await, next(&mut s).await].map(|e| e.key).into();
    assert_eq!(keys, ["p:a:1:full", "p:a:2:full", "p:a:3:full"]);
}

#[tokio::test(start_paused = true)]
async fn invalidated_only_streams_skip_updates() {
    let bus = Bus::local("t".into());
    let mut s = start(&bus, WatchRequest { invalidated_only: true, ..request("") });
    next(&mut s).await;
    bus.publish(Event::updated("p:user:1:full", "o")).await.unwrap();
    purge(&bus, &["p:user:2:full"]).await;
    assert_eq!(next(&mut s).await.key, "p:user:2:full");
}

#[test]
fn openings_are_validated_and_intervals_clamped() {
    let bad = Opening::from_request(&request("garbage"), &SETTINGS).unwrap_err();
    assert!(bad.to_string().contains("resume_after"), "{bad}");
    let ask = |d: prost_types::Duration| {
        Opening::from_request(&WatchRequest { heartbeat_interval: Some(d), ..request("") }, &SETTINGS)
    };
    let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
    assert_eq!(ask(d(0, 1_000_000)).unwrap().heartbeat, Duration::from_millis(100), "raised to the minimum");
    assert_eq!(ask(d(0, 250_000_000)).unwrap().heartbeat, Duration::from_millis(250));
    assert_eq!(ask(d(0, 0)).unwrap().heartbeat, Duration::from_secs(1), "zero: the server's");
    assert!(ask(d(-1, 0)).unwrap_err().to_string().contains("heartbeat_interval"));
}
