//! Request accounting of `/api` and `/oauth` traffic: totals by route template,
//! status and client, plus a bounded log of recent requests. Tests assert on
//! these to prove what a cache did (or did not) send upstream.

use std::collections::{BTreeMap, VecDeque};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// How many recent requests the log keeps.
pub(crate) const LOG_CAPACITY: usize = 10_000;

/// A snapshot of the request counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Every counted request.
    pub total: u64,
    /// By `"METHOD /route/{template}"`, e.g. `"GET /api/v2/routing/queues/{id}"`.
    pub by_route: BTreeMap<String, u64>,
    /// By response status.
    pub by_status: BTreeMap<u16, u64>,
    /// By OAuth client id (`"anonymous"` when the request had no known token).
    pub by_client: BTreeMap<String, u64>,
    /// 304 answers.
    pub not_modified: u64,
    /// 429 answers (limiter or injected).
    pub rate_limited: u64,
}

impl Counters {
    /// Requests counted under a route key; 0 if none.
    pub fn route(&self, key: &str) -> u64 {
        self.by_route.get(key).copied().unwrap_or(0)
    }
}

/// One entry of the recent-request log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Arrival time, Unix milliseconds.
    pub at_ms: u64,
    pub method: String,
    /// Same key as [`Counters::by_route`], e.g. `"GET /api/v2/routing/queues/{id}"`.
    pub route: String,
    /// Request path as sent (no query).
    pub path: String,
    pub client_id: String,
    pub status: u16,
    /// The caller's `x-cxcache-priority` header (`foreground`, `background`), if sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    counters: Counters,
    log: VecDeque<RequestRecord>,
}

/// The live counters and log.
#[derive(Debug, Default)]
pub(crate) struct CounterSet {
    inner: Mutex<Inner>,
}

impl CounterSet {
    pub fn record(&self, rec: RequestRecord) {
        let mut inner = self.inner.lock();
        let c = &mut inner.counters;
        c.total += 1;
        *c.by_route.entry(rec.route.clone()).or_default() += 1;
        *c.by_status.entry(rec.status).or_default() += 1;
        *c.by_client.entry(rec.client_id.clone()).or_default() += 1;
        match rec.status {
            304 => c.not_modified += 1,
            429 => c.rate_limited += 1,
            _ => {}
        }
        if inner.log.len() >= LOG_CAPACITY {
            inner.log.pop_front();
        }
        inner.log.push_back(rec);
    }

    pub fn snapshot(&self) -> Counters {
        self.inner.lock().counters.clone()
    }

    /// Zeroes the counters and empties the request log.
    pub fn reset(&self) {
        *self.inner.lock() = Inner::default();
    }

    /// The last `limit` log entries, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<RequestRecord> {
        let inner = self.inner.lock();
        let skip = inner.log.len().saturating_sub(limit);
        inner.log.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(status: u16) -> RequestRecord {
        RequestRecord {
            priority: None,
            at_ms: 1,
            method: "GET".into(),
            route: "GET /a".into(),
            path: "/a".into(),
            client_id: "c".into(),
            status,
        }
    }

    #[test]
    fn counts_and_log() {
        let set = CounterSet::default();
        for s in [200, 304, 429, 200] {
            set.record(rec(s));
        }
        let c = set.snapshot();
        assert_eq!((c.total, c.not_modified, c.rate_limited), (4, 1, 1));
        assert_eq!(c.route("GET /a"), 4);
        assert_eq!(c.route("GET /b"), 0);
        assert_eq!(c.by_status[&200], 2);
        assert_eq!(set.recent(2).iter().map(|r| r.status).collect::<Vec<_>>(), [429, 200]);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Counters>(&json).unwrap(), c);
        set.reset();
        assert_eq!(set.snapshot(), Counters::default());
        assert!(set.recent(10).is_empty());
    }
}
