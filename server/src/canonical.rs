//! Canonical JSON: one byte sequence per logical value.
//!
//! Used for query bodies (so equivalent queries share a key) and for stored
//! values (so the same upstream state always gives the same bytes). Object
//! keys are sorted explicitly rather than relying on serde_json's map type:
//! one crate enabling `preserve_order` anywhere in the graph would otherwise
//! silently change every key.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

/// Rebuilds `value` with object keys in sorted order and RFC 3339 timestamps
/// converted to UTC, dropping object fields named in `drop` at any depth.
pub fn canonicalize(value: Value, drop: &[String]) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> =
                map.into_iter().filter(|(k, _)| !drop.iter().any(|d| d == k)).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Map::new();
            for (k, v) in entries {
                out.insert(k, canonicalize(v, drop));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(|v| canonicalize(v, drop)).collect()),
        Value::String(s) => Value::String(utc_timestamp(&s).unwrap_or(s)),
        other => other,
    }
}

/// `s` as a UTC RFC 3339 timestamp, if it is a timestamp with an offset.
/// Also handles ISO-8601 intervals `start/end` of two such timestamps.
pub fn utc_timestamp(s: &str) -> Option<String> {
    if let Some((start, end)) = s.split_once('/') {
        return Some(format!("{}/{}", utc_instant(start)?, utc_instant(end)?));
    }
    utc_instant(s)
}

fn utc_instant(s: &str) -> Option<String> {
    // Cheap shape check first: most strings are not timestamps.
    let b = s.as_bytes();
    if !(20..=40).contains(&b.len()) || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let t = DateTime::parse_from_rfc3339(s).ok()?;
    Some(t.with_timezone(&Utc).to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// Serializes a canonical value. Object keys are already in order.
pub fn to_bytes(value: &Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail: all keys are strings.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Sorts the arrays stored under any of `keys` (at any depth) by their
/// canonical serialization: for filter predicates, whose order carries no
/// meaning.
pub fn sort_arrays_under(value: &mut Value, keys: &[&str]) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                sort_arrays_under(v, keys);
                if keys.contains(&k.as_str()) {
                    if let Value::Array(items) = v {
                        items.sort_by_cached_key(to_bytes);
                    }
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| sort_arrays_under(v, keys)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_sorted_and_fields_dropped_at_any_depth() {
        let v =
            json!({"b": 1, "a": {"_links": {"x": 1}, "z": 2, "y": [ {"_links": 3, "k": 1} ]}, "_links": {}});
        let c = canonicalize(v, &["_links".to_string()]);
        assert_eq!(String::from_utf8(to_bytes(&c)).unwrap(), r#"{"a":{"y":[{"k":1}],"z":2},"b":1}"#);
    }

    #[test]
    fn timestamps_and_intervals_become_utc() {
        assert_eq!(utc_timestamp("2023-10-01T07:00:00+07:00").unwrap(), "2023-10-01T00:00:00Z");
        assert_eq!(utc_timestamp("2024-03-01T14:00:00.250+02:00").unwrap(), "2024-03-01T12:00:00.250Z");
        assert_eq!(
            utc_timestamp("2023-10-01T07:00:00+07:00/2023-10-01T08:00:00+07:00").unwrap(),
            "2023-10-01T00:00:00Z/2023-10-01T01:00:00Z"
        );
        assert_eq!(utc_timestamp("Queue 0001"), None);
        assert_eq!(utc_timestamp("2023-13-45T99:00:00+07:00"), None);
    }

    #[test]
    fn predicate_arrays_sorted() {
        let mut v = json!({"filter": {"predicates": [{"dimension": "b"}, {"dimension": "a"}]}});
        sort_arrays_under(&mut v, &["predicates"]);
        assert_eq!(v["filter"]["predicates"][0]["dimension"], "a");
    }
}
