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
//!
//! This module is the one place that knows the key grammar: [`Key`] parses
//! and prints logical keys, [`EntityId`] is the one validated id, and every
//! Redis key format (entries, bookkeeping, indexes, bus, limiter, marks)
//! is built by a function here.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::canonical;

/// Most characters of an entity id.
pub const MAX_ID_LEN: usize = 128;

/// A validated entity id: 1–[`MAX_ID_LEN`] unreserved URL characters
/// (`A-Z a-z 0-9 - _ . ~`), never `.` or `..`. Ids go into URL paths,
/// keys and topics, so nothing else may pass.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId(String);

impl EntityId {
    /// What [`EntityId::parse`] accepts, for error messages.
    pub const RULE: &'static str = "1-128 characters of A-Z a-z 0-9 - _ . ~";

    pub fn parse(id: &str) -> Option<EntityId> {
        let ok_chars = id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'));
        (!id.is_empty() && id.len() <= MAX_ID_LEN && ok_chars && id != "." && id != "..")
            .then(|| EntityId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for EntityId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A logical key, parsed: `{env}:{kind}:{id}[:{variant}][:q{query hash}]`.
/// For body-keyed kinds `id` is the body hash. Display prints it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key<'a> {
    pub env: &'a str,
    pub kind: &'a str,
    /// The entity id, [`NO_ID`] for id-less kinds, or the body hash.
    pub id: &'a str,
    pub variant: Option<&'a str>,
    /// The hash of the query parameters (without its `q`).
    pub query: Option<&'a str>,
}

impl<'a> Key<'a> {
    /// Parses a logical key; None unless it has env, kind and id segments,
    /// none empty, and no spaces or control characters.
    pub fn parse(key: &'a str) -> Option<Key<'a>> {
        if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        let mut parts = key.split(':');
        let (env, kind, id) = (parts.next()?, parts.next()?, parts.next()?);
        if env.is_empty() || kind.is_empty() || id.is_empty() {
            return None;
        }
        let mut variant = None;
        let mut query = None;
        for part in parts {
            match (variant, part.strip_prefix('q')) {
                (Some(_), Some(hash)) if query.is_none() => query = Some(hash),
                (None, _) => variant = Some(part),
                _ => return None,
            }
        }
        Some(Key { env, kind, id, variant, query })
    }

    /// Whether the key names an entity (not an id-less kind).
    pub fn entity(&self) -> Option<&'a str> {
        (self.id != NO_ID).then_some(self.id)
    }

    /// The Redis key of this key's entry.
    pub fn store_key(&self) -> String {
        store_key(&self.to_string())
    }
}

impl std::fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.env, self.kind, self.id)?;
        if let Some(v) = self.variant {
            write!(f, ":{v}")?;
        }
        if let Some(q) = self.query {
            write!(f, ":q{q}")?;
        }
        Ok(())
    }
}

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
    // One exact allocation, not `format!`: this runs on every Get, hits included.
    let id = id.filter(|s| !s.is_empty()).unwrap_or(NO_ID);
    let variant = variant.filter(|s| !s.is_empty()).unwrap_or(FULL_VARIANT);
    let mut key = [env, kind, id, variant].join(":");
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
    ["cx:{", tag, "}", rest].concat()
}

/// Splits a logical key into its hash-tag part (first three segments) and the rest.
fn split_tag(logical: &str) -> (&str, &str) {
    let mut colons = logical.match_indices(':').map(|(i, _)| i);
    match colons.nth(2) {
        Some(i) => (&logical[..i], &logical[i..]),
        None => (logical, ""),
    }
}

/// Lease of a store key's fetch (same slot as the entry).
pub fn lease_key(store_key: &str) -> String {
    format!("{store_key}:~lease")
}

/// Index of the keys of one kind (for prefix purges).
pub fn kind_index(env: &str, kind: &str) -> String {
    format!("cx:idx:{{{env}:{kind}}}")
}

/// Index of the keys carrying one tag (for tag purges). An entity's own
/// tag (`queue:{id}`) has none ([`crate::catalog::Kind::indexes_tag`]).
pub fn tag_index(env: &str, tag: &str) -> String {
    format!("cx:tag:{{{env}:{tag}}}")
}

/// Whether a store key is bookkeeping rather than an entry.
pub fn is_bookkeeping(store_key: &str) -> bool {
    store_key.contains(":~") || store_key.starts_with("cx:idx:") || store_key.starts_with("cx:tag:")
}

/// The resource kind named in a logical key.
pub fn kind_of(logical: &str) -> Option<&str> {
    Key::parse(logical).map(|k| k.kind)
}

/// The bus channel of one namespace.
pub fn bus_channel(env: &str) -> String {
    format!("cx:bus:{{{env}}}")
}

/// A purge's acknowledgement set: the ids of the instances that dropped
/// what it named (one set per purge).
pub fn ack_set(env: &str, id: &str) -> String {
    format!("cx:ack:{{{env}}}:{id}")
}

/// The fleet registry: instance ids scored by when their entry expires.
pub fn fleet_registry(env: &str) -> String {
    format!("cx:fleet:{{{env}}}")
}

/// The idempotency mark of a webhook or EventBridge event.
pub fn event_mark(env: &str, event_id: &str) -> String {
    format!("cx:evt:{{{env}}}:{event_id}")
}

/// The fleet-wide rate-limit key of one credential (`digest`: a hash of
/// the token URL and client id, so no secret or id is spelled out).
pub fn ratelimit_key(digest: &[u8]) -> String {
    format!("cx:ratelimit:{{{}}}", hex::encode(digest))
}

/// The budget the fleet learned for the credential of limiter key `key`
/// (same slot).
pub fn ratelimit_budget(key: &str) -> String {
    format!("{key}:budget")
}

/// The notification listener's lease.
pub fn listener_lease(env: &str) -> String {
    format!("cx:{{{env}:notifications}}:leader")
}

/// The consistency verifier's fleet lease (one verifier per fleet).
pub fn verifier_lease(env: &str) -> String {
    format!("cx:{{{env}:verifier}}:leader")
}

/// The keys of change-callback endpoint `name`, all in one slot: `log` (a
/// stream of its events), `n` (their count, for what a trim dropped),
/// `cursor` (the last one delivered) and `deliverer` (the delivery lease).
pub fn callback_key(env: &str, name: &str, part: &str) -> String {
    format!("cx:{{{env}:callback:{name}}}:{part}")
}

/// The channel ids the notification listener holds (so a successor can
/// release a dead listener's channels).
pub fn listener_channels(env: &str) -> String {
    format!("cx:{{{env}:notifications}}:channels")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_parse_and_print_back() {
        for text in [
            "prod:routing.queue:q1:full",
            "prod:routing.queues:_:full:qabc123",
            "prod:analytics.x:0123abcd",
            "prod:data.action:0123abcd:summary",
        ] {
            let key = Key::parse(text).expect(text);
            assert_eq!(key.to_string(), text);
        }
        let k = Key::parse("prod:routing.queues:_:full:qabc").unwrap();
        assert_eq!(
            (k.env, k.kind, k.id, k.variant, k.query),
            ("prod", "routing.queues", "_", Some("full"), Some("abc"))
        );
        assert_eq!(k.entity(), None);
        assert_eq!(Key::parse("prod:routing.queue:q1:full").unwrap().entity(), Some("q1"));
        for bad in ["", "prod", "prod:kind", "prod::x", "prod:k:1:full:qa:qb", "prod:k:1 2", "prod:k:1:a:b"] {
            assert!(Key::parse(bad).is_none(), "{bad:?}");
        }
        assert_eq!(Key::parse("p:k:1:full").unwrap().store_key(), "cx:{p:k:1}:full");
    }

    #[test]
    fn entity_ids_are_unreserved_url_characters() {
        for ok in ["6f1c-42", "a_b.c~d", "x"] {
            assert_eq!(EntityId::parse(ok).map(|i| i.to_string()), Some(ok.to_string()));
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "é", &"x".repeat(MAX_ID_LEN + 1)] {
            assert!(EntityId::parse(bad).is_none(), "{bad:?}");
        }
    }

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
        assert_eq!(lease_key(&sk), "cx:{prod:routing.queue:q1}:full:~lease");
        assert!(is_bookkeeping(&lease_key(&sk)) && !is_bookkeeping(&sk));
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
