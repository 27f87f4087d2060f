//! `Watch` streams: a subscriber names keys, prefixes or kinds and receives
//! INVALIDATED / UPDATED events for them from the bus.
//!
//! Each stream has a bounded buffer. When a subscriber reads too slowly the
//! buffer fills, further events are dropped, and as soon as there is room
//! the subscriber gets one LAGGED event ("resync"): never silent loss, never
//! unbounded memory. Sequence numbers count delivered events without gaps.
//! Streams end cleanly when the server shuts down.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::bus::{Bus, BusMessage, Event, EventKind};
use crate::catalog::Catalog;
use crate::error::{Error, FieldViolation, Result};
use crate::keys;
use crate::proto::v1::{watch_event::Type, WatchEvent, WatchRequest};

/// Current Watch subscribers (for metrics).
pub static SUBSCRIBERS: AtomicI64 = AtomicI64::new(0);

/// What a subscriber asked to hear about.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    keys: Vec<String>,
    prefixes: Vec<String>,
    kinds: Vec<String>,
    tags: Vec<String>,
    /// Resolves a key's tags (from its kind and id) for tag filters.
    catalog: Option<Arc<Catalog>>,
}

impl Filter {
    pub fn from_request(req: &WatchRequest, catalog: Arc<Catalog>) -> Result<Filter> {
        if req.keys.is_empty() && req.prefixes.is_empty() && req.kinds.is_empty() && req.tags.is_empty() {
            return Err(Error::InvalidArgument(vec![FieldViolation::new(
                "keys",
                "name at least one key, prefix, kind or tag to watch",
            )]));
        }
        Ok(Filter {
            keys: req.keys.clone(),
            prefixes: req.prefixes.clone(),
            kinds: req.kinds.clone(),
            tags: req.tags.clone(),
            catalog: Some(catalog),
        })
    }

    fn matches(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k == key)
            || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
            || keys::kind_of(key).is_some_and(|kind| self.kinds.iter().any(|k| k == kind))
            || (!self.tags.is_empty() && self.key_tags(key).iter().any(|t| self.tags.contains(t)))
    }

    /// The tags a key's entry carries: its kind's tag templates with the id.
    fn key_tags(&self, key: &str) -> Vec<String> {
        let (Some(catalog), Some(key)) = (&self.catalog, keys::Key::parse(key)) else { return Vec::new() };
        catalog.get(key.kind).map(|k| k.tags_for(key.id)).unwrap_or_default()
    }
}

/// Starts a stream for `filter`; it ends when the client goes away or
/// `shutdown` turns true.
pub fn open(
    bus: &Bus,
    filter: Filter,
    buffer: usize,
    mut shutdown: watch::Receiver<bool>,
) -> ReceiverStream<Result<WatchEvent, Status>> {
    let (tx, rx) = mpsc::channel(buffer.max(1));
    let mut events = bus.subscribe();
    tokio::spawn(async move {
        SUBSCRIBERS.fetch_add(1, Ordering::Relaxed);
        let mut out = Outbox { tx, seq: 0, lagging: false };
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                _ = out.tx.closed() => break,
                _ = tick.tick() => {
                    if out.flush_lag().is_err() { break; }
                }
                msg = events.recv() => {
                    let alive = match msg {
                        Ok(BusMessage::Event(event)) => out.deliver(&filter, &event),
                        Ok(BusMessage::Gap) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            out.lagging = true;
                            out.flush_lag()
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    };
                    if alive.is_err() { break; }
                }
            }
        }
        SUBSCRIBERS.fetch_sub(1, Ordering::Relaxed);
    });
    ReceiverStream::new(rx)
}

struct Closed;

struct Outbox {
    tx: mpsc::Sender<Result<WatchEvent, Status>>,
    seq: u64,
    lagging: bool,
}

impl Outbox {
    fn deliver(&mut self, filter: &Filter, event: &Event) -> Result<(), Closed> {
        for key in event.keys.iter().filter(|k| filter.matches(k)) {
            self.flush_lag()?;
            if self.lagging {
                continue; // still no room: this event is covered by the LAGGED to come
            }
            let ty = match event.kind {
                EventKind::Invalidated => Type::Invalidated,
                EventKind::Updated => Type::Updated,
            };
            let ev = WatchEvent {
                r#type: ty as i32,
                key: key.clone(),
                prefix: event.prefix.clone().unwrap_or_default(),
                tag: event.tag.clone().unwrap_or_default(),
                kind: keys::kind_of(key).unwrap_or_default().to_string(),
                reason: event.reason.clone(),
                time: Some(timestamp(event.at_ms)),
                sequence: self.seq + 1,
                position: String::new(),
            };
            self.send(ev)?;
        }
        Ok(())
    }

    /// Delivers the pending LAGGED event if there is room now.
    fn flush_lag(&mut self) -> Result<(), Closed> {
        if !self.lagging {
            return Ok(());
        }
        let ev = WatchEvent {
            r#type: Type::Lagged as i32,
            reason: "subscriber fell behind; events were dropped: resync".into(),
            time: Some(timestamp(crate::entry::now_ms())),
            sequence: self.seq + 1,
            ..Default::default()
        };
        match self.tx.try_send(Ok(ev)) {
            Ok(()) => {
                self.seq += 1;
                self.lagging = false;
                crate::metrics::watch_lagged();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
        }
    }

    fn send(&mut self, ev: WatchEvent) -> Result<(), Closed> {
        match self.tx.try_send(Ok(ev)) {
            Ok(()) => {
                self.seq += 1;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagging = true;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
        }
    }
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_keys_prefixes_and_kinds() {
        let catalog = Arc::new(Catalog::with_presets(&Default::default()).unwrap());
        let f = Filter {
            keys: vec!["p:user:1:full".into()],
            prefixes: vec!["p:routing.queue:".into()],
            kinds: vec!["routing.skill".into()],
            tags: vec!["user-routing-status:7".into()],
            catalog: Some(catalog),
        };
        assert!(f.matches("p:user:1:full"));
        assert!(!f.matches("p:user:2:full"));
        assert!(f.matches("p:routing.queue:9:summary"));
        assert!(f.matches("p:routing.skill:3:full"));
        assert!(!f.matches("p:routing.queues:_:full"));
        assert!(f.matches("p:user.routing_status:7:full"));
        assert!(!f.matches("p:user.routing_status:8:full"));
    }
}
