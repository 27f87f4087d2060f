//! `Watch` streams: a subscriber names keys, prefixes, kinds or tags and
//! receives INVALIDATED / UPDATED events for them from the bus's journal.
//!
//! - **Resume.** Every event carries the journal position it covers; a
//!   subscriber that reconnects names the last one it handled and gets the
//!   retained events since (replayed before anything live), or one RESET
//!   when they cannot be had (another instance, a restart, past retention,
//!   a gap). See [`crate::bus::Journal`].
//! - **Heartbeats.** A HEARTBEAT goes out first and then at the stream's
//!   interval, after everything queued before it, and only while this
//!   instance's fleet membership holds (the same condition under which its
//!   L1 serves): a subscriber that heard one at time t has heard every purge
//!   acknowledged before t. That is what near caches build their staleness
//!   bound on.
//! - **Bounded.** Each stream has a bounded buffer. When a subscriber reads
//!   too slowly further events are dropped and, as soon as there is room,
//!   it gets one LAGGED event ("resync"). Sequence numbers count delivered
//!   events without gaps. Streams end cleanly when the server shuts down.

mod filter;
mod outbox;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

pub use self::filter::Filter;
use self::outbox::{Closed, Outbox};
use crate::bus::{Bus, BusMessage, Logged, Position, Start};
use crate::error::{Error, FieldViolation, Result};
use crate::proto::v1::{watch_event::Type, WatchEvent, WatchRequest};

/// Current Watch subscribers (for metrics).
pub static SUBSCRIBERS: AtomicI64 = AtomicI64::new(0);

/// The longest HEARTBEAT interval a subscriber may ask for.
const HEARTBEAT_MAX: Duration = Duration::from_secs(3600);

/// How streams behave (`cache.watch_*`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub buffer: usize,
    pub heartbeat: Duration,
    pub heartbeat_min: Duration,
}

/// Where and how a stream starts, from its request.
#[derive(Debug, Clone)]
pub struct Opening {
    pub resume_after: Option<Position>,
    pub heartbeat: Duration,
}

impl Opening {
    pub fn from_request(req: &WatchRequest, settings: &Settings) -> Result<Opening> {
        let resume_after = match req.resume_after.as_str() {
            "" => None,
            s => Some(Position::parse(s).ok_or_else(|| {
                Error::InvalidArgument(vec![FieldViolation::new(
                    "resume_after",
                    "not a position this server gave (WatchEvent.position)",
                )])
            })?),
        };
        let heartbeat = match &req.heartbeat_interval {
            None => settings.heartbeat,
            Some(d) if d.seconds < 0 || d.nanos < 0 => {
                return Err(Error::InvalidArgument(vec![FieldViolation::new(
                    "heartbeat_interval",
                    "must not be negative",
                )]))
            }
            Some(d) if d.seconds == 0 && d.nanos == 0 => settings.heartbeat,
            Some(d) => {
                Duration::new(d.seconds as u64, d.nanos as u32).clamp(settings.heartbeat_min, HEARTBEAT_MAX)
            }
        };
        Ok(Opening { resume_after, heartbeat })
    }
}

/// Starts a stream for `filter`; it ends when the client goes away or
/// `shutdown` turns true.
pub fn open(
    bus: Arc<Bus>,
    filter: Filter,
    opening: Opening,
    settings: &Settings,
    mut shutdown: watch::Receiver<bool>,
) -> ReceiverStream<Result<WatchEvent, Status>> {
    let (tx, rx) = mpsc::channel(settings.buffer.max(1));
    let (mut events, start) = bus.journal().subscribe(opening.resume_after.as_ref());
    let membership = bus.membership();
    tokio::spawn(async move {
        SUBSCRIBERS.fetch_add(1, Ordering::Relaxed);
        let mut out = Outbox::new(tx, bus.journal().epoch().to_string(), 0);
        let run = async {
            begin(&mut out, &filter, start).await?;
            if membership.valid(crate::clock::now_ms()) {
                let first = out.marker(Type::Heartbeat, "");
                out.send(first).await?;
            }
            let every = opening.heartbeat;
            let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut lag = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|s| *s) => return Ok(()),
                    _ = out.closed().closed() => return Ok(()),
                    // Before events: a steady flow of events that match
                    // nothing must not starve the heartbeats.
                    _ = heartbeat.tick() => {
                        // Everything queued before the heartbeat goes first:
                        // it vouches for all of it.
                        loop {
                            match events.try_recv() {
                                Ok(l) => { handle(&mut out, &filter, Ok(l))?; }
                                Err(broadcast::error::TryRecvError::Empty) => break,
                                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                    handle(&mut out, &filter, Err(broadcast::error::RecvError::Lagged(n)))?;
                                }
                                Err(broadcast::error::TryRecvError::Closed) => return Ok(()),
                            }
                        }
                        if membership.valid(crate::clock::now_ms()) {
                            out.heartbeat()?;
                        }
                    }
                    msg = events.recv() => {
                        if !handle(&mut out, &filter, msg)? { return Ok(()) }
                    }
                    _ = lag.tick(), if out.lagging => out.flush_lag()?,
                }
            }
        };
        let _: Result<(), Closed> = run.await;
        SUBSCRIBERS.fetch_sub(1, Ordering::Relaxed);
    });
    ReceiverStream::new(rx)
}

/// Replays or resets as the journal said, waiting for room (bounded by the
/// journal's retention).
async fn begin(out: &mut Outbox, filter: &Filter, start: Start) -> Result<(), Closed> {
    match start {
        Start::Live { head } => out.at = head,
        Start::Replay { events, head } => {
            crate::metrics::watch_resumed("replayed");
            for logged in events {
                if let BusMessage::Event(event) = &logged.msg {
                    for ev in out.events_for(filter, event, logged.seq) {
                        out.send(ev).await?;
                    }
                }
            }
            out.at = head;
        }
        Start::Reset { head, why } => {
            crate::metrics::watch_resumed("reset");
            out.at = head;
            let reset = out.marker(Type::Reset, why);
            out.send(reset).await?;
        }
    }
    Ok(())
}

/// Handles one journal message; false when the journal closed.
fn handle(
    out: &mut Outbox,
    filter: &Filter,
    msg: std::result::Result<Logged, broadcast::error::RecvError>,
) -> Result<bool, Closed> {
    match msg {
        Ok(Logged { seq, msg: BusMessage::Event(event) }) => {
            let events = out.events_for(filter, &event, seq);
            out.at = seq;
            out.deliver(events)?;
        }
        Ok(Logged { seq, msg: BusMessage::Gap }) => {
            out.at = seq;
            out.lagging = true;
            out.flush_lag()?;
        }
        Err(broadcast::error::RecvError::Lagged(_)) => {
            out.lagging = true;
            out.flush_lag()?;
        }
        Err(broadcast::error::RecvError::Closed) => return Ok(false),
    }
    Ok(true)
}

#[cfg(test)]
mod tests;
