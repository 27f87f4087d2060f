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
//! Purges that promise read-your-invalidation are published with an
//! acknowledgement counter ([`Bus::publish_acked`]); every instance's
//! follower bumps it ([`Bus::acknowledge`]) once it dropped its copies.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{ClientLike, EventInterface, KeysInterface, Pool, PubsubInterface};
use fred::types::config::Config as RedisConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::error::{Error, Result};

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

pub struct Bus {
    fanout: broadcast::Sender<BusMessage>,
    redis: Option<RedisBus>,
    pub instance_id: String,
    published: AtomicU64,
    /// Instances subscribed to the bus (this one included), as last seen:
    /// the fleet that shares the upstream budgets.
    fleet: Arc<AtomicUsize>,
}

/// How often the fleet size is read from Redis.
const FLEET_EVERY: Duration = Duration::from_secs(2);

struct RedisBus {
    /// The namespace, for acknowledgement counter keys.
    env: String,
    pool: Pool,
    channel: String,
    _subscriber: fred::clients::SubscriberClient,
    _resubscriber: tokio::task::JoinHandle<()>,
}

impl Bus {
    /// An in-process bus (embedded mode: one instance).
    pub fn local(instance_id: String) -> Arc<Bus> {
        let (fanout, _) = broadcast::channel(FANOUT_CAPACITY);
        let fleet = Arc::new(AtomicUsize::new(1));
        Arc::new(Bus { fanout, redis: None, instance_id, published: AtomicU64::new(0), fleet })
    }

    /// A bus over Redis sharded pub/sub on the channel of `env`.
    pub async fn redis(
        instance_id: String,
        env: &str,
        pool: Pool,
        url: &str,
        command_timeout: Duration,
    ) -> Result<Arc<Bus>> {
        let (fanout, _) = broadcast::channel(FANOUT_CAPACITY);
        let channel = crate::keys::bus_channel(env);
        let mut config = RedisConfig::from_url(url).map_err(|e| Error::Store(format!("redis url: {e}")))?;
        // TLS as the store's pool has it (issue 13: configured CA / client certificate).
        config.tls = pool.next().client_config().tls.clone();
        let subscriber = fred::prelude::Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = command_timeout)
            .set_policy(fred::prelude::ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
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
                let _ = tx.send(BusMessage::Gap);
            }
        });
        subscriber.ssubscribe(channel.clone()).await.map_err(|e| Error::Store(e.to_string()))?;
        let fleet = Arc::new(AtomicUsize::new(1));
        tokio::spawn(count_fleet(pool.clone(), channel.clone(), Arc::downgrade(&fleet)));
        Ok(Arc::new(Bus {
            fanout,
            redis: Some(RedisBus {
                env: env.to_string(),
                pool,
                channel,
                _subscriber: subscriber,
                _resubscriber: resubscriber,
            }),
            instance_id,
            published: AtomicU64::new(0),
            fleet,
        }))
    }

    /// Publishes `event` to every instance (this one included). Returns how
    /// many instances' subscribers received it (in-process: 1). A failed
    /// publish is reported locally as a gap.
    pub async fn publish(&self, event: Event) -> Result<u64> {
        self.published.fetch_add(1, Ordering::Relaxed);
        match &self.redis {
            None => {
                let _ = self.fanout.send(BusMessage::Event(Arc::new(event)));
                Ok(1)
            }
            Some(r) => {
                let payload = serde_json::to_vec(&event).map_err(|e| Error::Internal(e.to_string()))?;
                match r.pool.next().spublish::<u64, _, _>(r.channel.as_str(), payload).await {
                    Ok(n) => {
                        self.fleet.store((n as usize).max(1), Ordering::Relaxed);
                        Ok(n)
                    }
                    Err(e) => {
                        let _ = self.fanout.send(BusMessage::Gap);
                        Err(Error::Store(format!("bus publish: {e}")))
                    }
                }
            }
        }
    }

    /// How many instances share the bus (and so the upstream budgets), kept
    /// current while the bus runs; at least 1.
    pub fn fleet(&self) -> Arc<AtomicUsize> {
        self.fleet.clone()
    }

    /// A receiver of everything published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.fanout.subscribe()
    }

    /// Publishes `event` and waits (at most `timeout`) until every
    /// instance that received it acknowledged it; past `timeout`, a
    /// retryable [`Error::Unavailable`]. In-process there is no one else to
    /// wait for.
    pub async fn publish_acked(&self, mut event: Event, timeout: Duration) -> Result<()> {
        let Some(r) = &self.redis else { return self.publish(event).await.map(drop) };
        let counter = crate::keys::ack_counter(&r.env, &uuid::Uuid::new_v4().simple().to_string());
        event.ack = Some(counter.clone());
        let receivers = self.publish(event).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let got: u64 = r.pool.get::<Option<u64>, _>(counter.as_str()).await.ok().flatten().unwrap_or(0);
            if got >= receivers {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    expected = receivers,
                    got,
                    "not every instance acknowledged the purge in time"
                );
                // An instance that heard the purge may still hold the old
                // value: no OK the fleet cannot stand behind.
                return Err(Error::Unavailable {
                    message: format!(
                        "{got} of {receivers} instances acknowledged the purge within {timeout:?}; retry"
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
        if let (Some(counter), Some(r)) = (&event.ack, &self.redis) {
            let _ = r.pool.incr::<i64, _>(counter.as_str()).await;
            let _ = r.pool.pexpire::<i64, _>(counter.as_str(), 30_000, None).await;
        }
    }
}

/// Keeps `fleet` at the number of subscribers of the bus channel (PUBSUB
/// SHARDNUMSUB) until the bus is dropped; the last count stands while Redis
/// is unreachable.
async fn count_fleet(pool: Pool, channel: String, fleet: std::sync::Weak<AtomicUsize>) {
    loop {
        let Some(fleet) = fleet.upgrade() else { return };
        let reply = pool.next().pubsub_shardnumsub::<Vec<fred::types::Value>, _>(channel.as_str()).await;
        if let Ok(values) = reply {
            if let Some(n) = values.get(1).and_then(|v| v.as_u64()) {
                fleet.store((n as usize).max(1), Ordering::Relaxed);
            }
        }
        drop(fleet);
        tokio::time::sleep(FLEET_EVERY).await;
    }
}

/// Forwards what the Redis subscriber receives to the local fan-out until
/// the subscriber closes. A burst that outruns the subscriber's buffer is a
/// gap, announced as one, and forwarding goes on.
async fn forward<M: Clone>(
    mut messages: broadcast::Receiver<M>,
    tx: broadcast::Sender<BusMessage>,
    decode: impl Fn(&M) -> Option<Event>,
) {
    loop {
        match messages.recv().await {
            Ok(msg) => match decode(&msg) {
                Some(event) => {
                    let _ = tx.send(BusMessage::Event(Arc::new(event)));
                }
                None => tracing::warn!("undecodable bus message ignored"),
            },
            Err(broadcast::error::RecvError::Lagged(lost)) => {
                tracing::warn!(lost, "invalidation bus subscriber fell behind: treating it as lost events");
                let _ = tx.send(BusMessage::Gap);
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

    fn event(n: usize) -> Event {
        Event::updated(&format!("t:k:{n}:full"), "other")
    }

    /// A burst past the subscriber's buffer must not end forwarding: the
    /// lost events are announced as a gap, and later events still arrive.
    #[tokio::test]
    async fn a_burst_past_the_subscriber_buffer_is_a_gap_not_the_end() {
        let (redis_tx, redis_rx) = broadcast::channel::<Event>(4);
        let (fanout, mut local) = broadcast::channel(64);
        for n in 0..10 {
            redis_tx.send(event(n)).unwrap(); // 6 of these overflow the buffer of 4
        }
        let forwarder = tokio::spawn(forward(redis_rx, fanout, |e: &Event| Some(e.clone())));
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
        drop(redis_tx);
        tokio::time::timeout(Duration::from_secs(5), forwarder)
            .await
            .expect("ends when the subscriber closes")
            .unwrap();
    }
}
