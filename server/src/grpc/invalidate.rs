//! `Invalidate`: purge by exact key, prefix or tag, on every instance.

use tonic::{Request, Response, Status};

use crate::invalidation::{Invalidator, Purge};
use crate::proto::v1::{InvalidateRequest, InvalidateResponse};

pub async fn handle(
    invalidator: &Invalidator,
    request: Request<InvalidateRequest>,
) -> Result<Response<InvalidateResponse>, Status> {
    // The audit line names the authenticated caller, not an address.
    let caller = super::admission::caller(&request)?;
    let actor = format!("grpc:{}", caller.name());
    let deadline = super::deadline::answer_by(request.metadata())?;
    let req = request.into_inner();
    caller.check_invalidate(&req.keys, &req.prefixes, &req.tags).map_err(super::admission::refused)?;
    let purge = Purge {
        keys: req.keys,
        prefixes: req.prefixes,
        tags: req.tags,
        reason: req.reason,
        actor,
        event_id: None,
    };
    let purged = invalidator.purge(purge, deadline).await?;
    Ok(Response::new(InvalidateResponse { purged }))
}
