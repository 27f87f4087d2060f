//! `Invalidate`: purge by exact key (prefix and tag purges arrive with the
//! invalidation index).

use tonic::{Request, Response, Status};

use crate::cache::Cache;
use crate::error::{Error, FieldViolation};
use crate::keys;
use crate::proto::v1::{InvalidateRequest, InvalidateResponse};

pub async fn handle(
    cache: &Cache,
    request: Request<InvalidateRequest>,
) -> Result<Response<InvalidateResponse>, Status> {
    let req = request.into_inner();
    let mut bad = Vec::new();
    if req.keys.is_empty() && req.prefixes.is_empty() && req.tags.is_empty() {
        bad.push(FieldViolation::new("keys", "name at least one key, prefix or tag"));
    }
    for (i, key) in req.keys.iter().enumerate() {
        if key.split(':').count() < 3 || key.chars().any(char::is_whitespace) {
            bad.push(FieldViolation::new(format!("keys[{i}]"), "not a cxcache key ({env}:{kind}:{id}…)"));
        } else if !key.starts_with(&format!("{}:", cache.env())) {
            bad.push(FieldViolation::new(
                format!("keys[{i}]"),
                format!("key is not in this server's namespace {:?}", cache.env()),
            ));
        }
    }
    if !bad.is_empty() {
        return Err(Error::InvalidArgument(bad).into());
    }
    if !req.prefixes.is_empty() || !req.tags.is_empty() {
        return Err(Error::Unimplemented("Invalidate by prefix or tag").into());
    }
    let store_keys: Vec<String> = req.keys.iter().map(|k| keys::store_key(k)).collect();
    let purged = cache.tiers().remove(&store_keys).await?;
    tracing::info!(target: "audit", keys = ?req.keys, reason = %req.reason, purged, "invalidate");
    Ok(Response::new(InvalidateResponse { purged }))
}
