//! The write side: each event this instance publishes is appended to the
//! outbox of every endpoint whose filter selects some of its keys, before
//! the bus carries it (see [`crate::bus::Recorder`]).

use std::sync::Arc;

use async_trait::async_trait;

use super::Endpoint;
use crate::bus::{Event, Recorder};
use crate::store::Outbox;

pub struct Appender {
    pub env: String,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub outbox: Arc<dyn Outbox>,
}

#[async_trait]
impl Recorder for Appender {
    async fn record(&self, event: &Event) {
        for ep in &self.endpoints {
            let keys = ep.filter.select(event);
            if keys.is_empty() {
                continue;
            }
            let payload = super::wire::WireEvent::new(event, keys).to_bytes();
            let name = &ep.settings.name;
            if let Err(e) = self.outbox.append(&self.env, name, payload, ep.settings.backlog).await {
                // Purges write to the same store first, so this is rare: it
                // is counted, and alerting on it tells the operator to resync.
                crate::metrics::callback_append_failed(name);
                tracing::warn!(endpoint = %name, error = %e, "change callback event not written to its outbox");
            }
        }
    }
}
