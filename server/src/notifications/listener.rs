//! The leader's work while it holds the lease: keep channels subscribed to
//! the wanted topics, purge on their events, and purge whatever a gap may
//! have hidden.
//!
//! Coverage rules (never silent staleness):
//! - taking over: every cached key of a topic kind is purged once the new
//!   channels are subscribed and connected (the predecessor's last events,
//!   and anything during the lease gap, are unknown);
//! - a socket lost unexpectedly: reconnect with backoff (a new channel if the
//!   old one is gone); its topics are purged on every tick while uncovered
//!   and once more when covered again;
//! - a failed subscription, or topics beyond the channel limits: purged on
//!   every tick until subscribed;
//! - channel expiry and the closing warning: a new channel (or socket) is
//!   subscribed and connected before the old one is dropped; events arriving
//!   on both are purged twice at worst (duplicates are skipped by hash).

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use super::channels::{Api, Created};
use super::placement::{self, Limits, Plan};
use super::socket::{self, ConnectError, Report, Socket};
use super::topics::Target;
use super::{Ctx, ListenerStatus};
use crate::bus::{BusMessage, EventKind};
use crate::invalidation::Purge;
use crate::leader::Leadership;

/// Longest wait for a WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Raw messages remembered to skip duplicates (overlapping channels).
const DEDUPE: usize = 4096;
/// A newly cached key's topic is subscribed this soon after its store is announced.
const SOON: Duration = Duration::from_millis(20);
/// Longest time spent unsubscribing channels when a tenure ends.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);
/// A socket being replaced keeps reading this long after its successor is
/// up: events already on the wire to it are still heard (and deduplicated).
const DRAIN: Duration = Duration::from_secs(2);
/// The record of held channels outlives any channel (24 h on the platform).
const CHANNEL_RECORD_TTL: Duration = Duration::from_secs(25 * 3600);

/// Lets a replaced socket keep reading for [`DRAIN`] before it closes, so
/// an event already sent to it is not cut off mid-way.
fn retire(old: Option<Socket>) {
    if let Some(sock) = old {
        tokio::spawn(async move {
            tokio::time::sleep(DRAIN).await;
            drop(sock);
        });
    }
}

/// Drops a channel's subscriptions; best effort (a channel left
/// subscribed still expires by itself).
async fn unsubscribe(api: &Api, id: &str) {
    if let Err(e) = api.clear(id).await {
        tracing::debug!(channel = %id, error = %e, "unsubscribing a channel failed; it expires by itself");
    }
}

/// Why a tenure ended.
pub enum End {
    Shutdown,
    LeaseLost,
}

/// One channel the listener holds.
struct ChannelSlot {
    n: u64,
    channel: Created,
    /// Topics this channel should carry.
    want: BTreeSet<String>,
    /// Topics the platform confirmed for it.
    subscribed: BTreeSet<String>,
    socket: Option<Socket>,
    last_seen: Instant,
    /// Reconnect: next attempt and attempts so far.
    retry_at: Option<Instant>,
    attempts: u32,
    /// Events may have been missed since the socket was lost.
    gap: bool,
    /// Next attempt to replace the channel before it expires.
    replace_at: Instant,
}

pub struct Tenure<'a> {
    ctx: &'a Ctx,
    api: Api,
    slots: Vec<ChannelSlot>,
    next_slot: u64,
    next_conn: u64,
    tx: socket::Reports,
    rx: mpsc::UnboundedReceiver<(u64, u64, Report)>,
    wanted: BTreeMap<String, Target>,
    seen: HashSet<u64>,
    seen_order: VecDeque<u64>,
    reconcile_at: Instant,
    /// Channel ids last recorded in the store.
    recorded: Vec<String>,
}

impl<'a> Tenure<'a> {
    pub fn new(ctx: &'a Ctx) -> Tenure<'a> {
        let (tx, rx) = mpsc::unbounded_channel();
        Tenure {
            ctx,
            api: Api::new(ctx.upstream.clone(), ctx.settings.client_id.clone()),
            slots: Vec::new(),
            next_slot: 0,
            next_conn: 0,
            tx,
            rx,
            wanted: BTreeMap::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            reconcile_at: Instant::now(),
            recorded: Vec::new(),
        }
    }

    /// Runs until the lease is lost or shutdown; on return its channels are
    /// unsubscribed (best effort) and the sockets close.
    pub async fn run(mut self, lease: &Leadership, shutdown: &mut watch::Receiver<bool>) -> End {
        self.clear_predecessors().await;
        let end = self.listen(lease, shutdown).await;
        let ids: Vec<String> = self.slots.iter().map(|s| s.channel.id.clone()).collect();
        let _ = tokio::time::timeout(RELEASE_TIMEOUT, self.clear_channels(&ids)).await;
        end
    }

    /// Unsubscribes the channels a previous holder recorded (it may have
    /// died holding them: the platform would keep delivering to them, and
    /// they count against the channel limit until they expire).
    async fn clear_predecessors(&mut self) {
        let key = crate::keys::listener_channels(&self.ctx.env);
        let ids: Vec<String> = match self.ctx.store.get(&key).await {
            Ok(Some(raw)) => serde_json::from_slice(&raw).unwrap_or_default(),
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::debug!(error = %e, "reading the previous listener's channels failed");
                Vec::new()
            }
        };
        if !ids.is_empty() {
            tracing::info!(channels = ids.len(), "unsubscribing the previous listener's channels");
            let _ = tokio::time::timeout(RELEASE_TIMEOUT, self.clear_channels(&ids)).await;
        }
    }

    async fn clear_channels(&self, ids: &[String]) {
        for id in ids {
            unsubscribe(&self.api, id).await;
        }
    }

    /// Records the channels held, for a successor (only when they changed).
    async fn record_channels(&mut self) {
        let ids: Vec<String> = self.slots.iter().map(|s| s.channel.id.clone()).collect();
        if ids == self.recorded {
            return;
        }
        let key = crate::keys::listener_channels(&self.ctx.env);
        let raw = serde_json::to_vec(&ids).unwrap_or_default();
        match self.ctx.store.set(&key, raw.into(), CHANNEL_RECORD_TTL).await {
            Ok(()) => self.recorded = ids,
            Err(e) => tracing::debug!(error = %e, "recording the listener's channels failed; retried"),
        }
    }

    async fn listen(&mut self, lease: &Leadership, shutdown: &mut watch::Receiver<bool>) -> End {
        let mut bus = self.ctx.bus.subscribe();
        self.reconcile().await;
        // Awaited: once this instance reports itself the listener, nothing
        // its predecessor may have missed is still served.
        if let Some(p) = self.ctx.kinds.takeover_purge(&self.ctx.env) {
            if let Err(e) = self.ctx.invalidator.purge(p, None).await {
                tracing::warn!(error = %e, "takeover purge failed");
            }
        }
        let mut keeper = lease.keep();
        loop {
            self.publish_status(true);
            self.record_channels().await;
            let wake = self.next_wake();
            tokio::select! {
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return End::Shutdown,
                _ = keeper.lost() => return End::LeaseLost,
                Some((slot, conn, report)) = self.rx.recv() => self.on_report(slot, conn, report).await,
                msg = bus.recv() => match msg {
                    Ok(BusMessage::Event(e)) if e.kind == EventKind::Updated => {
                        let unplaced = e.keys.iter().filter_map(|k| self.ctx.kinds.topic_of_key(k))
                            .any(|t| !self.is_placed(&t));
                        if unplaced {
                            self.reconcile_at = self.reconcile_at.min(Instant::now() + SOON);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.reconcile_at = Instant::now(),
                    _ => {}
                },
                _ = tokio::time::sleep_until(wake) => self.tick().await,
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = self.reconcile_at;
        for s in &self.slots {
            wake = wake.min(s.replace_at);
            if let Some(r) = s.retry_at {
                wake = wake.min(r);
            }
            if s.socket.is_some() {
                wake = wake.min(s.last_seen + self.ctx.settings.heartbeat_timeout);
            }
        }
        wake
    }

    async fn tick(&mut self) {
        let now = Instant::now();
        // Silent sockets are treated as lost.
        for s in &mut self.slots {
            if s.socket.is_some() && now.duration_since(s.last_seen) >= self.ctx.settings.heartbeat_timeout {
                tracing::warn!(channel = %s.channel.id, "no heartbeat: reconnecting");
                s.socket = None;
                s.gap = true;
                s.retry_at = Some(now);
            }
        }
        let due: Vec<u64> =
            self.slots.iter().filter(|s| s.retry_at.is_some_and(|r| r <= now)).map(|s| s.n).collect();
        for n in due {
            self.reconnect(n).await;
        }
        let due: Vec<u64> =
            self.slots.iter().filter(|s| s.socket.is_some() && s.replace_at <= now).map(|s| s.n).collect();
        for n in due {
            self.replace(n).await;
        }
        if Instant::now() >= self.reconcile_at {
            self.reconcile().await;
        }
    }

    /// Whether a channel already carries (or is to carry) `topic`.
    fn is_placed(&self, topic: &str) -> bool {
        self.slots.iter().any(|s| s.want.contains(topic))
    }

    fn slot(&mut self, n: u64) -> Option<&mut ChannelSlot> {
        self.slots.iter_mut().find(|s| s.n == n)
    }

    async fn on_report(&mut self, n: u64, conn: u64, report: Report) {
        let now = Instant::now();
        match report {
            Report::Event { topic, body, raw } => {
                if let Some(s) = self.slot(n) {
                    s.last_seen = now;
                }
                if !self.first_time(&raw) {
                    return;
                }
                match self.ctx.kinds.event_purge(&self.ctx.mappings, &self.ctx.env, &topic, &body) {
                    Some(p) => {
                        self.ctx.status.lock().events += 1;
                        self.purge(p);
                    }
                    None => tracing::debug!(%topic, "notification with no mapping ignored"),
                }
            }
            Report::Heartbeat => {
                if let Some(s) = self.slot(n) {
                    s.last_seen = now;
                }
            }
            Report::Closing => {
                // Open a second socket to the same channel now, then drop
                // the warned one: both are up in between, so nothing is lost.
                let Some(uri) = self.slot(n).map(|s| s.channel.connect_uri.clone()) else { return };
                tracing::info!(channel = %uri, "socket closing warning: reconnecting");
                let conn = self.conn();
                match socket::connect(&uri, n, conn, self.tx.clone(), CONNECT_TIMEOUT).await {
                    Ok(sock) => {
                        if let Some(s) = self.slot(n) {
                            retire(s.socket.replace(sock));
                            s.last_seen = Instant::now();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = ?e, "reconnect after closing warning failed; will retry")
                    }
                }
            }
            Report::Ended { clean, why } => {
                let Some(s) = self.slot(n) else { return };
                if s.socket.as_ref().is_some_and(|sock| sock.conn == conn) {
                    tracing::warn!(channel = %s.channel.id, clean, %why, "notification socket lost");
                    s.socket = None;
                    s.gap = true;
                    s.retry_at = Some(now);
                }
            }
        }
    }

    fn first_time(&mut self, raw: &str) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        raw.hash(&mut h);
        let h = h.finish();
        if !self.seen.insert(h) {
            return false;
        }
        self.seen_order.push_back(h);
        if self.seen_order.len() > DEDUPE {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    fn conn(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let s = &self.ctx.settings;
        let exp = s.backoff_base.saturating_mul(1 << attempts.min(16)).min(s.backoff_cap);
        exp.mul_f64(rand::thread_rng().gen_range(0.5..1.0))
    }

    fn replace_at(&self, channel: &Created) -> Instant {
        let now = Instant::now();
        let life = channel.expires.saturating_duration_since(now);
        // Never closer than half the channel's life, so a short-lived
        // channel is not replaced in a loop.
        now + life.saturating_sub(self.ctx.settings.renew_before).max(life / 2)
    }

    /// A new channel subscribed to `topics` and connected, or why not.
    async fn open(&mut self, n: u64, topics: &BTreeSet<String>) -> Result<(Created, Socket), String> {
        let channel = self.api.create().await.map_err(|e| format!("creating a channel: {e}"))?;
        let conn = self.conn();
        let sock = socket::connect(&channel.connect_uri, n, conn, self.tx.clone(), CONNECT_TIMEOUT)
            .await
            .map_err(|e| format!("connecting {}: {e:?}", channel.id))?;
        if !topics.is_empty() {
            self.api.replace(&channel.id, topics).await.map_err(|e| format!("subscribing: {e}"))?;
        }
        Ok((channel, sock))
    }

    /// Reconnects a lost socket (a new channel if the old one is gone), then
    /// purges what the gap may have hidden.
    async fn reconnect(&mut self, n: u64) {
        let Some((uri, want)) = self.slot(n).map(|s| (s.channel.connect_uri.clone(), s.want.clone())) else {
            return;
        };
        let conn = self.conn();
        let result = match socket::connect(&uri, n, conn, self.tx.clone(), CONNECT_TIMEOUT).await {
            Ok(sock) => Ok((None, sock)),
            Err(ConnectError::Gone(why)) => {
                tracing::info!(%why, "channel gone: opening a new one");
                self.open(n, &want).await.map(|(c, sock)| (Some((c, want)), sock))
            }
            Err(ConnectError::Failed(why)) => Err(why),
        };
        let attempts = self.slot(n).map_or(0, |s| s.attempts);
        let wait = self.backoff(attempts);
        let replace_at = match &result {
            Ok((Some((c, _)), _)) => Some(self.replace_at(c)),
            _ => None,
        };
        let Some(s) = self.slot(n) else { return };
        match result {
            Ok((fresh, sock)) => {
                if let Some((channel, subscribed)) = fresh {
                    s.channel = channel;
                    s.subscribed = subscribed;
                }
                if let Some(at) = replace_at {
                    s.replace_at = at;
                }
                s.socket = Some(sock);
                s.last_seen = Instant::now();
                s.retry_at = None;
                s.attempts = 0;
                tracing::info!(channel = %s.channel.id, "notification socket reconnected");
                if std::mem::take(&mut s.gap) {
                    let topics: Vec<String> = s.subscribed.iter().cloned().collect();
                    self.purge_topics(&topics, "socket reconnected");
                }
            }
            Err(why) => {
                tracing::warn!(channel = %s.channel.id, %why, ?wait, "notification reconnect failed");
                s.attempts += 1;
                s.retry_at = Some(Instant::now() + wait);
            }
        }
    }

    /// Replaces a channel before it expires: the new one is subscribed and
    /// connected before the old one is dropped.
    async fn replace(&mut self, n: u64) {
        let Some(want) = self.slot(n).map(|s| s.subscribed.clone()) else { return };
        match self.open(n, &want).await {
            Ok((channel, sock)) => {
                let at = self.replace_at(&channel);
                let mut old = None;
                if let Some(s) = self.slot(n) {
                    tracing::info!(old = %s.channel.id, new = %channel.id, "channel replaced before expiry");
                    old = Some(std::mem::replace(&mut s.channel, channel).id);
                    retire(s.socket.replace(sock));
                    s.last_seen = Instant::now();
                    s.replace_at = at;
                }
                // The new channel is up: once the old socket has drained,
                // the old channel's topics go quiet.
                if let Some(old) = old {
                    let api = self.api.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(DRAIN).await;
                        unsubscribe(&api, &old).await;
                    });
                }
            }
            Err(why) => {
                tracing::warn!(%why, "channel replacement failed; retrying");
                if let Some(s) = self.slot(n) {
                    s.replace_at = Instant::now() + Duration::from_secs(1);
                }
            }
        }
    }

    /// Brings channels in line with the wanted topics.
    async fn reconcile(&mut self) {
        let settings = &self.ctx.settings;
        self.reconcile_at = Instant::now() + settings.reconcile_interval;
        let wanted = match self.ctx.kinds.wanted(self.ctx.store.as_ref(), &self.ctx.env).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "reading cached keys failed; topics unchanged");
                return;
            }
        };
        // Where topics go is decided by the planner; this performs it.
        let held: Vec<&BTreeSet<String>> = self.slots.iter().map(|s| &s.want).collect();
        let limits =
            Limits { max_channels: settings.max_channels, topics_per_channel: settings.topics_per_channel };
        let Plan { release, subscribe, open: opens, let_go, uncovered } =
            placement::plan(wanted.keys().map(String::as_str), &held, limits);
        for (i, gone) in release {
            self.slots[i].want.retain(|t| !gone.contains(t));
        }
        for (i, add) in subscribe {
            self.slots[i].want.extend(add);
        }
        let mut uncovered: Vec<String> = uncovered.into_iter().collect();
        let mut opens = opens.into_iter();
        while let Some(want) = opens.next() {
            let n = self.next_slot;
            self.next_slot += 1;
            match self.open(n, &BTreeSet::new()).await {
                Ok((channel, sock)) => {
                    let replace_at = self.replace_at(&channel);
                    tracing::info!(channel = %channel.id, topics = want.len(), "notification channel opened");
                    self.slots.push(ChannelSlot {
                        n,
                        channel,
                        want,
                        subscribed: BTreeSet::new(),
                        socket: Some(sock),
                        last_seen: Instant::now(),
                        retry_at: None,
                        attempts: 0,
                        gap: false,
                        replace_at,
                    });
                }
                Err(why) => {
                    tracing::warn!(%why, "opening a notification channel failed");
                    uncovered.extend(want);
                    uncovered.extend(opens.by_ref().flatten());
                    break;
                }
            }
        }
        // Subscribe what changed.
        if !uncovered.is_empty() {
            tracing::warn!(topics = uncovered.len(), "topics beyond the channel limits: purged instead");
        }
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.want != s.subscribed {
                let (id, want) = (s.channel.id.clone(), s.want.clone());
                match self.api.replace(&id, &want).await {
                    Ok(()) => self.slots[i].subscribed = want,
                    Err(e) => {
                        tracing::warn!(channel = %id, error = %e, "subscription failed; purging its new topics");
                        uncovered.extend(want.difference(&self.slots[i].subscribed).cloned());
                        let keep: BTreeSet<String> =
                            self.slots[i].subscribed.intersection(&want).cloned().collect();
                        self.slots[i].subscribed = keep;
                    }
                }
            }
            // A lost socket's topics stay uncovered until it is back.
            if self.slots[i].socket.is_none() {
                uncovered.extend(self.slots[i].subscribed.iter().cloned());
            }
        }
        // Channels left with nothing to carry (now unsubscribed) are let go;
        // the platform drops them when they expire.
        if !let_go.is_empty() {
            let mut i = 0;
            self.slots.retain(|_| {
                let keep = !let_go.contains(&i);
                i += 1;
                keep
            });
            tracing::info!(released = let_go.len(), "empty notification channels released");
        }
        self.wanted = wanted;
        if !uncovered.is_empty() {
            self.purge_topics(&uncovered, "topics not covered");
        }
    }

    fn purge_topics(&self, topics: &[String], why: &str) {
        let targets: Vec<&Target> = topics.iter().filter_map(|t| self.wanted.get(t)).collect();
        let owned: Vec<Target>;
        let targets: Vec<&Target> = if targets.len() == topics.len() {
            targets
        } else {
            owned = topics.iter().filter_map(|t| self.ctx.kinds.target_of(t)).collect();
            owned.iter().collect()
        };
        self.ctx.status.lock().gap_purges += 1;
        for p in self.ctx.kinds.gap_purges(&self.ctx.env, targets, why) {
            self.purge(p);
        }
    }

    fn purge(&self, p: Purge) {
        let invalidator = self.ctx.invalidator.clone();
        tokio::spawn(async move {
            if let Err(e) = invalidator.purge(p, None).await {
                tracing::warn!(error = %e, "notification purge failed");
            }
        });
    }

    fn publish_status(&self, leader: bool) {
        let mut st = self.ctx.status.lock();
        *st = ListenerStatus {
            leader,
            channels: self.slots.iter().map(|s| s.channel.id.clone()).collect(),
            topics: self.slots.iter().map(|s| s.subscribed.len()).sum(),
            connected: self.slots.iter().filter(|s| s.socket.is_some()).count(),
            events: st.events,
            gap_purges: st.gap_purges,
        };
    }
}
