//! `Get`: serve one resource through the cache.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::deadline;
use crate::auth::{GetAsk, MissBudgets};
use crate::cache::{Cache, Served, Trace};
use crate::entry::now_ms;
use crate::policy::Resolved;
use crate::proto::v1::{self, GetRequest, GetResponse};
use crate::source::Source;

/// Serves one Get. An L1 hit is answered at once, with no span and no
/// request id of its own (it logs nothing; the caller's `x-request-id` is
/// still echoed). Every other Get has a request id (the caller's or a new
/// one, echoed back as `x-request-id`) and a `get` span carrying it, so
/// every line it logs and every span it exports names it. With traces
/// exported the span covers the whole Get; with logs alone it opens only
/// once the Get goes past the tiers ([`Trace::PastHit`]): a store hit
/// logs nothing, and its span was a visible share of its cost.
pub async fn handle(
    cache: &Cache,
    request: Request<GetRequest>,
    server_limit: Duration,
    budgets: &MissBudgets,
) -> Result<Response<GetResponse>, Status> {
    let caller_id = crate::telemetry::caller_request_id(request.metadata()).map(str::to_owned);
    let checked = check(cache, request);
    let (req, r, deadline, caller) = match checked {
        Ok(checked) => checked,
        Err(status) => return Err(echo_status(status, caller_id.as_deref())),
    };
    let as_json = req.value_format == v1::ValueFormat::Json as i32;
    if let Some(served) = cache.l1_hit(&r) {
        let mut response = Response::new(to_response(served, as_json));
        echo(response.metadata_mut(), caller_id.as_deref());
        return Ok(response);
    }
    let request_id = caller_id.unwrap_or_else(crate::telemetry::new_request_id);
    let open_span = || tracing::info_span!("get", %request_id, kind = %r.kind_name, id = %req.id, source = tracing::field::Empty);
    // Exported traces want every Get whole, its tiers and fetch nested in
    // it; logs alone need the span only where something may log.
    let exporting = crate::telemetry::exporting_traces();
    let forced = r.freshness.force_refresh;
    let work = async {
        // The upstream calls it causes are charged to the caller's budget
        // (an L1 hit, above, causes none).
        budgets.admit(&caller, forced, std::time::Instant::now()).map_err(|e| {
            crate::metrics::get_failed(e.code().name());
            Status::from(e)
        })?;
        // The server's own limit (`limits.request_timeout`) bounds every
        // Get, caller deadline or not, on the same timer as the deadline.
        let limit = tokio::time::Instant::now() + server_limit;
        let trace = if exporting { Trace::Current } else { Trace::PastHit(&open_span) };
        let served = cache.get_within(&r, deadline, Some(limit), trace).await?;
        if !forced && matches!(served.source, Source::Upstream | Source::Revalidated) {
            budgets.charge(&caller, std::time::Instant::now());
        }
        tracing::Span::current().record("source", served.source.label());
        Ok(Response::new(to_response(served, as_json)))
    };
    let result = if exporting { work.instrument(open_span()).await } else { work.await };
    match result {
        Ok(mut response) => {
            echo(response.metadata_mut(), Some(&request_id));
            Ok(response)
        }
        Err(status) => Err(echo_status(status, Some(&request_id))),
    }
}

/// What every Get passes before the cache: a readable deadline, the
/// caller's scopes, a request the catalog knows.
#[allow(clippy::result_large_err)]
fn check(
    cache: &Cache,
    request: Request<GetRequest>,
) -> Result<(GetRequest, Arc<Resolved>, Option<tokio::time::Instant>, crate::auth::Caller), Status> {
    let deadline = deadline::answer_by(request.metadata()).inspect_err(|e| {
        crate::metrics::get_failed(e.code().name());
    })?;
    let caller = super::admission::caller(&request)?;
    let req = request.into_inner();
    let freshness = req.freshness.as_ref();
    caller
        .check_get(GetAsk {
            kind: &req.kind,
            force_refresh: freshness.is_some_and(|f| f.force_refresh),
            max_age: freshness
                .and_then(|f| f.max_age.as_ref())
                .is_some_and(|d| d.seconds != 0 || d.nanos != 0),
        })
        .map_err(|e| {
            crate::metrics::get_failed(e.code().name());
            super::admission::refused(e)
        })?;
    let r = cache.resolve(&req)?;
    Ok((req, r, deadline, caller))
}

fn echo(metadata: &mut tonic::metadata::MetadataMap, id: Option<&str>) {
    if let Some(v) = id.and_then(|id| tonic::metadata::MetadataValue::try_from(id).ok()) {
        metadata.insert("x-request-id", v);
    }
}

fn echo_status(mut status: Status, id: Option<&str>) -> Status {
    echo(status.metadata_mut(), id);
    status
}

/// The reply: the value as canonical JSON bytes, or (asked for) as
/// structured JSON.
pub fn to_response(served: Served, as_json: bool) -> GetResponse {
    let now = now_ms();
    let e = &served.entry;
    let json = as_json.then(|| serde_json::from_slice(&e.value).map(json_value).unwrap_or_default());
    GetResponse {
        value: if as_json { Default::default() } else { e.value.clone() },
        json,
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

/// serde_json's value as protobuf's `google.protobuf.Value`.
fn json_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s),
        J::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.into_iter().map(json_value).collect() })
        }
        J::Object(fields) => Kind::StructValue(prost_types::Struct {
            fields: fields.into_iter().map(|(k, v)| (k, json_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_keep_their_structure() {
        let v = json_value(serde_json::json!({"name": "Sales", "n": 2, "tags": ["a", null], "ok": true}));
        let Some(prost_types::value::Kind::StructValue(s)) = v.kind else { panic!("{v:?}") };
        assert_eq!(s.fields["name"].kind, Some(prost_types::value::Kind::StringValue("Sales".into())));
        assert_eq!(s.fields["n"].kind, Some(prost_types::value::Kind::NumberValue(2.0)));
        assert_eq!(s.fields["ok"].kind, Some(prost_types::value::Kind::BoolValue(true)));
        let Some(prost_types::value::Kind::ListValue(l)) = &s.fields["tags"].kind else { panic!() };
        assert_eq!(l.values[1].kind, Some(prost_types::value::Kind::NullValue(0)));
    }
}
