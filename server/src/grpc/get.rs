//! `Get`: serve one resource through the cache.

use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::deadline;
use crate::cache::{Cache, Served, Source};
use crate::entry::now_ms;
use crate::error::Error;
use crate::proto::v1::{self, GetRequest, GetResponse};

pub async fn handle(cache: &Cache, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
    let deadline = deadline::from_metadata(request.metadata());
    let req = request.into_inner();
    let served = match deadline {
        Some(limit) => tokio::time::timeout(limit, cache.get(&req, Some(Instant::now() + limit)))
            .await
            .map_err(|_| Error::DeadlineExceeded(format!("no answer within the caller's {limit:?}")))?,
        None => cache.get(&req, None).await,
    }?;
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
        Source::Store => v1::Source::Store,
        Source::Upstream => v1::Source::Upstream,
        Source::Stale => v1::Source::Stale,
        Source::Coalesced => v1::Source::Coalesced,
    }
}

fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}
