//! Canonical JSON and stable hashes. Outputs that must be "deterministic from
//! the meaning" (ETags, action results, analytics numbers) hash this form, so
//! key order in a request body or a serde_json feature flip cannot change them.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Serializes `v` with object keys sorted explicitly at every level.
pub(crate) fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Hex SHA-256 of the canonical form.
pub(crate) fn hash_hex(v: &Value) -> String {
    hex::encode(Sha256::digest(canonical_json(v).as_bytes()))
}

/// A stable 64-bit number from a list of parts (each length-prefixed, so
/// `["ab","c"]` and `["a","bc"]` differ).
pub(crate) fn stable_u64(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_matter() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,2],"x":null}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&a), r#"{"a":{"x":null,"y":[1,2]},"b":1}"#);
        assert_eq!(hash_hex(&a), hash_hex(&b));
        assert_ne!(hash_hex(&a), hash_hex(&json!({"b": 2})));
    }

    #[test]
    fn parts_are_separated() {
        assert_ne!(stable_u64(&["ab", "c"]), stable_u64(&["a", "bc"]));
    }
}
