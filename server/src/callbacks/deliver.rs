//! The read side: one deliverer per endpoint per fleet. Every instance
//! campaigns for the endpoint's lease; the holder reads the outbox after the
//! cursor, POSTs a batch, retries it with backoff until the endpoint takes
//! it, then advances the cursor. A holder that dies mid-batch leaves the
//! cursor where it was, so its successor sends that batch again: at least
//! once, deduped by event id on the endpoint's side.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;
use tokio::sync::{broadcast, watch};

use super::{wire, Endpoint};
use crate::bus::BusMessage;
use crate::store::{Cursor, Outbox, Store};

/// An endpoint's refusal (or no answer): retried.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Refused {
    pub reason: String,
    /// What the endpoint asked for (`Retry-After`).
    pub retry_after: Option<Duration>,
}

/// How a signed body reaches an endpoint (HTTP in production, a fake in
/// the paused-time tests).
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    async fn post(&self, body: Bytes, signature: String) -> Result<(), Refused>;
}

pub struct Deliverer {
    pub env: String,
    pub endpoint: Arc<Endpoint>,
    /// Holds the delivery lease.
    pub store: Arc<dyn Store>,
    pub outbox: Arc<dyn Outbox>,
    pub transport: Arc<dyn Transport>,
    /// Wakes the deliverer when an event for the endpoint is published
    /// anywhere in the fleet.
    pub wake: broadcast::Receiver<BusMessage>,
}

/// The pause before retry `attempt` (1, 2, …): doubling from `min` to `max`,
/// jittered down by up to half so a fleet of endpoints does not beat in step;
/// an endpoint's `Retry-After` (capped at `max`) when it gave one.
pub fn backoff(attempt: u32, min: Duration, max: Duration, retry_after: Option<Duration>) -> Duration {
    if let Some(asked) = retry_after {
        return asked.min(max);
    }
    let full = min.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(max);
    full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

impl Deliverer {
    fn name(&self) -> &str {
        &self.endpoint.settings.name
    }

    /// Campaigns for the lease and delivers while holding it, until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let key = crate::keys::callback_key(&self.env, self.name(), "deliverer");
        let ttl = self.endpoint.settings.lease_ttl;
        loop {
            let Some(lease) = crate::leader::campaign(
                self.store.clone(),
                key.clone(),
                "callback deliverer",
                ttl,
                &mut shutdown,
            )
            .await
            else {
                return;
            };
            tracing::info!(endpoint = %self.name(), "change callbacks: this instance delivers");
            crate::metrics::callback_deliverer(self.name(), true);
            let stopped = lease.hold(self.deliver(&mut shutdown)).await == Some(true);
            crate::metrics::callback_deliverer(self.name(), false);
            if stopped {
                lease.release().await;
                return;
            }
        }
    }

    /// Sleeps `d` unless shut down first (then true).
    async fn pause(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => true,
            _ = tokio::time::sleep(d) => false,
        }
    }

    /// Waits for an event of this endpoint (or a gap, or the poll interval);
    /// true on shutdown.
    async fn idle(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let poll = self.endpoint.settings.poll;
        let deadline = tokio::time::Instant::now() + poll;
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return true,
                _ = tokio::time::sleep_until(deadline) => return false,
                msg = self.wake.recv() => match msg {
                    Ok(BusMessage::Event(e)) if self.endpoint.filter.select(&e).is_empty() => {}
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return false,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        // The bus is gone (shutting down): poll only.
        Self::pause(deadline.saturating_duration_since(tokio::time::Instant::now()), shutdown).await
    }

    /// Delivers until shut down (true); cancelled when the lease is lost.
    async fn deliver(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let s = self.endpoint.settings.clone();
        let mut cursor: Cursor = loop {
            match self.outbox.cursor(&self.env, &s.name).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::debug!(endpoint = %s.name, error = %e, "callback cursor unreadable; retrying")
                }
            }
            if Self::pause(s.retry_min, shutdown).await {
                return true;
            }
        };
        let mut woken = true;
        loop {
            if *shutdown.borrow() {
                return true;
            }
            let batch = match self.outbox.read(&self.env, &s.name, &cursor, s.max_batch).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(endpoint = %s.name, error = %e, "callback outbox unreadable; retrying");
                    if Self::pause(s.retry_min, shutdown).await {
                        return true;
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                crate::metrics::callback_backlog(&s.name, 0);
                if self.idle(shutdown).await {
                    return true;
                }
                woken = true;
                continue;
            }
            // The first event after a quiet spell waits `linger` for others
            // to share its POST; under load batches fill by themselves.
            if woken && batch.len() < s.max_batch && !s.linger.is_zero() {
                woken = false;
                if Self::pause(s.linger, shutdown).await {
                    return true;
                }
                continue;
            }
            woken = false;
            if let Ok(appended) = self.outbox.appended(&self.env, &s.name).await {
                crate::metrics::callback_backlog(&s.name, appended.saturating_sub(cursor.n));
            }
            let body = wire::body(&s.name, &cursor, &batch);
            let mut attempt = 0;
            loop {
                let signature =
                    wire::signature(s.secret.expose().as_bytes(), crate::clock::now_ms() / 1000, &body);
                match self.transport.post(body.clone(), signature).await {
                    Ok(()) => break,
                    Err(refused) => {
                        attempt += 1;
                        crate::metrics::callback_posted(&s.name, None);
                        let wait = backoff(attempt, s.retry_min, s.retry_max, refused.retry_after);
                        tracing::warn!(endpoint = %s.name, attempt, error = %refused, retry_in = ?wait,
                            "change callback not delivered; retrying");
                        if Self::pause(wait, shutdown).await {
                            return true;
                        }
                    }
                }
            }
            crate::metrics::callback_posted(&s.name, Some(batch.len()));
            if let Some(Some(n)) = wire::lost(&cursor, &batch) {
                crate::metrics::callback_dropped(&s.name, n);
                tracing::warn!(endpoint = %s.name, dropped = n, "change callback backlog overflowed; sent RESYNC");
            }
            let last = batch.last().expect("not empty");
            cursor = Cursor { id: last.id.clone(), n: last.n };
            if let Err(e) = self.outbox.advance(&self.env, &s.name, &cursor).await {
                // Delivered; the cursor in the store lags, so a successor may
                // send these again (at least once).
                tracing::debug!(endpoint = %s.name, error = %e, "callback cursor not saved");
            }
        }
    }
}
