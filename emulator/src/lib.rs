//! An HTTP emulator of the Genesys Cloud CX platform API, for cxcache's tests,
//! demos and load tests.
//!
//! It behaves like the real platform where a cache in front of it can tell
//! the difference: client-credentials OAuth with expiring tokens, per-token
//! fixed-window rate limits with the `inin-ratelimit-*` headers and 429 +
//! `Retry-After`, `Cache-Control: no-cache, no-store, must-revalidate`,
//! page-number paging, volatile per-response fields, timestamps with non-UTC
//! offsets. On top it offers what tests need: deterministic seed data,
//! conditional GETs, request counters, a request log, fault injection and
//! entity mutation, through [`EmulatorHandle`] and the `/admin` HTTP API.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use genesys_emulator::{start, EmulatorConfig};
//! let emu = start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap()).await?;
//! println!("{}", emu.base_url());
//! emu.shutdown().await;
//! # Ok(()) }
//! ```

mod admin;
mod auth;
mod canonical;
mod conditional;
mod config;
mod counters;
mod counting;
mod data;
mod error;
mod extract;
mod faults;
mod gate;
mod ids;
mod paging;
mod ratelimit;
mod routes;
mod state;
mod timefmt;
mod volatile;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::EmulatorConfig;
pub use counters::{Counters, RequestRecord};
pub use faults::Fault;
pub use ids::{queue_id, skill_id, user_id};
pub use routes::notifications::ChannelInfo;

use data::Kind;
use state::{AppState, SharedState};

/// How long [`EmulatorHandle::shutdown`] waits for open requests before aborting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Binds `addr` (port 0 picks a free port) and serves the emulator on the
/// current tokio runtime until [`EmulatorHandle::shutdown`].
pub async fn start(config: EmulatorConfig, addr: SocketAddr) -> std::io::Result<EmulatorHandle> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state = AppState::new(config);
    let app = routes::app(state.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        // A dropped sender also means stop.
        let _ = stop_rx.await;
    });
    let task = tokio::spawn(async move { server.await });
    tracing::info!(%addr, "genesys emulator started");
    Ok(EmulatorHandle {
        inner: Arc::new(HandleInner {
            addr,
            state,
            stop: Mutex::new(Some(stop_tx)),
            task: Mutex::new(Some(task)),
        }),
    })
}

#[derive(Debug)]
struct HandleInner {
    addr: SocketAddr,
    state: SharedState,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<std::io::Result<()>>>>,
}

/// Control of a running emulator; cheap to clone (all clones share it).
/// Dropping it does not stop the server: call [`EmulatorHandle::shutdown`].
#[derive(Debug, Clone)]
pub struct EmulatorHandle {
    inner: Arc<HandleInner>,
}

impl EmulatorHandle {
    /// The bound address (the real port when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://IP:PORT`, with a loopback IP when bound to an unspecified address.
    pub fn base_url(&self) -> String {
        let mut addr = self.inner.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        format!("http://{addr}")
    }

    /// A snapshot of the request counters.
    pub fn counters(&self) -> Counters {
        self.inner.state.counters.snapshot()
    }

    /// Zeroes the counters and empties the request log.
    pub fn reset_counters(&self) {
        self.inner.state.counters.reset();
    }

    /// The last `limit` requests of the log, oldest first.
    pub fn requests(&self, limit: usize) -> Vec<RequestRecord> {
        self.inner.state.counters.recent(limit)
    }

    /// Arms a fault (same as `POST /admin/faults`).
    pub fn inject_fault(&self, fault: Fault) {
        tracing::info!(?fault, "fault injected");
        self.inner.state.faults.inject(fault);
    }

    /// Removes every fault (same as `DELETE /admin/faults`).
    pub fn clear_faults(&self) {
        self.inner.state.faults.clear();
    }

    /// Releases every response currently held by a `hold` fault.
    pub fn release_held(&self) {
        self.inner.state.holds.release();
    }

    /// How many responses are held right now (to know when to release).
    pub fn held_count(&self) -> usize {
        self.inner.state.holds.held()
    }

    /// JSON merge-patch of a queue; bumps `version` and `dateModified`.
    /// `false` for an unknown id or a patch that is not a JSON object.
    pub fn mutate_queue(&self, id: &str, patch: Value) -> bool {
        self.inner.state.mutate(Kind::Queue, id, &patch).is_some()
    }

    /// Like [`EmulatorHandle::mutate_queue`], but without any change event
    /// (no notification): a change cxcache can only find by looking.
    pub fn mutate_queue_silently(&self, id: &str, patch: Value) -> bool {
        self.inner.state.mutate_silently(Kind::Queue, id, &patch).is_some()
    }

    /// Changes every token's budget from now on (the platform raising or
    /// lowering an org's limit); windows under way keep their count.
    pub fn set_rate_limit(&self, allowed: u32, window: std::time::Duration) {
        self.inner.state.limiter.set(allowed, window);
    }

    /// Like [`EmulatorHandle::mutate_queue`], for a user.
    pub fn mutate_user(&self, id: &str, patch: Value) -> bool {
        self.inner.state.mutate(Kind::User, id, &patch).is_some()
    }

    /// Like [`EmulatorHandle::mutate_queue`], for a skill.
    pub fn mutate_skill(&self, id: &str, patch: Value) -> bool {
        self.inner.state.mutate(Kind::Skill, id, &patch).is_some()
    }

    /// Sets a user's routing status (`OFF_QUEUE`, `IDLE`, `INTERACTING`,
    /// `NOT_RESPONDING`); `false` for an unknown user or status.
    pub fn set_routing_status(&self, user_id: &str, status: &str) -> bool {
        self.inner.state.set_routing_status(user_id, status).is_some()
    }

    /// Analytics detail jobs submitted from now on return at most `limit`
    /// rows (a silently truncated result); `None` restores complete results.
    pub fn set_job_row_limit(&self, limit: Option<usize>) {
        self.inner.state.jobs.set_row_limit(limit);
    }

    /// How many analytics detail jobs were submitted so far.
    pub fn jobs_submitted(&self) -> u64 {
        self.inner.state.jobs.submitted()
    }

    /// How many analytics detail jobs were cancelled so far.
    pub fn jobs_cancelled(&self) -> u64 {
        self.inner.state.jobs.cancelled()
    }

    /// Live notification channels (Notification API), oldest expiry first.
    pub fn notification_channels(&self) -> Vec<ChannelInfo> {
        self.inner.state.notifications.list()
    }

    /// Sends `v2.system.socket_closing` on the channel's sockets; they are
    /// closed `closing_grace` later. `false` for an unknown channel.
    pub fn warn_channel_closing(&self, channel_id: &str) -> bool {
        self.inner.state.notifications.warn_closing(channel_id)
    }

    /// Cuts the channel's sockets without a close frame (an unexpected
    /// disconnect); the channel and its subscriptions stay.
    pub fn drop_channel_sockets(&self, channel_id: &str) -> bool {
        self.inner.state.notifications.drop_sockets(channel_id)
    }

    /// From now on the client's tokens get 401 and the token endpoint refuses it.
    pub fn revoke_client(&self, client_id: &str) {
        self.inner.state.tokens.revoke_client(client_id);
    }

    /// Stops accepting connections, releases held responses and waits (up to
    /// a few seconds) for open requests to finish.
    pub async fn shutdown(self) {
        let inner = &self.inner;
        inner.state.holds.close();
        if let Some(stop) = inner.stop.lock().take() {
            let _ = stop.send(());
        }
        let task = inner.task.lock().take();
        if let Some(task) = task {
            let abort = task.abort_handle();
            match tokio::time::timeout(SHUTDOWN_GRACE, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "emulator server stopped with an error"),
                Ok(Err(e)) => tracing::warn!(error = %e, "emulator server task failed"),
                Err(_) => {
                    tracing::warn!("emulator did not stop in time; aborting open connections");
                    abort.abort();
                }
            }
        }
    }
}
