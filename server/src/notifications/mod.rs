//! Hearing changes from the platform itself: Notification API channels.
//!
//! One instance per fleet holds the listener lease ([`crate::leader`]). While it
//! does, it keeps Notification API channels ([`channels`]) subscribed to the
//! topics of what the fleet has cached ([`topics`]: read from the kind
//! indexes, spread over channels of at most `topics_per_channel`, at most
//! `max_channels`, by [`placement`]), listens on their WebSockets ([`socket`]) and turns each
//! event into a purge through [`crate::invalidation::Invalidator`], which
//! reaches every instance and every Watch subscriber over the bus. Topics
//! map to purges through the same mapping as the webhook / EventBridge
//! doors (`webhook.topics`).
//!
//! Channel life, reconnects and the purges that cover every gap are in
//! [`listener`]. When the holder dies, another instance takes the lease
//! within `notifications.lease_ttl`, subscribes again and purges what its
//! predecessor may have missed.

pub mod channels;
pub mod listener;
pub mod placement;
pub mod socket;
pub mod topics;

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bus::Bus;
use crate::config::{NotificationSettings, TopicMapping};
use crate::invalidation::Invalidator;
use crate::store::Store;
use crate::upstream::Upstream;
use topics::TopicKinds;

/// Everything the listener needs.
pub struct Ctx {
    pub env: String,
    pub kinds: TopicKinds,
    pub mappings: Vec<TopicMapping>,
    pub store: Arc<dyn Store>,
    pub invalidator: Arc<Invalidator>,
    pub upstream: Arc<Upstream>,
    pub bus: Arc<Bus>,
    pub settings: NotificationSettings,
    pub status: Arc<Mutex<ListenerStatus>>,
}

/// What this instance's listener is doing (for tests and health output).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerStatus {
    /// Holds the fleet's listener lease.
    pub leader: bool,
    /// Channel ids held.
    pub channels: Vec<String>,
    /// Topics subscribed over all channels.
    pub topics: usize,
    /// Channels with a connected socket.
    pub connected: usize,
    /// Events that led to a purge.
    pub events: u64,
    /// Purges made because events may have been missed.
    pub gap_purges: u64,
}

impl ListenerStatus {
    /// The figures `/metrics` exports.
    pub fn gauges(&self) -> crate::metrics::ListenerGauges {
        crate::metrics::ListenerGauges {
            leader: self.leader,
            channels: self.channels.len(),
            connected: self.connected,
            topics: self.topics,
            events: self.events,
            gap_purges: self.gap_purges,
        }
    }
}

/// The running listener of one instance.
pub struct Notifier {
    pub status: Arc<Mutex<ListenerStatus>>,
    task: JoinHandle<()>,
}

impl Notifier {
    /// Campaigns for the lease and, while held, listens; until `shutdown`.
    pub fn spawn(ctx: Ctx, mut shutdown: watch::Receiver<bool>) -> Notifier {
        let status = ctx.status.clone();
        let task = tokio::spawn(async move {
            loop {
                let Some(lease) = crate::leader::campaign(
                    ctx.store.clone(),
                    crate::keys::listener_lease(&ctx.env),
                    "notification listener",
                    ctx.settings.lease_ttl,
                    &mut shutdown,
                )
                .await
                else {
                    return;
                };
                tracing::info!("notification listener: this instance took the lease");
                let end = listener::Tenure::new(&ctx).run(&lease, &mut shutdown).await;
                // One guard: a second lock() in the same statement deadlocks.
                ctx.status.lock().leader = false;
                match end {
                    listener::End::Shutdown => {
                        lease.release().await;
                        return;
                    }
                    listener::End::LeaseLost => continue,
                }
            }
        });
        Notifier { status, task }
    }

    /// Waits (bounded) for the listener to release its lease after shutdown
    /// was signalled, then stops it.
    pub async fn stop(self, limit: std::time::Duration) {
        let abort = self.task.abort_handle();
        if tokio::time::timeout(limit, self.task).await.is_err() {
            abort.abort();
        }
    }

    pub fn status(&self) -> ListenerStatus {
        self.status.lock().clone()
    }
}
