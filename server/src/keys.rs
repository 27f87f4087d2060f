//! Cache keys: what clients see, and where each key lives in Redis.
//!
//! Logical keys (returned in `GetResponse.key`, accepted by `Invalidate`):
//! - named resources: `{env}:{kind}:{id}:{variant}` (`_` for id-less kinds,
//!   `full` for no variant), plus `:q{hash}` when query parameters are given;
//! - body-carrying queries: `{env}:{kind}:{sha256 of the canonical body}`.
//!
//! In Redis the first three segments form a cluster hash tag
//! (`cx:{prod:routing.queue:42}:full`), so every variant of one entity and
//! its bookkeeping keys share a slot (atomic scripts work on them) while
//! different entities spread over the cluster.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::canonical;

/// Arrays whose order has no meaning in a query body (Genesys filters).
const UNORDERED_ARRAYS: &[&str] = &["predicates", "clauses"];

/// Segment used for id-less kinds and the full (unprojected) variant.
pub const NO_ID: &str = "_";
pub const FULL_VARIANT: &str = "full";

/// Key of a named (id-keyed) resource.
pub fn named(
    env: &str,
    kind: &str,
    id: Option<&str>,
    variant: Option<&str>,
    params: &BTreeMap<String, String>,
) -> String {
    let mut key = format!(
        "{env}:{kind}:{}:{}",
        id.filter(|s| !s.is_empty()).unwrap_or(NO_ID),
        variant.filter(|s| !s.is_empty()).unwrap_or(FULL_VARIANT)
    );
    if !params.is_empty() {
        // BTreeMap iterates in key order: the same params give the same hash.
        let mut h = Sha256::new();
        for (k, v) in params {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        key.push_str(":q");
        key.push_str(&hex::encode(&h.finalize()[..8]));
    }
    key
}

/// Key of a body-carrying query. `id` (e.g. a data action id) is hashed with
/// the body so executions spread over the cluster.
pub fn for_body(
    env: &str,
    kind: &str,
    id: Option<&str>,
    variant: Option<&str>,
    canonical_body: &[u8],
) -> String {
    let mut h = Sha256::new();
    if let Some(id) = id.filter(|s| !s.is_empty()) {
        h.update(id.as_bytes());
        h.update([0]);
    }
    h.update(canonical_body);
    let mut key = format!("{env}:{kind}:{}", hex::encode(h.finalize()));
    if let Some(v) = variant.filter(|s| !s.is_empty()) {
        key.push(':');
        key.push_str(v);
    }
    key
}

/// The canonical form of a query body: metadata fields dropped, keys sorted,
/// filter predicates sorted, times (and `start/end` intervals) in UTC.
pub fn canonical_body(body: Value, ignore_fields: &[String]) -> Vec<u8> {
    let mut value = canonical::canonicalize(body, ignore_fields);
    canonical::sort_arrays_under(&mut value, UNORDERED_ARRAYS);
    canonical::to_bytes(&value)
}

/// The Redis key under which a logical key's entry is stored.
pub fn store_key(logical: &str) -> String {
    let (tag, rest) = split_tag(logical);
    format!("cx:{{{tag}}}{rest}")
}

/// Splits a logical key into its hash-tag part (first three segments) and the rest.
fn split_tag(logical: &str) -> (&str, &str) {
    let mut colons = logical.match_indices(':').map(|(i, _)| i);
    match colons.nth(2) {
        Some(i) => (&logical[..i], &logical[i..]),
        None => (logical, ""),
    }
}

/// The entity part (`cx:{…}`) of a store key: its hash tag.
fn entity_of(store_key: &str) -> &str {
    match store_key.find('}') {
        Some(i) => &store_key[..=i],
        None => store_key,
    }
}

/// Generation counter of a store key's entity (bumped by every purge).
pub fn generation_key(store_key: &str) -> String {
    format!("{}:~gen", entity_of(store_key))
}

/// Fence (lease token of the last write) of a store key.
pub fn fence_key(store_key: &str) -> String {
    format!("{store_key}:~fence")
}

/// Lease of a store key's fetch, and the sequence its tokens come from.
pub fn lease_key(store_key: &str) -> String {
    format!("{store_key}:~lease")
}

pub fn lease_seq_key(store_key: &str) -> String {
    format!("{store_key}:~seq")
}

/// Index of the keys of one kind (for prefix purges).
pub fn kind_index(env: &str, kind: &str) -> String {
    format!("cx:idx:{{{env}:{kind}}}")
}

/// Index of the keys carrying one tag (for tag purges).
pub fn tag_index(env: &str, tag: &str) -> String {
    format!("cx:tag:{{{env}:{tag}}}")
}

/// Whether a store key is bookkeeping rather than an entry.
pub fn is_bookkeeping(store_key: &str) -> bool {
    store_key.contains(":~") || store_key.starts_with("cx:idx:") || store_key.starts_with("cx:tag:")
}

/// The resource kind named in a logical key.
pub fn kind_of(logical: &str) -> Option<&str> {
    logical.split(':').nth(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn named_key_shapes() {
        let none = BTreeMap::new();
        assert_eq!(named("prod", "routing.queue", Some("q1"), None, &none), "prod:routing.queue:q1:full");
        assert_eq!(
            named("prod", "routing.queue", Some("q1"), Some("summary"), &none),
            "prod:routing.queue:q1:summary"
        );
        let mut p = BTreeMap::new();
        p.insert("pageSize".to_string(), "25".to_string());
        let k = named("prod", "routing.queues", None, None, &p);
        assert!(k.starts_with("prod:routing.queues:_:full:q"), "{k}");
        p.insert("name".to_string(), "Sales".to_string());
        assert_ne!(named("prod", "routing.queues", None, None, &p), k);
    }

    #[test]
    fn store_keys_carry_the_entity_hash_tag() {
        assert_eq!(store_key("prod:routing.queue:q1:full"), "cx:{prod:routing.queue:q1}:full");
        assert_eq!(store_key("prod:analytics.x:abc"), "cx:{prod:analytics.x:abc}");
        assert_eq!(kind_of("prod:routing.queue:q1:full"), Some("routing.queue"));
        let sk = store_key("prod:routing.queue:q1:full");
        assert_eq!(generation_key(&sk), "cx:{prod:routing.queue:q1}:~gen");
        assert_eq!(lease_key(&sk), "cx:{prod:routing.queue:q1}:full:~lease");
        assert!(is_bookkeeping(&fence_key(&sk)) && !is_bookkeeping(&sk));
    }

    #[test]
    fn equivalent_bodies_share_a_key() {
        let ignore = vec!["requestId".to_string()];
        let a = json!({
            "interval": "2023-10-01T00:00:00Z/2023-10-01T01:00:00Z",
            "granularity": "PT1H",
            "filter": {"type": "and", "predicates": [
                {"dimension": "queueId", "value": "q1"}, {"dimension": "mediaType", "value": "voice"}]},
            "metrics": ["nOffered"],
            "requestId": "r-1"
        });
        let b = json!({
            "metrics": ["nOffered"],
            "requestId": "r-2",
            "filter": {"predicates": [
                {"value": "voice", "dimension": "mediaType"}, {"value": "q1", "dimension": "queueId"}], "type": "and"},
            "granularity": "PT1H",
            "interval": "2023-10-01T07:00:00+07:00/2023-10-01T08:00:00+07:00"
        });
        let ka = for_body("prod", "analytics", None, None, &canonical_body(a, &ignore));
        let kb = for_body("prod", "analytics", None, None, &canonical_body(b, &ignore));
        assert_eq!(ka, kb);
        let c = json!({"interval": "2023-10-01T00:00:00Z/2023-10-01T02:00:00Z", "metrics": ["nOffered"]});
        assert_ne!(ka, for_body("prod", "analytics", None, None, &canonical_body(c, &ignore)));
    }
}
