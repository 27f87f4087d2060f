//! Every metric cxcache exports, in one place: names, labels, help text and
//! one small recording function per event, so call sites stay one line
//! (`metrics::get_served(kind, source, elapsed)`) and the names cannot drift.
//!
//! Recording goes through the `metrics` facade: a counter bump is a hash
//! lookup plus an atomic add, and without an installed recorder (unit tests)
//! nothing at all. [`install`] sets up the Prometheus recorder once per
//! process; the HTTP side serves [`render`] at `/metrics`.
//!
//! Labels are bounded: `kind` only for kinds the catalog accepted, `source`
//! and `code` from fixed enums, `client_id` from the configured credentials
//! (never the secret), `status` an HTTP status code.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::RwLock;

use crate::source::Source;

/// Gets answered, by resource kind and by where the value came from.
pub const GET_TOTAL: &str = "cxcache_get_total";
/// Latency of answered Gets, by kind and source.
pub const GET_DURATION: &str = "cxcache_get_duration_seconds";
/// Gets that ended in an error, by gRPC code.
pub const GET_ERRORS: &str = "cxcache_get_errors_total";
/// Upstream HTTP answers, by credential and status.
pub const UPSTREAM_REQUESTS: &str = "cxcache_upstream_requests_total";
/// Upstream 429 answers, by credential.
/// Upstream calls sent, by credential and priority (foreground, background).
pub const UPSTREAM_CALLS_BY_PRIORITY: &str = "cxcache_upstream_calls_total";
/// The budget each credential follows (configured, then learned from headers).
pub const UPSTREAM_BUDGET_ALLOWED: &str = "cxcache_upstream_budget_allowed";
pub const UPSTREAM_BUDGET_WINDOW: &str = "cxcache_upstream_budget_window_seconds";
pub const UPSTREAM_RATE_LIMITED: &str = "cxcache_upstream_rate_limited_total";
/// Upstream call latency, by credential.
pub const UPSTREAM_DURATION: &str = "cxcache_upstream_duration_seconds";
/// Calls left in the current rate-limit window, by credential (from the
/// platform's `inin-ratelimit-*` headers).
pub const UPSTREAM_QUOTA_REMAINING: &str = "cxcache_upstream_quota_remaining";
/// 1 while a credential is parked (refused or failing), by credential.
pub const UPSTREAM_CREDENTIAL_PARKED: &str = "cxcache_upstream_credential_parked";
/// Times a credential was parked, by credential.
pub const UPSTREAM_PARKINGS: &str = "cxcache_upstream_credential_parkings_total";
/// Callers that joined a fetch already under way instead of starting one.
pub const COALESCED_TOTAL: &str = "cxcache_coalesced_total";
/// Callers waiting right now on a fetch someone else started.
pub const COALESCED_WAITERS: &str = "cxcache_coalesced_waiters";
/// Open Watch streams.
pub const WATCH_SUBSCRIBERS: &str = "cxcache_watch_subscribers";
/// LAGGED events sent to Watch subscribers (they must resync).
pub const WATCH_LAGGED: &str = "cxcache_watch_lagged_total";
/// Watch streams that asked to resume, by outcome (replayed, reset).
pub const WATCH_RESUMES: &str = "cxcache_watch_resumes_total";
/// Requests refused at the edge, by reason (unauthenticated, permission_denied,
/// watch_limit).
pub const AUTH_REFUSED: &str = "cxcache_refused_total";
/// TLS certificate reloads, by outcome (ok, failed).
pub const TLS_RELOADS: &str = "cxcache_tls_reloads_total";
/// 1 while the shared store is in use, 0 while it is skipped after a failure.
pub const STORE_AVAILABLE: &str = "cxcache_store_available";
/// Bytes held by the in-process tier.
pub const L1_BYTES: &str = "cxcache_l1_bytes";
/// 1 while this instance holds the fleet's notification listener lease.
pub const NOTIFY_LEADER: &str = "cxcache_notifications_leader";
/// Notification channels this instance holds, and how many have a socket.
pub const NOTIFY_CHANNELS: &str = "cxcache_notifications_channels";
pub const NOTIFY_CONNECTED: &str = "cxcache_notifications_channels_connected";
/// Topics subscribed over all channels.
pub const NOTIFY_TOPICS: &str = "cxcache_notifications_topics";
/// Platform events that led to a purge.
pub const NOTIFY_EVENTS: &str = "cxcache_notifications_events_total";
/// Purges made because events may have been missed (reconnects, takeovers,
/// failed subscriptions): a rising rate means coverage is shaky.
pub const NOTIFY_GAP_PURGES: &str = "cxcache_notifications_gap_purges_total";
/// Refresh-ahead attempts, by kind and outcome (refreshed, refused, failed).
pub const REFRESH_AHEAD: &str = "cxcache_refresh_ahead_total";
/// Stored entries the verifier compared with the upstream, by kind.
pub const VERIFY_SAMPLED: &str = "cxcache_verify_sampled_total";
/// Of those, found stale (different, or gone upstream) and purged, by kind:
/// the stale share is `stale / sampled`.
pub const VERIFY_STALE: &str = "cxcache_verify_stale_total";
/// How old stale entries were when found (since they were fetched), by kind.
pub const VERIFY_STALE_AGE: &str = "cxcache_verify_stale_age_seconds";
/// Entries the verifier could not compare, by reason (refused: budget
/// needed; unverifiable: no request known for the key; failed).
pub const VERIFY_SKIPPED: &str = "cxcache_verify_skipped_total";

/// Events POSTed to change-callback endpoints and acknowledged, by endpoint.
pub const CALLBACK_EVENTS: &str = "cxcache_callback_events_total";
/// POSTs to change-callback endpoints, by endpoint and outcome (delivered, failed).
pub const CALLBACK_POSTS: &str = "cxcache_callback_posts_total";
/// Events dropped from a full backlog before delivery, by endpoint (the
/// endpoint was sent a RESYNC event).
pub const CALLBACK_DROPPED: &str = "cxcache_callback_dropped_total";
/// Events owed to an endpoint, as its deliverer last saw (on the instance
/// that delivers).
pub const CALLBACK_BACKLOG: &str = "cxcache_callback_backlog";
/// 1 while this instance delivers an endpoint's events (one per fleet).
pub const CALLBACK_DELIVERER: &str = "cxcache_callback_deliverer";
/// Events that could not be written to an endpoint's outbox (the store
/// was unavailable): they are not delivered.
pub const CALLBACK_APPEND_ERRORS: &str = "cxcache_callback_append_errors_total";

/// Age buckets (seconds) of stale entries: a second to a day.
const AGE_BUCKETS: &[f64] =
    &[1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 3.0 * 3600.0, 6.0 * 3600.0, 86400.0];

/// Latency buckets (seconds): from 50 µs (an L1 hit) to 10 s (a slow
/// upstream), so hit and miss latencies both land in useful buckets.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process; later calls return
/// the same handle, so several in-process servers in a test share it).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("static, non-empty buckets")
                // Full matchers are tried before suffixes.
                .set_buckets_for_metric(Matcher::Full(VERIFY_STALE_AGE.into()), AGE_BUCKETS)
                .expect("static, non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Histogram samples are buffered until upkeep: without a
            // periodic drain an unscraped instance would grow without bound.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            });
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            gauge!("cxcache_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let handle = install();
    // Drains histogram buffers; no background task needed.
    handle.run_upkeep();
    handle.render()
}

fn describe() {
    describe_counter!(
        GET_TOTAL,
        "Gets answered, by resource kind and source (l1, store, revalidated, upstream, coalesced, stale)"
    );
    describe_histogram!(GET_DURATION, Unit::Seconds, "Latency of answered Gets, by kind and source");
    describe_counter!(GET_ERRORS, "Gets that ended in an error, by gRPC code");
    describe_counter!(UPSTREAM_REQUESTS, "Upstream HTTP answers, by OAuth client id and status");
    describe_counter!(UPSTREAM_RATE_LIMITED, "Upstream 429 answers, by OAuth client id");
    describe_counter!(
        UPSTREAM_CALLS_BY_PRIORITY,
        "Upstream calls sent, by OAuth client id and priority (foreground, background)"
    );
    describe_gauge!(
        UPSTREAM_BUDGET_ALLOWED,
        "Calls per window each OAuth client follows (learned from headers)"
    );
    describe_gauge!(
        UPSTREAM_BUDGET_WINDOW,
        Unit::Seconds,
        "Rate-limit window each OAuth client follows (learned from headers)"
    );
    describe_histogram!(UPSTREAM_DURATION, Unit::Seconds, "Upstream HTTP call latency, by OAuth client id");
    describe_gauge!(
        UPSTREAM_QUOTA_REMAINING,
        "Calls left in the current rate-limit window, by OAuth client id"
    );
    describe_gauge!(UPSTREAM_CREDENTIAL_PARKED, "1 while an OAuth credential is parked, by client id");
    describe_counter!(UPSTREAM_PARKINGS, "Times an OAuth credential was parked, by client id");
    describe_counter!(COALESCED_TOTAL, "Callers that joined a fetch already under way");
    describe_gauge!(COALESCED_WAITERS, "Callers waiting on a fetch another caller started");
    describe_gauge!(WATCH_SUBSCRIBERS, "Open Watch streams");
    describe_counter!(WATCH_LAGGED, "LAGGED events sent to Watch subscribers (each must resync)");
    describe_gauge!(STORE_AVAILABLE, "1 while the shared store is in use, 0 while skipped after a failure");
    describe_counter!(AUTH_REFUSED, "Requests refused at the edge, by reason");
    describe_counter!(TLS_RELOADS, "TLS certificate reloads, by outcome");
    describe_gauge!(L1_BYTES, Unit::Bytes, "Bytes held by the in-process tier");
    describe_gauge!("cxcache_build_info", "Always 1; the version label names the running build");
    describe_gauge!(NOTIFY_LEADER, "1 while this instance holds the notification listener lease");
    describe_gauge!(NOTIFY_CHANNELS, "Notification channels held by this instance");
    describe_gauge!(NOTIFY_CONNECTED, "Notification channels with a connected WebSocket");
    describe_gauge!(NOTIFY_TOPICS, "Notification topics subscribed over all channels");
    describe_counter!(NOTIFY_EVENTS, "Platform notification events that led to a purge");
    describe_counter!(NOTIFY_GAP_PURGES, "Purges made because notification events may have been missed");
    describe_counter!(
        REFRESH_AHEAD,
        "Refresh-ahead attempts, by kind and outcome (refreshed, refused, failed)"
    );
    describe_counter!(
        VERIFY_SAMPLED,
        "Stored entries the consistency verifier compared with the upstream, by kind"
    );
    describe_counter!(VERIFY_STALE, "Sampled entries found stale and purged, by kind");
    describe_histogram!(
        VERIFY_STALE_AGE,
        Unit::Seconds,
        "Age of entries found stale (since fetched), by kind"
    );
    describe_counter!(VERIFY_SKIPPED, "Entries the verifier could not compare, by reason");
    describe_counter!(CALLBACK_EVENTS, "Events delivered to change-callback endpoints, by endpoint");
    describe_counter!(CALLBACK_POSTS, "POSTs to change-callback endpoints, by endpoint and outcome");
    describe_counter!(CALLBACK_DROPPED, "Events dropped from a full callback backlog, by endpoint");
    describe_gauge!(CALLBACK_BACKLOG, "Events owed to a change-callback endpoint, by endpoint");
    describe_gauge!(CALLBACK_DELIVERER, "1 while this instance delivers the endpoint's events");
    describe_counter!(CALLBACK_APPEND_ERRORS, "Events not written to a callback outbox, by endpoint");
}

/// A POST to callback `endpoint`: delivered (with its `events`) or failed.
pub fn callback_posted(endpoint: &str, events: Option<usize>) {
    let outcome = if events.is_some() { "delivered" } else { "failed" };
    counter!(CALLBACK_POSTS, "endpoint" => endpoint.to_owned(), "outcome" => outcome).increment(1);
    if let Some(n) = events {
        counter!(CALLBACK_EVENTS, "endpoint" => endpoint.to_owned()).increment(n as u64);
    }
}

/// `n` events of callback `endpoint` were dropped before delivery.
pub fn callback_dropped(endpoint: &str, n: u64) {
    counter!(CALLBACK_DROPPED, "endpoint" => endpoint.to_owned()).increment(n);
}

/// What the deliverer of `endpoint` last saw owed.
pub fn callback_backlog(endpoint: &str, owed: u64) {
    gauge!(CALLBACK_BACKLOG, "endpoint" => endpoint.to_owned()).set(owed as f64);
}

/// Whether this instance delivers `endpoint`'s events.
pub fn callback_deliverer(endpoint: &str, delivering: bool) {
    gauge!(CALLBACK_DELIVERER, "endpoint" => endpoint.to_owned()).set(if delivering { 1.0 } else { 0.0 });
}

/// An event of `endpoint` that could not be written to its outbox.
pub fn callback_append_failed(endpoint: &str) {
    counter!(CALLBACK_APPEND_ERRORS, "endpoint" => endpoint.to_owned()).increment(1);
}

/// One refresh-ahead attempt of a `kind` key: `refreshed`, `refused` (the
/// budget was needed) or `failed`.
pub fn refreshed_ahead(kind: &str, outcome: &'static str) {
    counter!(REFRESH_AHEAD, "kind" => kind.to_owned(), "outcome" => outcome).increment(1);
}

/// One entry compared by the verifier; `stale_age` when it was stale.
pub fn verified(kind: &str, stale_age: Option<Duration>) {
    counter!(VERIFY_SAMPLED, "kind" => kind.to_owned()).increment(1);
    if let Some(age) = stale_age {
        counter!(VERIFY_STALE, "kind" => kind.to_owned()).increment(1);
        histogram!(VERIFY_STALE_AGE, "kind" => kind.to_owned()).record(age.as_secs_f64());
    }
}

/// An entry the verifier could not compare (`reason` from a fixed set).
pub fn verify_skipped(reason: &'static str) {
    counter!(VERIFY_SKIPPED, "reason" => reason).increment(1);
}

/// A Get answered with a value (the hit ratio is `source != upstream` over
/// the total, per kind).
pub fn get_served(kind: &str, source: Source, elapsed: Duration) {
    with_get_handles(kind, |handles| {
        let (count, latency) = &handles[source.index()];
        count.increment(1);
        latency.record(elapsed.as_secs_f64());
    });
}

/// The Get counter and histogram of one kind, per source.
type KindHandles = [(Counter, Histogram); Source::ALL.len()];

/// Handles of `cxcache_get_*` by kind, registered on first use.
static GET_HANDLES: LazyLock<RwLock<HashMap<String, Arc<KindHandles>>>> = LazyLock::new(Default::default);

thread_local! {
    /// Each worker's copy of [`GET_HANDLES`]: the hit path then takes no
    /// shared lock and bumps no shared reference count, only the metric.
    static LOCAL_GET_HANDLES: std::cell::RefCell<HashMap<String, Arc<KindHandles>, foldhash::fast::RandomState>> =
        Default::default();
}

fn with_get_handles(kind: &str, f: impl FnOnce(&KindHandles)) {
    LOCAL_GET_HANDLES.with(|local| {
        if let Some(h) = local.borrow().get(kind) {
            return f(h);
        }
        let h = shared_get_handles(kind);
        f(&h);
        local.borrow_mut().insert(kind.to_owned(), h);
    })
}

fn shared_get_handles(kind: &str) -> Arc<KindHandles> {
    if let Some(h) = GET_HANDLES.read().get(kind) {
        return h.clone();
    }
    let handles: Arc<KindHandles> = Arc::new(Source::ALL.map(|s| {
        let labels = [("kind", kind.to_owned()), ("source", s.label().to_owned())];
        (counter!(GET_TOTAL, &labels), histogram!(GET_DURATION, &labels))
    }));
    GET_HANDLES.write().entry(kind.to_owned()).or_insert(handles).clone()
}

/// A Get that ended in an error, by its canonical code name.
pub fn get_failed(code: &'static str) {
    counter!(GET_ERRORS, "code" => code).increment(1);
}

/// An upstream HTTP answer, with the calls left in the window when the
/// answer's rate-limit headers said so.
pub fn upstream_answered(client_id: &str, status: u16, elapsed: Duration, remaining: Option<u32>) {
    counter!(UPSTREAM_REQUESTS, "client_id" => client_id.to_owned(), "status" => status.to_string())
        .increment(1);
    histogram!(UPSTREAM_DURATION, "client_id" => client_id.to_owned()).record(elapsed.as_secs_f64());
    if status == 429 {
        counter!(UPSTREAM_RATE_LIMITED, "client_id" => client_id.to_owned()).increment(1);
    }
    if let Some(remaining) = remaining {
        upstream_quota(client_id, u64::from(remaining));
    }
}

/// One upstream call sent on `client_id`'s budget at `priority`.
pub fn upstream_call(client_id: &str, priority: &'static str) {
    counter!(UPSTREAM_CALLS_BY_PRIORITY, "client_id" => client_id.to_owned(), "priority" => priority)
        .increment(1);
}

/// The budget `client_id` now follows.
pub fn upstream_budget(client_id: &str, allowed: u32, window: Duration) {
    gauge!(UPSTREAM_BUDGET_ALLOWED, "client_id" => client_id.to_owned()).set(f64::from(allowed));
    gauge!(UPSTREAM_BUDGET_WINDOW, "client_id" => client_id.to_owned()).set(window.as_secs_f64());
}

/// An upstream call that got no HTTP answer (timeout, connection refused).
pub fn upstream_unreachable(client_id: &str, elapsed: Duration) {
    counter!(UPSTREAM_REQUESTS, "client_id" => client_id.to_owned(), "status" => "error").increment(1);
    histogram!(UPSTREAM_DURATION, "client_id" => client_id.to_owned()).record(elapsed.as_secs_f64());
}

/// Calls left for `client_id` in the current window (from the rate limiter
/// or the upstream's headers).
pub fn upstream_quota(client_id: &str, remaining: u64) {
    gauge!(UPSTREAM_QUOTA_REMAINING, "client_id" => client_id.to_owned()).set(remaining as f64);
}

/// A credential was parked (its token refused, or its token endpoint failing).
pub fn credential_parked(client_id: &str) {
    counter!(UPSTREAM_PARKINGS, "client_id" => client_id.to_owned()).increment(1);
}

/// Whether a credential is parked now (read at scrape time).
pub fn credential_state(client_id: &str, parked: bool) {
    gauge!(UPSTREAM_CREDENTIAL_PARKED, "client_id" => client_id.to_owned()).set(f64::from(u8::from(parked)));
}

/// A caller joined a fetch under way; the waiter gauge drops when the
/// returned guard does.
#[must_use = "the waiter count drops when the guard is dropped"]
pub fn coalesced_waiter() -> GaugeGuard {
    counter!(COALESCED_TOTAL).increment(1);
    GaugeGuard::new(COALESCED_WAITERS)
}

/// Open Watch streams (read from the watch module at scrape time).
pub fn watch_subscribers(open: i64) {
    gauge!(WATCH_SUBSCRIBERS).set(open as f64);
}

/// A request refused at the edge (`reason` from a fixed set).
pub fn refused(reason: &'static str) {
    counter!(AUTH_REFUSED, "reason" => reason).increment(1);
}

/// A TLS certificate change was loaded, or failed to load.
pub fn tls_reloaded(ok: bool) {
    counter!(TLS_RELOADS, "outcome" => if ok { "ok" } else { "failed" }).increment(1);
}

/// A Watch subscriber was told it lagged.
pub fn watch_lagged() {
    counter!(WATCH_LAGGED).increment(1);
}

/// A Watch stream asked to resume: `replayed` or `reset`.
pub fn watch_resumed(outcome: &'static str) {
    counter!(WATCH_RESUMES, "outcome" => outcome).increment(1);
}

/// Whether the shared store is in use (read at scrape time).
pub fn store_available(available: bool) {
    gauge!(STORE_AVAILABLE).set(if available { 1.0 } else { 0.0 });
}

/// Current size of the in-process tier (0 when it is off).
pub fn l1_size(bytes: u64) {
    gauge!(L1_BYTES).set(bytes as f64);
}

/// The notification listener's state, read from it at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListenerGauges {
    pub leader: bool,
    pub channels: usize,
    pub connected: usize,
    pub topics: usize,
    pub events: u64,
    pub gap_purges: u64,
}

/// Records the notification listener's state.
pub fn notifications(g: ListenerGauges) {
    gauge!(NOTIFY_LEADER).set(if g.leader { 1.0 } else { 0.0 });
    gauge!(NOTIFY_CHANNELS).set(g.channels as f64);
    gauge!(NOTIFY_CONNECTED).set(g.connected as f64);
    gauge!(NOTIFY_TOPICS).set(g.topics as f64);
    counter!(NOTIFY_EVENTS).absolute(g.events);
    counter!(NOTIFY_GAP_PURGES).absolute(g.gap_purges);
}

/// Increments a gauge now and decrements it on drop.
#[must_use = "the gauge drops back when the guard is dropped"]
pub struct GaugeGuard(&'static str);

impl GaugeGuard {
    fn new(name: &'static str) -> Self {
        gauge!(name).increment(1.0);
        GaugeGuard(name)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        gauge!(self.0).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_shows_up_in_the_exposition() {
        install();
        // A kind of its own: handles other tests registered before the
        // recorder was installed record nothing.
        get_served("metrics.test", Source::Store, Duration::from_micros(80));
        get_failed("RESOURCE_EXHAUSTED");
        upstream_answered("demo-client", 200, Duration::from_millis(3), Some(288));
        upstream_answered("demo-client", 429, Duration::from_millis(1), None);
        // Shared gauges move with other tests in this process: check the
        // guard on a gauge of its own.
        let guard = GaugeGuard::new("cxcache_test_guard");
        let text = render();
        assert!(text.contains(r#"cxcache_get_total{kind="metrics.test",source="store"} 1"#), "{text}");
        assert!(text.contains(r#"cxcache_get_errors_total{code="RESOURCE_EXHAUSTED"} 1"#), "{text}");
        assert!(text.contains(r#"cxcache_upstream_rate_limited_total{client_id="demo-client"} 1"#), "{text}");
        assert!(text.contains(r#"cxcache_upstream_quota_remaining{client_id="demo-client"} 288"#), "{text}");
        assert!(text.contains("cxcache_test_guard 1"), "{text}");
        assert!(text.contains("cxcache_get_duration_seconds_bucket"), "{text}");
        drop(guard);
        assert!(render().contains("cxcache_test_guard 0"));
    }
}
