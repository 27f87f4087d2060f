//! Logs and traces.
//!
//! - Logs: human-readable text by default, JSON lines (`log_format = "json"`)
//!   for log pipelines; level from `RUST_LOG` (default `info`). A Get that
//!   goes past the tiers (a miss, a refresh, an action) runs in a `get` span
//!   carrying its `request_id` (the caller's `x-request-id`, or a generated
//!   one), so each log line of a request names it. Hits log nothing and open
//!   no span (see [`crate::cache::Trace`]).
//! - Traces: OpenTelemetry over OTLP/gRPC, off unless
//!   `telemetry.otlp_endpoint` is set. Spans: `get` (root, per request;
//!   store hits included, L1 hits never), `tiers.get`, `coalesce`, `fetch`
//!   and `upstream.call`. The inner spans are
//!   `debug` level and only the trace exporter asks for them, so with tracing
//!   off they cost nothing on the hit path.
//! - Metrics: see [`crate::metrics`] (Prometheus at `/metrics`).
//!
//! The span exporter runs on the SDK's batch thread; the tonic channel it
//! uses needs a Tokio reactor, so it gets a one-thread runtime of its own
//! (the SDK's batch thread is not a Tokio thread). [`Telemetry::shutdown`]
//! flushes what is buffered; it blocks, so async callers run it through
//! `spawn_blocking`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetrySettings};

/// How long shutdown waits for buffered spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Filter of the trace exporter: cxcache's debug spans (tiers, coalescing,
/// upstream) and everyone else's info.
const TRACE_FILTER: &str = "info,cxcache=debug";

/// What was set up; keep it until exit and call [`Telemetry::shutdown`].
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Drives the OTLP exporter's tonic channel.
    runtime: Option<tokio::runtime::Runtime>,
}

/// Set once the OTLP trace exporter is installed.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (OTLP): then every Get is traced whole.
pub fn exporting_traces() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Logs only (no trace export): the in-process test servers use this.
pub fn init_logging(format: LogFormat) {
    // Without an endpoint nothing can fail.
    let _ = init(format, &TelemetrySettings::default());
}

/// Installs the global log subscriber, plus the OTLP trace exporter when
/// `settings.otlp_endpoint` is set. A second call (tests) keeps the first
/// subscriber and returns an empty [`Telemetry`].
pub fn init(format: LogFormat, settings: &TelemetrySettings) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: log collectors get plain text, and no
    // escape codes are formatted into every span's fields.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => {
            fmt.json().flatten_event(true).with_current_span(false).with_span_list(true).boxed()
        }
    }
    .with_filter(filter);

    let Some(endpoint) = settings.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
        let _ = tracing_subscriber::registry().with(fmt).try_init();
        return Ok(Telemetry::default());
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()?;
    let exporter = {
        // The channel's background task is spawned on the runtime entered here.
        let _entered = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(FLUSH_TIMEOUT)
            .build()?
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(settings.service_name.clone()).build())
        .build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("cxcache"))
        .with_filter(EnvFilter::new(TRACE_FILTER));
    if tracing_subscriber::registry().with(fmt).with(otel).try_init().is_err() {
        // Someone else owns the global subscriber: nothing of ours to flush.
        let _ = provider.shutdown();
        return Ok(Telemetry::default());
    }
    EXPORTING.store(true, Ordering::Relaxed);
    tracing::info!(endpoint, service = %settings.service_name, "exporting traces over OTLP");
    Ok(Telemetry { provider: Some(provider), runtime: Some(runtime) })
}

impl Telemetry {
    /// Flushes buffered spans and stops the exporter. Blocking: from async
    /// code, call it inside `tokio::task::spawn_blocking`.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
                eprintln!("cxcache: flushing traces: {e}");
            }
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Telemetry {
    /// Dropped without [`Telemetry::shutdown`] (an early exit, maybe inside
    /// async code): stop the exporter without blocking on its runtime.
    fn drop(&mut self) {
        drop(self.provider.take());
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The caller's `x-request-id` when it is a short printable token.
pub fn caller_request_id(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    metadata
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
}

/// A new request id: a random per-process prefix and a counter (unique
/// across instances, and no syscall).
pub fn new_request_id() -> String {
    static PREFIX: LazyLock<String> =
        LazyLock::new(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{}-{:x}", *PREFIX, NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_from_metadata_or_generated() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(caller_request_id(&m), None);
        let (a, b) = (new_request_id(), new_request_id());
        assert!(a.len() > 12 && a != b, "{a} {b}");
        m.insert("x-request-id", "abc-123".parse().unwrap());
        assert_eq!(caller_request_id(&m), Some("abc-123"));
        m.insert("x-request-id", "has space".parse().unwrap());
        assert_eq!(caller_request_id(&m), None);
    }
}
