//! Request policy: turns a `GetRequest` into a fully resolved request (kind,
//! key, upstream call, freshness) or a list of field violations.
//!
//! Validation happens before anything else, so bad input changes nothing:
//! no upstream call, no store write, no purge.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::catalog::{Catalog, KeyShape, Kind};
use crate::config::CacheSettings;
use crate::error::{Error, FieldViolation, Result};
use crate::keys;
use crate::proto::v1::GetRequest;
use crate::upstream::Call;

const MAX_PARAM_LEN: usize = 512;

/// What a caller accepts from the cache.
#[derive(Debug, Clone, Default)]
pub struct Freshness {
    pub max_age: Option<Duration>,
    pub allow_stale: bool,
    pub force_refresh: bool,
}

/// A validated Get.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub kind_name: String,
    pub kind: Arc<Kind>,
    pub id: Option<String>,
    /// The requested variant, when it projects fields (see
    /// [`Resolved::projection`]): its name only, so a hit copies no field list.
    variant: Option<String>,
    /// Logical key (what clients see).
    pub key: String,
    /// Where the entry lives in the store.
    pub store_key: String,
    /// The caller's query body as parsed: for TTL alignment, and sent as it
    /// is upstream (the key comes from its canonical form).
    pub body: Option<Value>,
    pub freshness: Freshness,
    /// Whether the answer may be cached and shared (false: an action with
    /// side effects, called upstream every time).
    pub cacheable: bool,
    /// Accepted query parameters, kept raw: the upstream call is only built
    /// on a miss ([`Resolved::call`]), so a hit allocates as little as
    /// possible.
    params: BTreeMap<String, String>,
}

impl Resolved {
    /// Fields kept by the requested variant, if any.
    pub fn projection(&self) -> Option<&[String]> {
        self.variant.as_ref().and_then(|v| self.kind.variants.get(v)).map(Vec::as_slice)
    }

    /// The upstream call that fetches this resource.
    pub fn call(&self) -> Call {
        let path = match &self.id {
            Some(id) => self.kind.path.replace("{id}", id),
            None => self.kind.path.clone(),
        };
        Call {
            method: self.kind.method,
            path,
            query: self.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            body: self.body.as_ref().map(|b| Bytes::from(crate::canonical::to_bytes(b))),
            job: self.kind.job,
            validators: None,
            priority: Default::default(),
        }
    }

    /// The tags an entry of this resource carries.
    pub fn tags(&self) -> Vec<String> {
        self.kind.tags_for(self.id.as_deref().unwrap_or(keys::NO_ID))
    }

    /// The tags whose indexes record this entry: all but the entity's own
    /// (see [`crate::catalog::Kind::indexes_tag`]).
    pub fn indexed_tags(&self) -> Vec<String> {
        self.kind.indexed_tags_for(self.id.as_deref().unwrap_or(keys::NO_ID))
    }
}

/// Validates `req` against the catalog and resolves it.
pub fn resolve(req: &GetRequest, env: &str, catalog: &Catalog, settings: &CacheSettings) -> Result<Resolved> {
    let mut bad = Vec::new();
    let kind_name = req.kind.trim();
    let kind = if kind_name.is_empty() {
        bad.push(FieldViolation::new("kind", "required: a resource kind from the catalog"));
        None
    } else {
        let found = catalog.get(kind_name);
        if found.is_none() {
            let known: Vec<&str> = catalog.names().collect();
            bad.push(FieldViolation::new(
                "kind",
                format!("unknown resource kind {kind_name:?}; known kinds: {}", known.join(", ")),
            ));
        }
        found.cloned()
    };
    let freshness = check_freshness(req, &mut bad);
    let Some(kind) = kind else {
        return Err(Error::InvalidArgument(bad));
    };

    let id = check_id(req, &kind, &mut bad);
    let projected = check_variant(req, &kind, &mut bad);
    let params = check_params(req, &kind, &mut bad);
    let body = check_body(req, &kind, settings, &mut bad);
    if !bad.is_empty() {
        return Err(Error::InvalidArgument(bad));
    }
    let Some(cacheable) = kind.cacheable(id.as_deref()) else {
        return Err(Error::ActionNotAllowed { kind: kind_name.to_string(), action: id.unwrap_or_default() });
    };

    let variant = (!req.variant.is_empty()).then_some(req.variant.as_str());
    let key = match (&kind.key, &body) {
        // The key from the canonical body: equivalent bodies share one key
        // and one call.
        (KeyShape::Body, Some(body)) => {
            let canonical = keys::canonical_body(body.clone(), &settings.body_ignore_fields);
            keys::for_body(env, kind_name, id.as_deref(), variant, &canonical)
        }
        _ => keys::named(env, kind_name, id.as_deref(), variant, &params),
    };
    Ok(Resolved {
        kind_name: kind_name.to_string(),
        store_key: keys::store_key(&key),
        key,
        variant: projected.then(|| req.variant.clone()),
        id,
        body,
        freshness,
        cacheable,
        kind,
        params,
    })
}

fn check_freshness(req: &GetRequest, bad: &mut Vec<FieldViolation>) -> Freshness {
    let Some(f) = &req.freshness else { return Freshness::default() };
    let max_age = match &f.max_age {
        None => None,
        Some(d) if d.seconds < 0 || d.nanos < 0 => {
            bad.push(FieldViolation::new("freshness.max_age", "must not be negative"));
            None
        }
        Some(d) if d.seconds == 0 && d.nanos == 0 => None,
        Some(d) => Some(Duration::new(d.seconds as u64, d.nanos as u32)),
    };
    Freshness { max_age, allow_stale: f.allow_stale, force_refresh: f.force_refresh }
}

fn check_id(req: &GetRequest, kind: &Kind, bad: &mut Vec<FieldViolation>) -> Option<String> {
    let id = req.id.trim();
    if !kind.needs_id() {
        if !id.is_empty() {
            bad.push(FieldViolation::new("id", format!("kind {} takes no id", req.kind)));
        }
        return None;
    }
    if id.is_empty() {
        bad.push(FieldViolation::new("id", format!("required for kind {}", req.kind)));
        return None;
    }
    // Ids go into URL paths and keys: only unreserved URL characters.
    match keys::EntityId::parse(id) {
        Some(id) => Some(id.into_string()),
        None => {
            bad.push(FieldViolation::new("id", format!("must be {}", keys::EntityId::RULE)));
            None
        }
    }
}

fn check_variant(req: &GetRequest, kind: &Kind, bad: &mut Vec<FieldViolation>) -> bool {
    if req.variant.is_empty() || req.variant == keys::FULL_VARIANT {
        return false;
    }
    if kind.variants.contains_key(&req.variant) {
        return true;
    }
    let known: Vec<&str> = kind.variants.keys().map(String::as_str).collect();
    bad.push(FieldViolation::new(
        "variant",
        format!("unknown variant {:?} for kind {}; known: {}", req.variant, req.kind, known.join(", ")),
    ));
    false
}

/// Query params cxcache sets itself when it assembles a paged list.
const PAGING_PARAMS: [&str; 4] = ["pageSize", "pageNumber", "cursor", "after"];

fn check_params(req: &GetRequest, kind: &Kind, bad: &mut Vec<FieldViolation>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, value) in &req.params {
        if kind.paged && PAGING_PARAMS.contains(&name.as_str()) {
            // One caller's pageSize=1 would spend one call per entry, and
            // every page size would cache the same list under another key.
            bad.push(FieldViolation::new(
                format!("params[{name}]"),
                format!(
                    "{} is assembled from every page by cxcache (upstream.page_size); paging params are not accepted",
                    req.kind
                ),
            ));
        } else if !kind.params.iter().any(|p| p == name) {
            bad.push(FieldViolation::new(
                format!("params[{name}]"),
                format!("not accepted by kind {}; accepted: {}", req.kind, kind.params.join(", ")),
            ));
        } else if value.len() > MAX_PARAM_LEN || value.chars().any(char::is_control) {
            bad.push(FieldViolation::new(
                format!("params[{name}]"),
                format!("must be at most {MAX_PARAM_LEN} characters without control characters"),
            ));
        } else {
            out.insert(name.clone(), value.clone());
        }
    }
    out
}

fn check_body(
    req: &GetRequest,
    kind: &Kind,
    settings: &CacheSettings,
    bad: &mut Vec<FieldViolation>,
) -> Option<Value> {
    let raw = req.body_json.trim();
    if !kind.takes_body() {
        if !raw.is_empty() {
            bad.push(FieldViolation::new("body_json", format!("kind {} takes no body", req.kind)));
        }
        return None;
    }
    if raw.is_empty() {
        bad.push(FieldViolation::new("body_json", format!("required for kind {}: a JSON object", req.kind)));
        return None;
    }
    if req.body_json.len() > settings.max_body_bytes {
        bad.push(FieldViolation::new(
            "body_json",
            format!("{} bytes is over the limit of {} bytes", req.body_json.len(), settings.max_body_bytes),
        ));
        return None;
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ Value::Object(_)) if kind.job => match crate::upstream::check_job_body(&v) {
            Ok(()) => Some(v),
            Err(Error::InvalidArgument(violations)) => {
                bad.extend(violations);
                None
            }
            Err(e) => {
                bad.push(FieldViolation::new("body_json", e.to_string()));
                None
            }
        },
        Ok(v @ Value::Object(_)) => Some(v),
        Ok(_) => {
            bad.push(FieldViolation::new("body_json", "must be a JSON object"));
            None
        }
        Err(e) => {
            bad.push(FieldViolation::new("body_json", format!("malformed JSON: {e}")));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    fn catalog() -> Catalog {
        // The presets, with one read-only data action allowed.
        let presets = Catalog::with_presets(&BTreeMap::new()).unwrap();
        let mut action = (**presets.get("integrations.action.execute").unwrap()).clone();
        action.actions.insert("custom-abc".into(), crate::catalog::ActionRule { cacheable: true });
        Catalog::with_presets(&BTreeMap::from([("integrations.action.execute".to_string(), action)])).unwrap()
    }

    /// An executing kind calls only the actions the catalog lists.
    #[test]
    fn an_action_the_catalog_does_not_list_is_refused() {
        let req = GetRequest {
            kind: "integrations.action.execute".into(),
            id: "custom-other".into(),
            body_json: "{}".into(),
            ..Default::default()
        };
        let err = resolve(&req, "p", &catalog(), &CacheSettings::default()).unwrap_err();
        assert!(matches!(err, Error::ActionNotAllowed { .. }), "{err:?}");
        assert_eq!(err.code(), Code::PermissionDenied);
        let listed = GetRequest { id: "custom-abc".into(), ..req };
        assert!(resolve(&listed, "p", &catalog(), &CacheSettings::default()).unwrap().cacheable);
    }

    fn fields(err: Error) -> Vec<String> {
        match err {
            Error::InvalidArgument(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn get(kind: &str, id: &str) -> GetRequest {
        GetRequest { kind: kind.into(), id: id.into(), ..Default::default() }
    }

    #[test]
    fn resolves_a_queue() {
        let r = resolve(&get("routing.queue", "q-1"), "prod", &catalog(), &CacheSettings::default()).unwrap();
        assert_eq!(r.key, "prod:routing.queue:q-1:full");
        assert_eq!(r.call().path, "/api/v2/routing/queues/q-1");
        assert_eq!(r.tags(), vec!["queue:q-1"]);
    }

    /// The key comes from the canonical body (equivalent bodies share it),
    /// but the upstream gets the caller's body as it was sent: a data
    /// action's `requestId` and the caller's time zones reach the platform.
    #[test]
    fn the_upstream_gets_the_callers_body_and_the_key_the_canonical_one() {
        let body = |json: &str| GetRequest {
            kind: "integrations.action.execute".into(),
            id: "custom-abc".into(),
            body_json: json.into(),
            ..Default::default()
        };
        let s = CacheSettings::default();
        let a =
            resolve(&body(r#"{"requestId":"r-1","from":"2023-10-01T07:00:00+07:00"}"#), "p", &catalog(), &s)
                .unwrap();
        let b = resolve(&body(r#"{"from":"2023-10-01T00:00:00Z","requestId":"r-2"}"#), "p", &catalog(), &s)
            .unwrap();
        assert_eq!(a.key, b.key, "equivalent bodies share one key");
        let sent: Value = serde_json::from_slice(&a.call().body.unwrap()).unwrap();
        assert_eq!(sent, serde_json::json!({"requestId": "r-1", "from": "2023-10-01T07:00:00+07:00"}));
    }

    #[test]
    fn bad_input_names_the_field() {
        let (c, s) = (catalog(), CacheSettings::default());
        assert_eq!(fields(resolve(&get("", ""), "p", &c, &s).unwrap_err()), ["kind"]);
        assert_eq!(fields(resolve(&get("nope", ""), "p", &c, &s).unwrap_err()), ["kind"]);
        assert_eq!(fields(resolve(&get("routing.queue", ""), "p", &c, &s).unwrap_err()), ["id"]);
        assert_eq!(fields(resolve(&get("routing.queue", "../x"), "p", &c, &s).unwrap_err()), ["id"]);
        assert_eq!(fields(resolve(&get("routing.queue", "a:b"), "p", &c, &s).unwrap_err()), ["id"]);
        let mut r = get("routing.queue", "q");
        r.variant = "nope".into();
        assert_eq!(fields(resolve(&r, "p", &c, &s).unwrap_err()), ["variant"]);
        let mut r = get("analytics.conversations.aggregates", "");
        r.body_json = "{not json".into();
        assert_eq!(fields(resolve(&r, "p", &c, &s).unwrap_err()), ["body_json"]);
        r.body_json = format!("{{\"a\":\"{}\"}}", "x".repeat(70_000));
        assert_eq!(fields(resolve(&r, "p", &c, &s).unwrap_err()), ["body_json"]);
        r.body_json = "[1]".into();
        assert_eq!(fields(resolve(&r, "p", &c, &s).unwrap_err()), ["body_json"]);
        let mut r = get("routing.queues", "");
        r.params.insert("evil".into(), "1".into());
        assert_eq!(fields(resolve(&r, "p", &c, &s).unwrap_err()), ["params[evil]"]);
        let mut r = get("routing.queues", "");
        r.params.insert("pageSize".into(), "1".into());
        assert_eq!(fields(resolve(&r, "p", &c, &s).unwrap_err()), ["params[pageSize]"]);
    }
}
