//! Request-input helpers that turn malformed input into Genesys-style 400s
//! instead of axum's plain-text rejections.

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use serde_json::Value;

use crate::error::ApiError;

/// Parses a body that must be a JSON object.
pub(crate) fn json_object(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Unable to parse the request body as JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("The request body must be a JSON object"));
    }
    Ok(value)
}

/// Unwraps a path extraction, mapping a rejection to a 400.
pub(crate) fn path_param<T>(param: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    param.map(|Path(p)| p).map_err(|e| ApiError::bad_request(format!("Invalid path parameter: {e}")))
}
