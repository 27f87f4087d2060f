//! Normalization of upstream answers before they are stored: volatile
//! per-response metadata (`_links`, `retrievedAt`, …) dropped, times in UTC,
//! keys sorted, then the requested variant's projection. Identical logical
//! state gives identical bytes, so watchers are not told about changes that
//! are not changes, and clients can compare values byte for byte.

use serde_json::{Map, Value};

use crate::canonical;
use crate::error::{Error, Result};

/// Parses, normalizes and projects an upstream body into canonical bytes.
pub fn normalize(body: &[u8], drop_fields: &[String], projection: Option<&[String]>) -> Result<Vec<u8>> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::BadUpstream(format!("upstream body is not JSON: {e}")))?;
    let mut value = canonical::canonicalize(value, drop_fields);
    if let Some(fields) = projection {
        value = project(&value, fields);
    }
    Ok(canonical::to_bytes(&value))
}

/// Keeps only `fields` (dotted paths such as `mediaSettings.call`) of an
/// object. Missing fields are simply absent from the projection.
pub fn project(value: &Value, fields: &[String]) -> Value {
    let mut out = Value::Object(Map::new());
    for field in fields {
        let path: Vec<&str> = field.split('.').collect();
        if let Some(v) = lookup(value, &path) {
            insert(&mut out, &path, v.clone());
        }
    }
    // Insertion may have broken key order for nested paths: re-sort.
    canonical::canonicalize(out, &[])
}

fn lookup<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, seg| v.get(seg))
}

fn insert(out: &mut Value, path: &[&str], v: Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = out;
    for seg in parents {
        let Value::Object(map) = cur else { return };
        cur = map.entry(seg.to_string()).or_insert_with(|| Value::Object(Map::new()));
    }
    if let Value::Object(map) = cur {
        map.insert(last.to_string(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop() -> Vec<String> {
        vec!["_links".into(), "retrievedAt".into()]
    }

    #[test]
    fn volatile_fields_do_not_change_bytes() {
        let a = br#"{"name":"Q","_links":{"self":{"href":"/x?requestId=1"}},"retrievedAt":"2024-01-01T00:00:00.001Z","dateModified":"2024-03-01T14:00:00.000+02:00"}"#;
        let b = br#"{"retrievedAt":"2024-01-01T00:00:09.999Z","dateModified":"2024-03-01T12:00:00Z","_links":{"self":{"href":"/x?requestId=2"}},"name":"Q"}"#;
        let na = normalize(a, &drop(), None).unwrap();
        assert_eq!(na, normalize(b, &drop(), None).unwrap());
        assert_eq!(String::from_utf8(na).unwrap(), r#"{"dateModified":"2024-03-01T12:00:00Z","name":"Q"}"#);
    }

    #[test]
    fn variants_keep_only_their_fields() {
        let body =
            br#"{"id":"1","name":"Q","mediaSettings":{"call":{"a":1},"chat":{"b":2}},"memberCount":3}"#;
        let fields = vec!["name".to_string(), "mediaSettings.call".to_string(), "missing".to_string()];
        let out = normalize(body, &drop(), Some(&fields)).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"mediaSettings":{"call":{"a":1}},"name":"Q"}"#);
    }

    #[test]
    fn non_json_is_rejected() {
        assert!(matches!(normalize(b"<html>", &drop(), None), Err(Error::BadUpstream(_))));
    }
}
