//! The invalidation bus: every purge and every fresh store is published so
//! that every instance drops its L1 copies and tells its Watch subscribers.
//!
//! With Redis, events travel on one sharded pub/sub channel
//! (`SPUBLISH`/`SSUBSCRIBE`, routed by the channel's hash slot) through a
//! dedicated subscriber connection that fred resubscribes after reconnects
//! and failovers. Without Redis, the bus is in-process.
//!
//! Each instance fans events out locally through a bounded broadcast
//! channel. Anything that might have lost events (a resubscription, a failed
//! publish) is reported as [`BusMessage::Gap`], on which L1 is dropped and
//! watchers are told to resync: never silent staleness.
//!
//! The fleet is a registry in Redis: each instance renews its own entry
//! (its id, scored by expiry) every [`HEARTBEAT_EVERY`]. Purges that
//! promise read-your-invalidation wait until every live instance of the
//! registry added its id to the purge's acknowledgement set
//! ([`Bus::publish_acked`], [`Bus::acknowledge`]): each counted once,
//! whether its subscriber is connected or not, a replayed ack no help.
//!
//! An instance that cannot renew its entry may be dropped from that set by
//! the others, so its L1 stops serving ([`Membership`]) before its entry
//! could expire, and on renewal after a lapse it announces a gap: L1 is
//! never served while purges might be passing it by.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use fred::prelude::{
    ClientLike, EventInterface, KeysInterface, Pool, PubsubInterface, SetsInterface, SortedSetsInterface,
};
use fred::types::config::Config as RedisConfig;
use fred::types::scripts::Script;
use fred::types::sorted_sets::{ZRange, ZRangeBound, ZRangeKind};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::clock::now_ms;
use crate::error::{Error, Result};

mod journal;
pub use journal::{Journal, Logged, Position, Retention, Start};

/// What happened to cached data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Entries were purged.
    Invalidated,
    /// A new value was stored.
    Updated,
}

/// One event on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// Logical keys concerned.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Prefix or tag purged, when the event is for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub reason: String,
    pub at_ms: i64,
    /// Instance that published it.
    pub origin: String,
    /// Set on purges that wait for every instance to drop its L1 copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<String>,
}

/// What subscribers of the local fan-out receive.
#[derive(Debug, Clone)]
pub enum BusMessage {
    Event(Arc<Event>),
    /// Events may have been missed: drop L1, tell watchers to resync.
    Gap,
}

/// Capacity of the local fan-out: a receiver further behind than this
/// lags (and is told so) rather than holding memory.
const FANOUT_CAPACITY: usize = 4096;

/// The local fan-out: every message is journaled (for Watch streams and
/// their resumes) before the instance's own followers see it.
pub struct Fanout {
    local: broadcast::Sender<BusMessage>,
    journal: Journal,
}

impl Fanout {
    fn new(retention: Retention) -> Arc<Fanout> {
        let (local, _) = broadcast::channel(FANOUT_CAPACITY);
        Arc::new(Fanout { local, journal: Journal::new(retention) })
    }

    fn send(&self, msg: BusMessage) {
        self.journal.append(msg.clone());
        let _ = self.local.send(msg);
    }
}

/// Hears every event this instance originates, before the fleet does: the
/// change-callback outbox, which must hold an event before anyone could
/// act on it (at least once, even if this instance dies right after).
#[async_trait::async_trait]
pub trait Recorder: Send + Sync + 'static {
    async fn record(&self, event: &Event);
}

pub struct Bus {
    fanout: Arc<Fanout>,
    /// Set once at start-up when change callbacks are configured.
    recorder: std::sync::OnceLock<Arc<dyn Recorder>>,
    redis: Option<RedisBus>,
    pub instance_id: String,
    published: AtomicU64,
    /// Live instances of the registry (this one included), as last seen:
    /// the fleet that shares the upstream budgets.
    fleet: Arc<AtomicUsize>,
    membership: Arc<Membership>,
}

/// How often each instance renews its registry entry.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// How long an entry lives unrenewed: a killed instance holds up purges
/// (they answer UNAVAILABLE, retried within the caller's deadline) at most
/// this long.
pub const FLEET_TTL: Duration = Duration::from_secs(2);
/// L1 stops serving this long before this instance's entry could expire
/// in the others' eyes: a renewal's round trip, and clock skew between
/// hosts up to about this much.
const MEMBERSHIP_MARGIN: Duration = Duration::from_millis(500);

/// How often a purge waiting for acknowledgements re-reads who is alive.
const REREAD_LIVE: Duration = Duration::from_millis(200);

/// Renew this instance's entry, drop entries long dead, count the live.
/// KEYS: registry. ARGV: id, now ms, ttl ms.
const HEARTBEAT: &str = r#"
local now = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 600000)
redis.call('PEXPIRE', KEYS[1], 600000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"#;

/// Whether this instance may serve from L1: only while the fleet surely
/// counts it among the instances every purge waits for.
pub struct Membership {
    /// Until when (unix ms); 0 before the first renewal.
    valid_until_ms: AtomicI64,
    /// Times membership was regained after a lapse: L1 is cleared before
    /// it serves again.
    lapses: AtomicU64,
}

impl Membership {
    /// Valid for good (an in-process bus: there is no one else).
    pub fn always() -> Arc<Membership> {
        Arc::new(Membership { valid_until_ms: AtomicI64::new(i64::MAX), lapses: AtomicU64::new(0) })
    }

    pub fn valid(&self, now_ms: i64) -> bool {
        now_ms < self.valid_until_ms.load(Ordering::Acquire)
    }

    pub fn lapses(&self) -> u64 {
        self.lapses.load(Ordering::Acquire)
    }

    /// Not valid until renewed (a bus over Redis, before its first renewal).
    pub(crate) fn lapsed() -> Arc<Membership> {
        Arc::new(Membership { valid_until_ms: AtomicI64::new(0), lapses: AtomicU64::new(0) })
    }

    /// Notes a renewal sent at `sent_ms`; returns whether it ends a lapse.
    pub(crate) fn renewed(&self, sent_ms: i64) -> bool {
        let lapsed = !self.valid(now_ms());
        if lapsed {
            self.lapses.fetch_add(1, Ordering::AcqRel);
        }
        let until = sent_ms + (FLEET_TTL - MEMBERSHIP_MARGIN).as_millis() as i64;
        self.valid_until_ms.fetch_max(until, Ordering::AcqRel);
        lapsed
    }
}

struct RedisBus {
    /// The namespace, for acknowledgement set keys.
    env: String,
    pool: Pool,
    channel: String,
    registry: String,
    _subscriber: fred::clients::SubscriberClient,
    _resubscriber: tokio::task::JoinHandle<()>,
}

impl RedisBus {
    /// Ids of the instances whose registry entry has not expired.
    async fn live(&self) -> Result<Vec<String>> {
        let live = ZRange { kind: ZRangeKind::Exclusive, range: ZRangeBound::Score(now_ms() as f64) };
        let all = ZRange { kind: ZRangeKind::Inclusive, range: ZRangeBound::InfiniteScore };
        self.pool
            .zrangebyscore(self.registry.as_str(), live, all, false, None)
            .await
            .map_err(|e| Error::Store(format!("fleet registry: {e}")))
    }
}

impl Bus {
    /// An in-process bus with the default journal retention.
    #[cfg(test)]
    pub fn local(instance_id: String) -> Arc<Bus> {
        Bus::local_with(instance_id, Retention::default())
    }

    /// An in-process bus whose journal retains `retention`.
    pub fn local_with(instance_id: String, retention: Retention) -> Arc<Bus> {
        Bus::in_process(instance_id, retention, Membership::always())
    }

    fn in_process(instance_id: String, retention: Retention, membership: Arc<Membership>) -> Arc<Bus> {
        Arc::new(Bus {
            fanout: Fanout::new(retention),
            recorder: Default::default(),
            redis: None,
            instance_id,
            published: AtomicU64::new(0),
            fleet: Arc::new(AtomicUsize::new(1)),
            membership,
        })
    }

    /// An in-process bus whose membership is `membership` (tests of what
    /// depends on it).
    #[cfg(test)]
    pub(crate) fn local_with_membership(instance_id: String, membership: Arc<Membership>) -> Arc<Bus> {
        Bus::in_process(instance_id, Retention::default(), membership)
    }

    /// A bus over Redis sharded pub/sub on the channel of `env`.
    pub async fn redis(
        instance_id: String,
        env: &str,
        pool: Pool,
        url: &str,
        command_timeout: Duration,
        retention: Retention,
    ) -> Result<Arc<Bus>> {
        let fanout = Fanout::new(retention);
        let channel = crate::keys::bus_channel(env);
        let mut config = RedisConfig::from_url(url).map_err(|e| Error::Store(format!("redis url: {e}")))?;
        // TLS as the store's pool has it (issue 13: configured CA / client certificate).
        config.tls = pool.next().client_config().tls.clone();
        let subscriber = fred::prelude::Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = command_timeout)
            .set_policy(fred::prelude::ReconnectPolicy::new_exponential(0, 50, 500, 2))
            .build_subscriber_client()
            .map_err(|e| Error::Store(e.to_string()))?;
        subscriber.init().await.map_err(|e| Error::Store(e.to_string()))?;
        // fred re-issues our subscriptions after reconnects and failovers.
        let resubscriber = subscriber.manage_subscriptions();

        let messages = subscriber.message_rx();
        tokio::spawn(forward(messages, fanout.clone(), |msg: &fred::types::Message| {
            msg.value.as_bytes().map(serde_json::from_slice::<Event>).and_then(|r| r.ok())
        }));
        let mut reconnects = subscriber.reconnect_rx();
        let tx = fanout.clone();
        tokio::spawn(async move {
            while reconnects.recv().await.is_ok() {
                tracing::warn!("invalidation bus reconnected: treating the gap as lost events");
                tx.send(BusMessage::Gap);
            }
        });
        subscriber.ssubscribe(channel.clone()).await.map_err(|e| Error::Store(e.to_string()))?;
        // Registered only once subscribed: from the moment purges wait for
        // this instance, it hears them.
        let registry = crate::keys::fleet_registry(env);
        let beat = Heartbeat {
            pool: pool.clone(),
            script: Script::from_lua(HEARTBEAT),
            registry: registry.clone(),
            id: instance_id.clone(),
        };
        let sent = now_ms();
        let fleet = Arc::new(AtomicUsize::new((beat.renew().await? as usize).max(1)));
        let membership = Membership::lapsed();
        membership.renewed(sent);
        tokio::spawn(beat.run(Arc::downgrade(&fleet), Arc::downgrade(&membership), fanout.clone()));
        Ok(Arc::new(Bus {
            fanout,
            recorder: Default::default(),
            redis: Some(RedisBus {
                env: env.to_string(),
                pool,
                channel,
                registry,
                _subscriber: subscriber,
                _resubscriber: resubscriber,
            }),
            instance_id,
            published: AtomicU64::new(0),
            fleet,
            membership,
        }))
    }

    /// Whether this instance's L1 may serve (see [`Membership`]).
    pub fn membership(&self) -> Arc<Membership> {
        self.membership.clone()
    }

    /// Leaves the fleet at once (graceful shutdown): purges stop waiting
    /// for this instance.
    pub async fn leave(&self) {
        if let Some(r) = &self.redis {
            let _ = r.pool.zrem::<i64, _, _>(r.registry.as_str(), self.instance_id.as_str()).await;
        }
    }

    /// Publishes `event` to every instance (this one included). Returns how
    /// many instances' subscribers received it (in-process: 1). A failed
    /// publish is reported locally as a gap.
    pub async fn publish(&self, event: Event) -> Result<u64> {
        self.published.fetch_add(1, Ordering::Relaxed);
        if let Some(recorder) = self.recorder.get() {
            recorder.record(&event).await;
        }
        match &self.redis {
            None => {
                self.fanout.send(BusMessage::Event(Arc::new(event)));
                Ok(1)
            }
            Some(r) => {
                let payload = serde_json::to_vec(&event).map_err(|e| Error::Internal(e.to_string()))?;
                match r.pool.next().spublish::<u64, _, _>(r.channel.as_str(), payload).await {
                    Ok(n) => Ok(n),
                    Err(e) => {
                        self.fanout.send(BusMessage::Gap);
                        Err(Error::Store(format!("bus publish: {e}")))
                    }
                }
            }
        }
    }

    /// Makes `recorder` hear every event this instance publishes from now
    /// on (once; a second call is ignored).
    pub fn record_with(&self, recorder: Arc<dyn Recorder>) {
        let _ = self.recorder.set(recorder);
    }

    /// How many instances share the bus (and so the upstream budgets), kept
    /// current while the bus runs; at least 1.
    pub fn fleet(&self) -> Arc<AtomicUsize> {
        self.fleet.clone()
    }

    /// A receiver of everything published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.fanout.local.subscribe()
    }

    /// The journal Watch streams subscribe to (and resume from).
    pub fn journal(&self) -> &Journal {
        &self.fanout.journal
    }

    /// Publishes `event` and waits (at most `timeout`) until every live
    /// instance of the registry acknowledged it, each by its id; past
    /// `timeout`, a retryable [`Error::Unavailable`] naming how many did.
    /// In-process there is no one else to wait for.
    pub async fn publish_acked(&self, mut event: Event, timeout: Duration) -> Result<()> {
        let Some(r) = &self.redis else { return self.publish(event).await.map(drop) };
        let mut expected = r.live().await?;
        let acks = crate::keys::ack_set(&r.env, &uuid::Uuid::new_v4().simple().to_string());
        event.ack = Some(acks.clone());
        self.publish(event).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        let mut reread = tokio::time::Instant::now() + REREAD_LIVE;
        loop {
            let got: Vec<String> = r.pool.smembers(acks.as_str()).await.unwrap_or_default();
            if tokio::time::Instant::now() >= reread {
                // An instance that died meanwhile (its entry expired) is
                // no longer waited for; none is added.
                if let Ok(live) = r.live().await {
                    expected.retain(|id| live.contains(id));
                }
                reread = tokio::time::Instant::now() + REREAD_LIVE;
            }
            let missing = expected.iter().filter(|id| !got.contains(id)).count();
            if missing == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let expected = expected.len();
                tracing::warn!(expected, missing, "not every instance acknowledged the purge in time");
                // An instance that may hold the old value did not confirm:
                // no OK the fleet cannot stand behind.
                return Err(Error::Unavailable {
                    message: format!(
                        "{} of {expected} instances acknowledged the purge within {timeout:?}; retry",
                        expected - missing
                    ),
                    retry_after: Some(timeout),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Publishes that `key` got a new value (best effort: a failed publish
    /// is a gap the bus reports itself).
    pub async fn publish_update(&self, key: &str) {
        if let Err(e) = self.publish(Event::updated(key, &self.instance_id)).await {
            tracing::debug!(error = %e, "update event not published");
        }
    }

    /// Acknowledges an event that asked for it (this instance dropped what
    /// it named).
    pub async fn acknowledge(&self, event: &Event) {
        if let (Some(acks), Some(r)) = (&event.ack, &self.redis) {
            // One round trip: the set and its expiry travel together.
            let pipeline = r.pool.next().pipeline();
            let _ = pipeline.sadd::<(), _, _>(acks.as_str(), self.instance_id.as_str()).await;
            let _ = pipeline.pexpire::<(), _>(acks.as_str(), 30_000, None).await;
            if let Err(e) = pipeline.all::<Vec<fred::types::Value>>().await {
                tracing::debug!(error = %e, "purge acknowledgement not sent");
            }
        }
    }
}

/// This instance's entry in the fleet registry.
struct Heartbeat {
    pool: Pool,
    script: Script,
    registry: String,
    id: String,
}

impl Heartbeat {
    /// Renews the entry; returns the live instances counted.
    async fn renew(&self) -> Result<i64> {
        let args: Vec<fred::types::Value> =
            vec![self.id.as_str().into(), now_ms().into(), (FLEET_TTL.as_millis() as i64).into()];
        self.script
            .evalsha_with_reload(self.pool.next(), vec![self.registry.clone()], args)
            .await
            .map_err(|e| Error::Store(format!("fleet registry: {e}")))
    }

    /// Renews every [`HEARTBEAT_EVERY`] until the bus is dropped, keeping
    /// the fleet size and this instance's membership current; a renewal
    /// after a lapse is announced as a gap. The last count stands while
    /// Redis is unreachable.
    async fn run(self, fleet: Weak<AtomicUsize>, membership: Weak<Membership>, fanout: Arc<Fanout>) {
        loop {
            tokio::time::sleep(HEARTBEAT_EVERY).await;
            let (Some(fleet), Some(membership)) = (fleet.upgrade(), membership.upgrade()) else { return };
            let sent = now_ms();
            match self.renew().await {
                Ok(live) => {
                    fleet.store((live as usize).max(1), Ordering::Relaxed);
                    if membership.renewed(sent) {
                        tracing::warn!("fleet membership renewed after a lapse: treating it as lost events");
                        fanout.send(BusMessage::Gap);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "fleet registry renewal failed; retrying"),
            }
        }
    }
}

/// Forwards what the Redis subscriber receives to the local fan-out until
/// the subscriber closes. A burst that outruns the subscriber's buffer is a
/// gap, announced as one, and forwarding goes on.
async fn forward<M: Clone>(
    mut messages: broadcast::Receiver<M>,
    tx: Arc<Fanout>,
    decode: impl Fn(&M) -> Option<Event>,
) {
    loop {
        match messages.recv().await {
            Ok(msg) => match decode(&msg) {
                Some(event) => tx.send(BusMessage::Event(Arc::new(event))),
                None => tracing::warn!("undecodable bus message ignored"),
            },
            Err(broadcast::error::RecvError::Lagged(lost)) => {
                tracing::warn!(lost, "invalidation bus subscriber fell behind: treating it as lost events");
                tx.send(BusMessage::Gap);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl Event {
    /// The event announcing that `key` got a new value.
    pub fn updated(key: &str, origin: &str) -> Event {
        Event {
            kind: EventKind::Updated,
            keys: vec![key.to_string()],
            prefix: None,
            tag: None,
            reason: "stored".into(),
            at_ms: crate::entry::now_ms(),
            origin: origin.to_string(),
            ack: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Membership holds until shortly before the registry entry could
    /// expire in the others' eyes, and a renewal after that is a lapse.
    #[tokio::test(start_paused = true)]
    async fn membership_ends_before_the_registry_entry_can_expire() {
        crate::clock::follow_tokio_time();
        let m = Membership::lapsed();
        assert!(!m.valid(now_ms()), "not before the first renewal");
        let sent = now_ms();
        assert!(m.renewed(sent), "the first renewal ends the initial lapse");
        let lapses = m.lapses();
        assert!(m.valid(now_ms()));
        tokio::time::advance(FLEET_TTL - MEMBERSHIP_MARGIN - Duration::from_millis(1)).await;
        assert!(m.valid(now_ms()));
        assert!(!m.renewed(now_ms()), "renewed in time: no lapse");
        tokio::time::advance(FLEET_TTL).await;
        assert!(!m.valid(now_ms()), "renewals failed: L1 must stop before the entry expires");
        assert!(m.renewed(now_ms()), "renewed after a lapse");
        assert_eq!(m.lapses(), lapses + 1);
    }

    fn event(n: usize) -> Event {
        Event::updated(&format!("t:k:{n}:full"), "other")
    }

    /// A burst past the subscriber's buffer must not end forwarding: the
    /// lost events are announced as a gap, and later events still arrive.
    #[tokio::test]
    async fn a_burst_past_the_subscriber_buffer_is_a_gap_not_the_end() {
        let (redis_tx, redis_rx) = broadcast::channel::<Event>(4);
        let fanout = Fanout::new(Retention::default());
        let mut local = fanout.local.subscribe();
        let (mut journaled, _) = fanout.journal.subscribe(None);
        for n in 0..10 {
            redis_tx.send(event(n)).unwrap(); // 6 of these overflow the buffer of 4
        }
        let forwarder = tokio::spawn(forward(redis_rx, fanout.clone(), |e: &Event| Some(e.clone())));
        let first = tokio::time::timeout(Duration::from_secs(5), local.recv()).await.unwrap().unwrap();
        assert!(matches!(first, BusMessage::Gap), "the lost events are announced first: {first:?}");
        let mut keys = Vec::new();
        for _ in 0..4 {
            match tokio::time::timeout(Duration::from_secs(5), local.recv()).await.unwrap().unwrap() {
                BusMessage::Event(e) => keys.push(e.keys[0].clone()),
                BusMessage::Gap => panic!("one gap for one burst"),
            }
        }
        assert_eq!(keys, ["t:k:6:full", "t:k:7:full", "t:k:8:full", "t:k:9:full"]);
        redis_tx.send(event(99)).unwrap();
        match tokio::time::timeout(Duration::from_secs(5), local.recv()).await.unwrap().unwrap() {
            BusMessage::Event(e) => assert_eq!(e.keys, ["t:k:99:full"], "still forwarding after the burst"),
            BusMessage::Gap => panic!("no new gap"),
        }
        let first = journaled.recv().await.unwrap();
        assert!(matches!(first.msg, BusMessage::Gap) && first.seq == 1, "the journal saw the same, numbered");
        drop(redis_tx);
        tokio::time::timeout(Duration::from_secs(5), forwarder)
            .await
            .expect("ends when the subscriber closes")
            .unwrap();
    }
}
