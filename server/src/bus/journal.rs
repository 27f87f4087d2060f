//! The journal: this instance's numbered log of recent bus messages, so a
//! Watch subscriber that lost its stream can resume where it left off.
//!
//! Every message the bus fans out is appended here first, under one lock
//! that also hands it to the journal's own broadcast, so positions follow
//! delivery order and a subscriber that joins at position `p` gets exactly
//! the messages after `p`: the retained ones as a replay, the rest live,
//! none twice, none missing. Retention is bounded by a count of keys and by
//! age; a resume from before what is retained, from another instance or
//! process (a different epoch), or across a gap cannot be honoured and the
//! subscriber is told to reset instead.
//!
//! Messages are appended before the follower sees them, and the follower
//! acknowledges purges: once a purge is acknowledged by this instance,
//! every Watch stream of this instance has it queued.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::BusMessage;

/// Capacity of the journal's broadcast: a stream further behind lags.
const LIVE_CAPACITY: usize = 4096;

/// How much the journal retains.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Keys over all retained messages (a message counts its keys, at least 1).
    pub keys: usize,
    /// Age of the oldest retained message.
    pub age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { keys: 100_000, age: Duration::from_secs(300) }
    }
}

/// One journaled message and its position.
#[derive(Debug, Clone)]
pub struct Logged {
    pub seq: u64,
    pub msg: BusMessage,
}

/// Where a subscriber starts.
#[derive(Debug)]
pub enum Start {
    /// Live from the current position (nothing asked to resume).
    Live { head: u64 },
    /// Everything after the asked position is retained: replay these, then live.
    Replay { events: Vec<Logged>, head: u64 },
    /// The asked position cannot be resumed: reset, then live.
    Reset { head: u64, why: &'static str },
}

/// A position as subscribers see it: `<epoch>-<seq>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub seq: u64,
}

impl Position {
    pub fn parse(s: &str) -> Option<Position> {
        let (epoch, seq) = s.rsplit_once('-')?;
        if epoch.is_empty() {
            return None;
        }
        Some(Position { epoch: epoch.to_string(), seq: seq.parse().ok()? })
    }
}

pub struct Journal {
    /// Random per process: positions of another run never match.
    epoch: String,
    retention: Retention,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Position of the last appended message (0: none yet).
    head: u64,
    ring: VecDeque<(Logged, Instant, usize)>,
    keys: usize,
    live: broadcast::Sender<Logged>,
}

impl Journal {
    pub fn new(retention: Retention) -> Journal {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        Journal {
            epoch: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            retention,
            inner: Mutex::new(Inner { head: 0, ring: VecDeque::new(), keys: 0, live }),
        }
    }

    #[cfg(test)]
    pub fn position(&self, seq: u64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Numbers `msg`, retains it and hands it to live subscribers.
    pub fn append(&self, msg: BusMessage) {
        let weight = match &msg {
            BusMessage::Event(e) => e.keys.len().max(1),
            BusMessage::Gap => 1,
        };
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("journal lock");
        inner.head += 1;
        let logged = Logged { seq: inner.head, msg };
        let _ = inner.live.send(logged.clone());
        inner.ring.push_back((logged, now, weight));
        inner.keys += weight;
        while let Some((_, at, w)) = inner.ring.front() {
            let (at, w) = (*at, *w);
            if inner.keys <= self.retention.keys && now.duration_since(at) <= self.retention.age {
                break;
            }
            inner.ring.pop_front();
            inner.keys -= w;
        }
    }

    /// Subscribes from `after` (a parsed position, or none for live).
    pub fn subscribe(&self, after: Option<&Position>) -> (broadcast::Receiver<Logged>, Start) {
        let now = Instant::now();
        let inner = self.inner.lock().expect("journal lock");
        let rx = inner.live.subscribe();
        let head = inner.head;
        let Some(after) = after else { return (rx, Start::Live { head }) };
        let start = if after.epoch != self.epoch {
            Start::Reset { head, why: "the position is from another instance or an earlier run" }
        } else if after.seq > head {
            Start::Reset { head, why: "the position is ahead of this instance's log" }
        } else {
            // Retained and young enough, oldest first.
            let kept = inner.ring.iter().filter(|(_, at, _)| now.duration_since(*at) <= self.retention.age);
            let oldest = kept.clone().next().map(|(l, _, _)| l.seq).unwrap_or(head + 1);
            if after.seq + 1 < oldest {
                Start::Reset { head, why: "events since the position are no longer retained" }
            } else {
                let events: Vec<Logged> =
                    kept.filter(|(l, _, _)| l.seq > after.seq).map(|(l, _, _)| l.clone()).collect();
                if events.iter().any(|l| matches!(l.msg, BusMessage::Gap)) {
                    Start::Reset { head, why: "events may have been lost since the position" }
                } else {
                    Start::Replay { events, head }
                }
            }
        };
        (rx, start)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::bus::{Event, EventKind};

    fn event(key: &str) -> BusMessage {
        BusMessage::Event(Arc::new(Event {
            kind: EventKind::Invalidated,
            keys: vec![key.into()],
            prefix: None,
            tag: None,
            reason: "t".into(),
            at_ms: 0,
            origin: "o".into(),
            ack: None,
        }))
    }

    fn keys(events: &[Logged]) -> Vec<String> {
        events
            .iter()
            .map(|l| match &l.msg {
                BusMessage::Event(e) => e.keys[0].clone(),
                BusMessage::Gap => "gap".into(),
            })
            .collect()
    }

    fn at(j: &Journal, seq: u64) -> Position {
        Position::parse(&j.position(seq)).unwrap()
    }

    #[tokio::test]
    async fn a_resume_replays_what_followed_and_then_goes_live_without_overlap() {
        let j = Journal::new(Retention::default());
        for k in ["a", "b", "c"] {
            j.append(event(k));
        }
        let (mut rx, start) = j.subscribe(Some(&at(&j, 1)));
        let Start::Replay { events, head } = start else { panic!("{start:?}") };
        assert_eq!(keys(&events), ["b", "c"]);
        assert_eq!(head, 3);
        j.append(event("d"));
        let next = rx.recv().await.unwrap();
        assert_eq!((next.seq, keys(&[next])), (4, vec!["d".to_string()]));
        assert!(rx.try_recv().is_err(), "nothing replayed twice");
    }

    #[tokio::test]
    async fn resuming_at_the_head_replays_nothing() {
        let j = Journal::new(Retention::default());
        j.append(event("a"));
        let (_, start) = j.subscribe(Some(&at(&j, 1)));
        assert!(matches!(start, Start::Replay { ref events, head: 1 } if events.is_empty()), "{start:?}");
        let (_, start) = j.subscribe(Some(&at(&j, 0)));
        assert!(matches!(start, Start::Replay { ref events, .. } if events.len() == 1), "{start:?}");
    }

    #[tokio::test]
    async fn another_epoch_a_future_position_or_a_gap_resets() {
        let j = Journal::new(Retention::default());
        j.append(event("a"));
        let other = Position { epoch: "elsewhere".into(), seq: 1 };
        assert!(matches!(j.subscribe(Some(&other)).1, Start::Reset { .. }));
        assert!(matches!(j.subscribe(Some(&at(&j, 9))).1, Start::Reset { .. }));
        j.append(BusMessage::Gap);
        j.append(event("b"));
        assert!(matches!(j.subscribe(Some(&at(&j, 1))).1, Start::Reset { .. }), "a gap since the position");
        assert!(matches!(j.subscribe(Some(&at(&j, 2))).1, Start::Replay { .. }), "the gap is before it");
    }

    #[tokio::test]
    async fn retention_by_keys_drops_the_oldest_and_a_resume_before_them_resets() {
        let j = Journal::new(Retention { keys: 3, age: Duration::from_secs(60) });
        for k in ["a", "b", "c", "d", "e"] {
            j.append(event(k));
        }
        assert!(matches!(j.subscribe(Some(&at(&j, 1))).1, Start::Reset { .. }), "b was dropped");
        let Start::Replay { events, .. } = j.subscribe(Some(&at(&j, 2))).1 else { panic!() };
        assert_eq!(keys(&events), ["c", "d", "e"]);
    }

    #[tokio::test(start_paused = true)]
    async fn retention_by_age_resets_a_resume_from_too_long_ago() {
        let j = Journal::new(Retention { keys: 1000, age: Duration::from_secs(5) });
        j.append(event("a"));
        j.append(event("b"));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(matches!(j.subscribe(Some(&at(&j, 1))).1, Start::Replay { .. }));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(j.subscribe(Some(&at(&j, 1))).1, Start::Reset { .. }), "b is older than 5 s");
        assert!(
            matches!(j.subscribe(Some(&at(&j, 2))).1, Start::Replay { ref events, .. } if events.is_empty())
        );
    }

    #[test]
    fn positions_parse_back() {
        let j = Journal::new(Retention::default());
        assert_eq!(Position::parse(&j.position(42)), Some(Position { epoch: j.epoch().into(), seq: 42 }));
        assert_eq!(Position::parse("nope"), None);
        assert_eq!(Position::parse("-3"), None);
        assert_eq!(Position::parse("e-x"), None);
    }
}
