//! Change callbacks: configured HTTP endpoints receive INVALIDATED and
//! UPDATED events matching their filter, for systems that cannot hold a
//! Watch stream (a CDN, a data-table sync, a serverless function).
//!
//! The promise, and where each part of it lives:
//! - **signed** POSTs, HMAC-SHA256 over timestamp and body ([`wire`]);
//! - **at least once, once per fleet**: the instance where an event happens
//!   appends it to the endpoint's outbox in the store before the bus carries
//!   it ([`record`]); one instance of the fleet, the holder of the
//!   endpoint's lease, delivers from there and advances a cursor only once
//!   the endpoint answered 2xx ([`deliver`]). Event ids let it dedupe the
//!   redeliveries a takeover can cause;
//! - **batched** (`max_batch`, `linger`), **retried with backoff**
//!   (`retry_min` → `retry_max`, `Retry-After` honoured);
//! - a **bounded backlog** (`backlog` events): past it the oldest go, are
//!   counted, and the endpoint gets a RESYNC event.

pub mod deliver;
pub mod record;
pub mod transport;
pub mod wire;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bus::Bus;
use crate::catalog::Catalog;
use crate::config::CallbackSettings;
use crate::store::{Outbox, Store};
use crate::watch::Filter;

/// One configured endpoint and what it hears.
pub struct Endpoint {
    pub settings: Arc<CallbackSettings>,
    pub filter: Filter,
}

impl Endpoint {
    pub fn new(settings: CallbackSettings, catalog: Arc<Catalog>) -> Endpoint {
        let filter = Filter::from_parts(
            settings.keys.clone(),
            settings.prefixes.clone(),
            settings.kinds.clone(),
            settings.tags.clone(),
            settings.invalidated_only,
            catalog,
        );
        Endpoint { settings: Arc::new(settings), filter }
    }
}

/// The running deliverers.
pub struct Callbacks {
    tasks: Vec<JoinHandle<()>>,
}

impl Callbacks {
    /// Records this instance's events for every endpoint and starts their
    /// deliverers. Nothing at all when none is configured.
    pub fn start(
        env: &str,
        settings: &[CallbackSettings],
        catalog: Arc<Catalog>,
        store: Arc<dyn Store>,
        outbox: Arc<dyn Outbox>,
        bus: &Bus,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Callbacks> {
        if settings.is_empty() {
            return Ok(Callbacks { tasks: Vec::new() });
        }
        let endpoints: Vec<Arc<Endpoint>> =
            settings.iter().map(|s| Arc::new(Endpoint::new(s.clone(), catalog.clone()))).collect();
        let mut tasks = Vec::new();
        for endpoint in &endpoints {
            let transport = transport::Http::new(&endpoint.settings)
                .map_err(|e| anyhow::anyhow!("callbacks {}: HTTP client: {e}", endpoint.settings.name))?;
            let deliverer = deliver::Deliverer {
                env: env.to_string(),
                endpoint: endpoint.clone(),
                store: store.clone(),
                outbox: outbox.clone(),
                transport: Arc::new(transport),
                wake: bus.subscribe(),
            };
            tasks.push(tokio::spawn(deliverer.run(shutdown.clone())));
        }
        bus.record_with(Arc::new(record::Appender::new(env.to_string(), endpoints, outbox)));
        Ok(Callbacks { tasks })
    }

    /// Waits (at most `limit`) for the deliverers, which saw the shutdown
    /// signal, to release their leases: a successor takes over at once.
    pub async fn stop(self, limit: Duration) {
        let aborts: Vec<_> = self.tasks.iter().map(|t| t.abort_handle()).collect();
        if tokio::time::timeout(limit, futures::future::join_all(self.tasks)).await.is_err() {
            aborts.iter().for_each(|a| a.abort());
        }
    }
}
