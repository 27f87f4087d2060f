//! Injected faults (error statuses, extra latency, held responses) so clients
//! can be tested against a misbehaving platform on demand.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A fault to apply to upcoming `/api` requests. In JSON the latency is
/// `latency_ms` (milliseconds); every field may be omitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "FaultJson", into = "FaultJson")]
pub struct Fault {
    /// Request path prefix the fault matches; `""` matches every `/api` path.
    pub path_prefix: String,
    /// Answer with this status instead of the real response.
    pub status: Option<u16>,
    /// `Retry-After` (seconds) of an injected 429; 1 when not set.
    pub retry_after_secs: Option<u64>,
    /// Extra delay before answering (normally or with `status`).
    pub latency: Option<Duration>,
    /// Hold the response until released, then answer normally (or with `status`).
    pub hold: bool,
    /// How many matching requests it applies to; 0 = until cleared.
    pub count: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct FaultJson {
    path_prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<u64>,
    hold: bool,
    count: u32,
}

impl From<FaultJson> for Fault {
    fn from(j: FaultJson) -> Self {
        Fault {
            path_prefix: j.path_prefix,
            status: j.status,
            retry_after_secs: j.retry_after_secs,
            latency: j.latency_ms.map(Duration::from_millis),
            hold: j.hold,
            count: j.count,
        }
    }
}

impl From<Fault> for FaultJson {
    fn from(f: Fault) -> Self {
        FaultJson {
            path_prefix: f.path_prefix,
            status: f.status,
            retry_after_secs: f.retry_after_secs,
            latency_ms: f.latency.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            hold: f.hold,
            count: f.count,
        }
    }
}

#[derive(Debug, Clone)]
struct Armed {
    fault: Fault,
    /// `None` = until cleared.
    remaining: Option<u32>,
}

/// The active faults, in injection order; the first match applies.
#[derive(Debug, Default)]
pub(crate) struct FaultSet {
    armed: Mutex<Vec<Armed>>,
}

impl FaultSet {
    pub fn inject(&self, fault: Fault) {
        let remaining = (fault.count > 0).then_some(fault.count);
        self.armed.lock().push(Armed { fault, remaining });
    }

    /// Removes every fault; returns how many there were.
    pub fn clear(&self) -> usize {
        std::mem::take(&mut *self.armed.lock()).len()
    }

    /// Active faults (with `count` showing what is left of each).
    pub fn list(&self) -> Vec<Fault> {
        self.armed
            .lock()
            .iter()
            .map(|a| Fault { count: a.remaining.unwrap_or(0), ..a.fault.clone() })
            .collect()
    }

    /// Consumes one use of the first fault matching `path`.
    pub fn take(&self, path: &str) -> Option<Fault> {
        let mut armed = self.armed.lock();
        let i = armed.iter().position(|a| path.starts_with(&a.fault.path_prefix))?;
        let fault = armed[i].fault.clone();
        if let Some(left) = armed[i].remaining.as_mut() {
            *left -= 1;
            if *left == 0 {
                armed.remove(i);
            }
        }
        Some(fault)
    }
}

/// Parked responses of `hold` faults. Releasing wakes every response held at
/// that moment; after `close` (shutdown) nothing is held any more.
#[derive(Debug)]
pub(crate) struct Holds {
    generation: watch::Sender<u64>,
    held: AtomicUsize,
    closed: AtomicBool,
}

impl Default for Holds {
    fn default() -> Self {
        Self { generation: watch::channel(0).0, held: AtomicUsize::new(0), closed: AtomicBool::new(false) }
    }
}

/// Keeps the held count right even when a client gives up mid-hold.
struct HeldGuard<'a>(&'a AtomicUsize);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Holds {
    /// Waits until the next release (or shutdown).
    pub async fn hold(&self) {
        let mut rx = self.generation.subscribe();
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let seen = *rx.borrow_and_update();
        self.held.fetch_add(1, Ordering::SeqCst);
        let _guard = HeldGuard(&self.held);
        // An error means the sender is gone, i.e. the emulator is gone: stop holding.
        let _ = rx.wait_for(|g| *g != seen).await;
    }

    /// Releases every currently held response; returns how many were held.
    pub fn release(&self) -> usize {
        let n = self.held.load(Ordering::SeqCst);
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
        n
    }

    /// Number of responses currently held.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Releases everything and stops holding from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_latency_ms() {
        let f: Fault = serde_json::from_str(r#"{"status":503,"latency_ms":250,"count":2}"#).unwrap();
        assert_eq!(f.latency, Some(Duration::from_millis(250)));
        assert_eq!(f.path_prefix, "");
        let back = serde_json::to_value(&f).unwrap();
        assert_eq!(back["latency_ms"], 250);
        assert_eq!(serde_json::from_value::<Fault>(back).unwrap(), f);
    }

    #[test]
    fn count_and_prefix() {
        let set = FaultSet::default();
        set.inject(Fault {
            path_prefix: "/api/v2/users".into(),
            status: Some(500),
            count: 2,
            ..Fault::default()
        });
        assert!(set.take("/api/v2/routing/queues").is_none());
        assert!(set.take("/api/v2/users/1").is_some());
        assert_eq!(set.list()[0].count, 1);
        assert!(set.take("/api/v2/users/1").is_some());
        assert!(set.take("/api/v2/users/1").is_none());
        set.inject(Fault::default());
        assert!(set.take("/x").is_some() && set.take("/x").is_some());
        assert_eq!(set.clear(), 1);
    }

    #[tokio::test]
    async fn hold_until_release() {
        let holds = std::sync::Arc::new(Holds::default());
        let h = holds.clone();
        let task = tokio::spawn(async move { h.hold().await });
        while holds.held() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(holds.release(), 1);
        task.await.unwrap();
        assert_eq!(holds.held(), 0);
        holds.close();
        holds.hold().await;
    }
}
