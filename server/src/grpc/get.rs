//! `Get`: serve one resource through the cache.

use std::time::Duration;

use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::deadline;
use crate::cache::{Cache, Served, Source};
use crate::entry::now_ms;
use crate::error::Error;
use crate::proto::v1::{self, GetRequest, GetResponse};

/// Runs the Get in a `get` span carrying its request id (echoed back as
/// `x-request-id`), and counts the outcome.
pub async fn handle(cache: &Cache, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
    let request_id = crate::telemetry::request_id(request.metadata());
    let (kind, id) = (&request.get_ref().kind, &request.get_ref().id);
    let span = tracing::info_span!("get", %request_id, %kind, %id, source = tracing::field::Empty);
    let result = serve(cache, request).instrument(span).await;
    let echo = tonic::metadata::MetadataValue::try_from(request_id.as_str()).ok();
    match result {
        Ok(mut response) => {
            echo.map(|v| response.metadata_mut().insert("x-request-id", v));
            Ok(response)
        }
        Err(mut status) => {
            crate::metrics::get_failed(status.code());
            echo.map(|v| status.metadata_mut().insert("x-request-id", v));
            Err(status)
        }
    }
}

async fn serve(cache: &Cache, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
    let started = std::time::Instant::now();
    let deadline = deadline::from_metadata(request.metadata());
    let req = request.into_inner();
    let served = match deadline {
        Some(limit) => {
            // Answer a little before the caller's deadline, so the caller
            // gets our DEADLINE_EXCEEDED rather than tonic's CANCELLED.
            let limit = limit.saturating_sub((limit / 20).min(Duration::from_millis(20)));
            let Some(deadline) = Instant::now().checked_add(limit) else {
                return Err(Error::InvalidArgument(vec![crate::error::FieldViolation::new(
                    "grpc-timeout",
                    "deadline too far in the future",
                )])
                .into());
            };
            match tokio::time::timeout(limit, cache.get(&req, Some(deadline))).await {
                Err(_) => Err(Error::DeadlineExceeded(format!("no answer within the caller's {limit:?}"))),
                // An upstream call cut short by the caller's deadline is the
                // deadline's doing, not the upstream's.
                Ok(Err(Error::Unavailable { message, .. }))
                    if Instant::now() + Duration::from_millis(20) >= deadline =>
                {
                    Err(Error::DeadlineExceeded(message))
                }
                Ok(other) => other,
            }
        }
        None => cache.get(&req, None).await,
    }?;
    // The catalog's name (from the key), never the caller's spelling: the
    // label set stays bounded by the catalog.
    let kind = served.key.split(':').nth(1).unwrap_or_default();
    crate::metrics::get_served(kind, served.source, started.elapsed());
    tracing::Span::current().record("source", crate::metrics::source_label(served.source));
    Ok(Response::new(to_response(served)))
}

pub fn to_response(served: Served) -> GetResponse {
    let now = now_ms();
    let e = &served.entry;
    GetResponse {
        value: e.value.clone(),
        source: proto_source(served.source) as i32,
        age: Some(duration(e.age(now))),
        ttl_remaining: Some(duration(e.ttl_remaining(now))),
        tags: e.tags.clone(),
        key: served.key,
    }
}

fn proto_source(s: Source) -> v1::Source {
    match s {
        Source::L1 => v1::Source::L1,
        Source::Store => v1::Source::Store,
        Source::Revalidated => v1::Source::Revalidated,
        Source::Upstream => v1::Source::Upstream,
        Source::Stale => v1::Source::Stale,
        Source::Coalesced => v1::Source::Coalesced,
    }
}

fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}
