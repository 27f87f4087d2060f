//! The write side: each event this instance publishes is appended to the
//! outbox of every endpoint whose filter selects some of its keys, before
//! the bus carries it (see [`crate::bus::Recorder`]). An event that could
//! not be written (the store unavailable) is not lost silently: the next
//! write for that endpoint is preceded by a RESYNC.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::Endpoint;
use crate::bus::{Event, Recorder};
use crate::store::Outbox;

pub struct Appender {
    env: String,
    endpoints: Vec<(Arc<Endpoint>, AtomicBool)>,
    outbox: Arc<dyn Outbox>,
}

/// What an endpoint is told when events of its own could not be written.
const LOST: &[u8] =
    br#"{"type":"RESYNC","dropped":null,"reason":"events could not be written to the outbox"}"#;

impl Appender {
    pub fn new(env: String, endpoints: Vec<Arc<Endpoint>>, outbox: Arc<dyn Outbox>) -> Appender {
        let endpoints = endpoints.into_iter().map(|e| (e, AtomicBool::new(false))).collect();
        Appender { env, endpoints, outbox }
    }
}

#[async_trait]
impl Recorder for Appender {
    async fn record(&self, event: &Event) {
        for (ep, lost) in &self.endpoints {
            let keys = ep.filter.select(event);
            if keys.is_empty() {
                continue;
            }
            let payload = super::wire::WireEvent::new(event, keys).to_bytes();
            let name = &ep.settings.name;
            let backlog = ep.settings.backlog;
            // Purges write to the same store first, so a failure is rare: it
            // is counted, and the endpoint is told to resync next time.
            let failed = |e: crate::error::Error| {
                lost.store(true, Ordering::Release);
                crate::metrics::callback_append_failed(name);
                tracing::warn!(endpoint = %name, error = %e, "change callback event not written to its outbox");
            };
            if lost.swap(false, Ordering::AcqRel) {
                if let Err(e) = self.outbox.append(&self.env, name, Bytes::from_static(LOST), backlog).await {
                    failed(e);
                    continue;
                }
            }
            if let Err(e) = self.outbox.append(&self.env, name, payload, backlog).await {
                failed(e);
            }
        }
    }
}
