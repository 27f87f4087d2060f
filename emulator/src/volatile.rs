//! Per-response metadata that changes on every answer (`_links` with a request
//! id, `retrievedAt`), like the platform's own. A cache must not let these
//! fields defeat change detection, and tests need them to tell responses apart.

use chrono::Utc;
use serde_json::{json, Value};

use crate::timefmt::rfc3339_utc;

/// Returns `doc` with fresh volatile fields added (non-objects are returned as is).
pub(crate) fn decorate(doc: &Value, self_uri: &str) -> Value {
    let mut out = doc.clone();
    if let Value::Object(map) = &mut out {
        let request_id = uuid::Uuid::new_v4();
        map.insert(
            "_links".into(),
            json!({ "self": { "href": format!("{self_uri}?requestId={request_id}") } }),
        );
        map.insert("retrievedAt".into(), json!(rfc3339_utc(&Utc::now())));
    }
    out
}
