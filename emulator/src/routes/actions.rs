//! `POST /api/v2/integrations/actions/{actionId}/execute`: a data action whose
//! output is a pure function of the action id and the input's meaning (key
//! order does not matter), plus volatile per-response fields.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::canonical::{canonical_json, stable_u64};
use crate::error::ApiError;
use crate::extract::{json_object, path_param};
use crate::state::SharedState;
use crate::volatile::decorate;

pub(super) fn router() -> Router<SharedState> {
    Router::new().route("/api/v2/integrations/actions/{action_id}/execute", post(execute))
}

/// The deterministic result of running `action_id` on `input`.
fn run(action_id: &str, input: &Value) -> Value {
    let canonical = canonical_json(input);
    let h = stable_u64(&["action", action_id, &canonical]);
    json!({
        "actionId": action_id,
        "input": input,
        "result": {
            "score": h % 1000,
            "fingerprint": format!("{:016x}", h),
        },
    })
}

async fn execute(
    action_id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let action_id = path_param(action_id)?;
    let input = json_object(&body)?;
    let self_uri = format!("/api/v2/integrations/actions/{action_id}/execute");
    Ok(Json(decorate(&run(&action_id, &input), &self_uri)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_depends_on_meaning_only() {
        let a: Value = serde_json::from_str(r#"{"x":1,"y":"z"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"y":"z","x":1}"#).unwrap();
        assert_eq!(run("act", &a)["result"], run("act", &b)["result"]);
        assert_ne!(run("act", &a)["result"], run("other", &a)["result"]);
    }
}
