//! The deliverer on paused time: batching, backoff, the backlog bound and
//! RESYNC, against the embedded store and outbox and a fake endpoint.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::deliver::{backoff, Deliverer, Refused, Transport};
use super::record::Appender;
use super::{wire, Endpoint};
use crate::bus::{Bus, Event, EventKind};
use crate::catalog::Catalog;
use crate::config::{CallbackSettings, Secret};
use crate::store::{Cursor, Logged, MemoryOutbox, MemoryStore, Outbox};

const SECRET: &str = "0123456789abcdef";

/// An endpoint that records what it was sent, answering 503 while down.
#[derive(Default)]
struct Fake {
    down: Mutex<bool>,
    /// (paused-clock instant, body) of every attempt.
    attempts: Mutex<Vec<(tokio::time::Instant, serde_json::Value)>>,
    delivered: Mutex<Vec<serde_json::Value>>,
}

#[async_trait]
impl Transport for Fake {
    async fn post(&self, body: Bytes, signature: String) -> Result<(), Refused> {
        let t: i64 = signature.strip_prefix("t=").and_then(|s| s.split(',').next()).unwrap().parse().unwrap();
        assert_eq!(signature, wire::signature(SECRET.as_bytes(), t, &body), "signed over what was sent");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        self.attempts.lock().push((tokio::time::Instant::now(), json.clone()));
        if *self.down.lock() {
            return Err(Refused { reason: "503".into(), retry_after: None });
        }
        self.delivered.lock().push(json);
        Ok(())
    }
}

impl Fake {
    /// Ids of the delivered events, in order.
    fn delivered_ids(&self) -> Vec<String> {
        self.delivered
            .lock()
            .iter()
            .flat_map(|b| b["events"].as_array().unwrap().clone())
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    }
}

fn settings(backlog: usize) -> CallbackSettings {
    CallbackSettings {
        name: "cdn".into(),
        url: "http://127.0.0.1:9/".into(),
        secret: Secret::new(SECRET),
        kinds: vec!["routing.queue".into()],
        backlog,
        ..Default::default()
    }
}

struct Rig {
    bus: Arc<Bus>,
    fake: Arc<Fake>,
    outbox: Arc<Flaky>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The embedded outbox, whose appends fail while `down`.
#[derive(Default)]
struct Flaky {
    inner: MemoryOutbox,
    down: Mutex<bool>,
}

#[async_trait]
impl Outbox for Flaky {
    async fn append(
        &self,
        env: &str,
        name: &str,
        payload: Bytes,
        backlog: usize,
    ) -> crate::error::Result<()> {
        if *self.down.lock() {
            return Err(crate::error::Error::Store("down".into()));
        }
        self.inner.append(env, name, payload, backlog).await
    }
    async fn read(
        &self,
        env: &str,
        name: &str,
        after: &Cursor,
        max: usize,
    ) -> crate::error::Result<Vec<Logged>> {
        self.inner.read(env, name, after, max).await
    }
    async fn cursor(&self, env: &str, name: &str) -> crate::error::Result<Cursor> {
        self.inner.cursor(env, name).await
    }
    async fn advance(&self, env: &str, name: &str, to: &Cursor) -> crate::error::Result<()> {
        self.inner.advance(env, name, to).await
    }
    async fn appended(&self, env: &str, name: &str) -> crate::error::Result<u64> {
        self.inner.appended(env, name).await
    }
}

async fn rig(settings: CallbackSettings) -> Rig {
    crate::clock::follow_tokio_time();
    let catalog = Arc::new(Catalog::with_presets(&Default::default()).unwrap());
    let endpoint = Arc::new(Endpoint::new(settings, catalog));
    let bus = Bus::local("i1".into());
    let outbox = Arc::new(Flaky::default());
    bus.record_with(Arc::new(Appender::new("p".into(), vec![endpoint.clone()], outbox.clone())));
    let fake = Arc::new(Fake::default());
    let (stop, rx) = watch::channel(false);
    let deliverer = Deliverer {
        env: "p".into(),
        endpoint,
        store: Arc::new(MemoryStore::new()),
        outbox: outbox.clone(),
        transport: fake.clone(),
        wake: bus.subscribe(),
    };
    let task = tokio::spawn(deliverer.run(rx));
    Rig { bus, fake, outbox, stop, task }
}

fn purge(key: &str) -> Event {
    Event { kind: EventKind::Invalidated, reason: "purge".into(), ..Event::updated(key, "i1") }
}

/// Lets spawned tasks run and paused time move on, `ms` at a time.
async fn run_for(ms: u64) {
    for _ in 0..ms / 10 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn matching_events_share_one_signed_post_and_others_are_not_sent() {
    let r = rig(settings(100)).await;
    run_for(50).await; // the deliverer takes the lease
    r.bus.publish(purge("p:routing.queue:1:full")).await.unwrap();
    r.bus.publish(purge("p:user:7:full")).await.unwrap(); // not a queue
    r.bus.publish(Event::updated("p:routing.queue:2:full", "i1")).await.unwrap();
    run_for(200).await;
    let delivered = r.fake.delivered.lock().clone();
    assert_eq!(delivered.len(), 1, "one POST within the linger: {delivered:?}");
    let events = delivered[0]["events"].as_array().unwrap();
    let keys: Vec<&str> = events.iter().map(|e| e["keys"][0].as_str().unwrap()).collect();
    assert_eq!(keys, ["p:routing.queue:1:full", "p:routing.queue:2:full"]);
    assert_eq!(events[0]["type"], "INVALIDATED");
    assert_eq!(events[1]["type"], "UPDATED");
    assert_ne!(events[0]["id"], events[1]["id"], "each event has its own id");
    assert_eq!(r.outbox.cursor("p", "cdn").await.unwrap().n, 2, "the cursor moved past both");
    let _ = r.stop.send(true);
    r.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_refusing_endpoint_is_retried_with_doubling_pauses_until_it_takes_the_batch() {
    let r = rig(settings(100)).await;
    *r.fake.down.lock() = true;
    run_for(50).await;
    r.bus.publish(purge("p:routing.queue:1:full")).await.unwrap();
    // retry_min 200 ms doubling: attempts at ~0, 0.1-0.2, 0.3-0.6, 0.5-1.4, 0.9-3.0 s.
    run_for(3_500).await;
    let times: Vec<_> = r.fake.attempts.lock().iter().map(|(t, _)| *t).collect();
    assert!(times.len() >= 5, "{} attempts in 3.5 s", times.len());
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, gap) in gaps.iter().enumerate().take(4) {
        let full = Duration::from_millis(200 << i);
        assert!(
            *gap >= full / 2 && *gap <= full + Duration::from_millis(20),
            "pause {i}: {gap:?} for {full:?}"
        );
    }
    assert!(r.fake.delivered.lock().is_empty());
    *r.fake.down.lock() = false;
    run_for(31_000).await; // at most retry_max
    assert_eq!(r.fake.delivered_ids().len(), 1, "delivered once when it came back");
    let ids: Vec<String> = r
        .fake
        .attempts
        .lock()
        .iter()
        .map(|(_, b)| b["events"][0]["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "every retry carries the same event id: {ids:?}");
    let _ = r.stop.send(true);
    r.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn past_the_backlog_the_oldest_events_go_counted_and_the_endpoint_gets_resync() {
    let r = rig(settings(5)).await;
    *r.fake.down.lock() = true;
    run_for(50).await;
    r.bus.publish(purge("p:routing.queue:0:full")).await.unwrap();
    run_for(100).await; // its POST fails: the deliverer holds event 1 in its batch
    for i in 1..12 {
        r.bus.publish(purge(&format!("p:routing.queue:{i}:full"))).await.unwrap();
    }
    *r.fake.down.lock() = false;
    run_for(2_000).await;
    let delivered = r.fake.delivered.lock().clone();
    let events: Vec<serde_json::Value> =
        delivered.iter().flat_map(|b| b["events"].as_array().unwrap().clone()).collect();
    // Event 1 was in the failing batch (sent as is); of 2-12, only the last 5 were kept.
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "INVALIDATED");
    assert_eq!(events[0]["keys"][0], "p:routing.queue:0:full");
    assert_eq!(kinds[1], "RESYNC", "{events:?}");
    assert_eq!(events[1]["dropped"], 6, "events 2-7 dropped: {events:?}");
    let kept: Vec<&str> = events[2..].iter().map(|e| e["keys"][0].as_str().unwrap()).collect();
    assert_eq!(kept, (7..12).map(|i| format!("p:routing.queue:{i}:full")).collect::<Vec<_>>());
    let _ = r.stop.send(true);
    r.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_event_the_outbox_could_not_take_is_followed_by_resync_not_silence() {
    let r = rig(settings(100)).await;
    run_for(50).await;
    *r.outbox.down.lock() = true;
    r.bus.publish(purge("p:routing.queue:1:full")).await.unwrap(); // not written
    *r.outbox.down.lock() = false;
    r.bus.publish(purge("p:routing.queue:2:full")).await.unwrap();
    run_for(300).await;
    let events: Vec<serde_json::Value> =
        r.fake.delivered.lock().iter().flat_map(|b| b["events"].as_array().unwrap().clone()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["RESYNC", "INVALIDATED"], "{events:?}");
    assert!(events[0]["id"].is_string(), "the RESYNC has an id too");
    assert_eq!(events[1]["keys"][0], "p:routing.queue:2:full");
    // Told once: the next event comes alone.
    r.bus.publish(purge("p:routing.queue:3:full")).await.unwrap();
    run_for(300).await;
    assert_eq!(r.fake.delivered_ids().len(), 3);
    let _ = r.stop.send(true);
    r.task.await.unwrap();
}

#[test]
fn backoff_doubles_to_the_cap_and_honours_retry_after() {
    let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
    for attempt in 1..10u32 {
        let full = (min * 2u32.pow(attempt - 1)).min(max);
        let d = backoff(attempt, min, max, None);
        assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
    }
    assert_eq!(backoff(1, min, max, Some(Duration::from_secs(1))), Duration::from_secs(1));
    assert_eq!(backoff(1, min, max, Some(Duration::from_secs(60))), max);
}
