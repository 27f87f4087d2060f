//! A stream's outbox: numbers what it sends, turns a full buffer into one
//! LAGGED event (never silent loss, never unbounded memory), and stamps
//! every event with the journal position it covers.

use tokio::sync::mpsc;
use tonic::Status;

use crate::bus::{Event, EventKind};
use crate::keys;
use crate::proto::v1::{watch_event::Type, WatchEvent};

use super::filter::Filter;

/// The subscriber went away.
pub struct Closed;

pub struct Outbox {
    tx: mpsc::Sender<Result<WatchEvent, Status>>,
    epoch: String,
    /// Events sent (the next one is numbered `sent + 1`).
    sent: u64,
    /// Journal position everything before which was handled.
    pub at: u64,
    /// Events were dropped; a LAGGED is owed.
    pub lagging: bool,
}

impl Outbox {
    pub fn new(tx: mpsc::Sender<Result<WatchEvent, Status>>, epoch: String, at: u64) -> Outbox {
        Outbox { tx, epoch, sent: 0, at, lagging: false }
    }

    pub fn closed(&self) -> &mpsc::Sender<Result<WatchEvent, Status>> {
        &self.tx
    }

    fn position(&self, seq: u64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    /// The events `event` (journal position `seq`) means for this filter.
    /// All but the last carry the position before `seq`: a stream cut in
    /// the middle of a multi-key event resumes with the whole event again
    /// (a repeated INVALIDATED is harmless, a missing one is not).
    pub fn events_for(&self, filter: &Filter, event: &Event, seq: u64) -> Vec<WatchEvent> {
        if !filter.wants(event) {
            return Vec::new();
        }
        let matched: Vec<&String> = event.keys.iter().filter(|k| filter.matches(k)).collect();
        let last = matched.len().saturating_sub(1);
        let ty = match event.kind {
            EventKind::Invalidated => Type::Invalidated,
            EventKind::Updated => Type::Updated,
        };
        matched
            .into_iter()
            .enumerate()
            .map(|(i, key)| WatchEvent {
                r#type: ty as i32,
                key: key.clone(),
                prefix: event.prefix.clone().unwrap_or_default(),
                tag: event.tag.clone().unwrap_or_default(),
                kind: keys::kind_of(key).unwrap_or_default().to_string(),
                reason: event.reason.clone(),
                time: Some(timestamp(event.at_ms)),
                sequence: 0,
                position: self.position(if i == last { seq } else { seq - 1 }),
            })
            .collect()
    }

    /// An event of `ty` about the stream itself (HEARTBEAT, RESET, LAGGED).
    pub fn marker(&self, ty: Type, reason: &str) -> WatchEvent {
        WatchEvent {
            r#type: ty as i32,
            reason: reason.to_string(),
            time: Some(timestamp(crate::entry::now_ms())),
            position: self.position(self.at),
            ..Default::default()
        }
    }

    /// Sends live events, without waiting: a full buffer drops them and a
    /// LAGGED is owed.
    pub fn deliver(&mut self, events: Vec<WatchEvent>) -> Result<(), Closed> {
        for ev in events {
            self.flush_lag()?;
            if self.lagging {
                return Ok(()); // still no room: covered by the LAGGED to come
            }
            self.try_send(ev)?;
        }
        Ok(())
    }

    /// Sends, waiting for room (replays and the first events of a stream:
    /// bounded, and nothing else is owed yet).
    pub async fn send(&mut self, mut ev: WatchEvent) -> Result<(), Closed> {
        ev.sequence = self.sent + 1;
        self.tx.send(Ok(ev)).await.map_err(|_| Closed)?;
        self.sent += 1;
        Ok(())
    }

    /// Sends a HEARTBEAT if there is room and nothing is owed (a skipped
    /// heartbeat only makes the subscriber's view look older, as it is).
    pub fn heartbeat(&mut self) -> Result<(), Closed> {
        if self.lagging {
            return Ok(());
        }
        let ev = self.marker(Type::Heartbeat, "");
        self.offer(ev).map(drop)
    }

    /// Delivers the pending LAGGED event if there is room now.
    pub fn flush_lag(&mut self) -> Result<(), Closed> {
        if !self.lagging {
            return Ok(());
        }
        let ev = self.marker(Type::Lagged, "subscriber fell behind; events were dropped: resync");
        if self.offer(ev)? {
            self.lagging = false;
            crate::metrics::watch_lagged();
        }
        Ok(())
    }

    /// A live event: a full buffer drops it and a LAGGED is owed.
    fn try_send(&mut self, ev: WatchEvent) -> Result<(), Closed> {
        if !self.offer(ev)? {
            self.lagging = true;
        }
        Ok(())
    }

    /// Numbers and sends `ev` if there is room; whether it went.
    fn offer(&mut self, mut ev: WatchEvent) -> Result<bool, Closed> {
        ev.sequence = self.sent + 1;
        match self.tx.try_send(Ok(ev)) {
            Ok(()) => {
                self.sent += 1;
                Ok(true)
            }
            Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
        }
    }
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}
