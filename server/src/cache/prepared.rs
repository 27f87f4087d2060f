//! Requests already resolved, so a hot Get skips validation and key
//! building: the L1 hit path's largest share of cxcache's own work.
//!
//! Resolving is a pure function of the request, the catalog and the cache
//! settings, none of which change while the process runs, so a remembered
//! resolution never goes stale and needs no invalidation. Only plain
//! requests are remembered (no freshness demands, no params, a query body
//! of at most [`MAX_BODY`] bytes: the hot Get of one entity by kind, id and
//! variant, or a small query); any other request is resolved each time.
//! Only resolutions that succeeded and may be cached are kept: an action
//! (called upstream every time, often with a fresh request id in its body)
//! would only push out requests that repeat.
//!
//! Bounded: at most `max` requests of at most [`MAX_BODY`] body bytes each
//! (a body is kept raw and parsed: a few KiB per request at worst), in
//! shards; a full shard is emptied before the next insert, so a flood of
//! one-off requests costs a reset, never growth.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::policy::Resolved;
use crate::proto::v1::GetRequest;

const SHARDS: usize = 16;

/// The largest query body a remembered request may carry: larger ones are
/// resolved each time, so the memo's memory stays small whatever callers send.
pub const MAX_BODY: usize = 1024;

/// One remembered request: its fields (checked on every lookup, so two
/// requests whose hashes collide never share a resolution) and what it
/// resolved to.
struct Remembered {
    kind: String,
    id: String,
    variant: String,
    body_json: String,
    resolved: Arc<Resolved>,
}

impl Remembered {
    fn answers(&self, req: &GetRequest) -> bool {
        self.id == req.id
            && self.kind == req.kind
            && self.variant == req.variant
            && self.body_json == req.body_json
    }
}

type Shard = RwLock<HashMap<u64, Remembered, foldhash::fast::RandomState>>;

pub struct Prepared {
    shards: Vec<Shard>,
    per_shard: usize,
    hasher: foldhash::fast::RandomState,
}

impl Prepared {
    /// Remembers up to about `max` requests (0: none).
    pub fn new(max: usize) -> Self {
        Prepared {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::default())).collect(),
            per_shard: max.div_ceil(SHARDS),
            hasher: Default::default(),
        }
    }

    /// The request's hash, when it is plain enough to remember.
    fn hash(&self, req: &GetRequest) -> Option<u64> {
        let plain = req.params.is_empty()
            && req.body_json.len() <= MAX_BODY
            && req.freshness.as_ref().is_none_or(|f| {
                !f.allow_stale
                    && !f.force_refresh
                    && f.max_age.as_ref().is_none_or(|d| d.seconds == 0 && d.nanos == 0)
            });
        if !plain || self.per_shard == 0 {
            return None;
        }
        Some(self.hasher.hash_one((&req.kind, &req.id, &req.variant, &req.body_json)))
    }

    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash >> 60) as usize % SHARDS]
    }

    /// What `req` resolved to before, else `resolve`'s answer (remembered
    /// when it is a plain request that resolved).
    pub fn get_or_resolve<E>(
        &self,
        req: &GetRequest,
        resolve: impl FnOnce() -> Result<Resolved, E>,
    ) -> Result<Arc<Resolved>, E> {
        let Some(hash) = self.hash(req) else { return resolve().map(Arc::new) };
        let shard = self.shard(hash);
        if let Some(r) = shard.read().get(&hash).filter(|r| r.answers(req)) {
            return Ok(r.resolved.clone());
        }
        let resolved = Arc::new(resolve()?);
        if !resolved.cacheable {
            return Ok(resolved);
        }
        let mut map = shard.write();
        if map.len() >= self.per_shard {
            map.clear();
        }
        map.insert(
            hash,
            Remembered {
                kind: req.kind.clone(),
                id: req.id.clone(),
                variant: req.variant.clone(),
                body_json: req.body_json.clone(),
                resolved: resolved.clone(),
            },
        );
        Ok(resolved)
    }

    /// Requests remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::config::CacheSettings;
    use crate::proto::v1::Freshness;

    /// The presets, with one data action allowed that may not be cached.
    fn resolver() -> impl Fn(&GetRequest) -> crate::error::Result<Resolved> {
        let presets = Catalog::with_presets(&Default::default()).unwrap();
        let mut action = (**presets.get(ACTION).unwrap()).clone();
        action.actions.insert("write-note".into(), crate::catalog::ActionRule { cacheable: false });
        let catalog = Catalog::with_presets(&[(ACTION.to_string(), action)].into()).unwrap();
        move |req| crate::policy::resolve(req, "t", &catalog, &CacheSettings::default())
    }

    const ACTION: &str = "integrations.action.execute";

    fn queue(id: &str) -> GetRequest {
        GetRequest { kind: "routing.queue".into(), id: id.into(), ..Default::default() }
    }

    #[test]
    fn a_plain_request_is_resolved_once_and_answered_alike() {
        let (p, resolve) = (Prepared::new(100), resolver());
        let calls = std::cell::Cell::new(0);
        let counted = |req: &GetRequest| {
            calls.set(calls.get() + 1);
            resolve(req)
        };
        let a = p.get_or_resolve(&queue("q1"), || counted(&queue("q1"))).unwrap();
        let b = p.get_or_resolve(&queue("q1"), || counted(&queue("q1"))).unwrap();
        assert_eq!(calls.get(), 1, "the second Get reused the first one's resolution");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.key, resolve(&queue("q1")).unwrap().key);
        let other = p.get_or_resolve(&queue("q2"), || counted(&queue("q2"))).unwrap();
        assert_eq!(calls.get(), 2);
        assert_ne!(other.key, a.key, "another id is another request");
    }

    #[test]
    fn requests_with_freshness_demands_or_params_are_resolved_every_time() {
        let (p, resolve) = (Prepared::new(100), resolver());
        let strict = GetRequest {
            freshness: Some(Freshness { force_refresh: true, ..Default::default() }),
            ..queue("q1")
        };
        for _ in 0..2 {
            let r = p.get_or_resolve(&strict, || resolve(&strict)).unwrap();
            assert!(r.freshness.force_refresh, "the caller's own demand, not a remembered one");
        }
        let listed = GetRequest {
            kind: "routing.queues".into(),
            params: [("pageSize".to_string(), "25".to_string())].into(),
            ..Default::default()
        };
        let _ = p.get_or_resolve(&listed, || resolve(&listed));
        assert_eq!(p.len(), 0);
        // A Freshness message of zeros is no demand: remembered.
        let zeros = GetRequest { freshness: Some(Freshness::default()), ..queue("q1") };
        p.get_or_resolve(&zeros, || resolve(&zeros)).unwrap();
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn large_bodies_and_actions_are_not_remembered() {
        let (p, resolve) = (Prepared::new(100), resolver());
        let filler = "x".repeat(MAX_BODY);
        let large = GetRequest {
            kind: "analytics.conversations.aggregates".into(),
            body_json: format!(
                r#"{{"interval":"2026-01-01T00:00:00Z/2026-01-02T00:00:00Z","note":"{filler}"}}"#
            ),
            ..Default::default()
        };
        let small = GetRequest {
            body_json: r#"{"interval":"2026-01-01T00:00:00Z/2026-01-02T00:00:00Z"}"#.into(),
            ..large.clone()
        };
        let action = GetRequest {
            kind: ACTION.into(),
            id: "write-note".into(),
            body_json: "{}".into(),
            ..Default::default()
        };
        for req in [&large, &small, &action] {
            p.get_or_resolve(req, || resolve(req)).unwrap();
        }
        assert_eq!(p.len(), 1, "only the small body is remembered, not the large one nor the action");
    }

    #[test]
    fn a_bad_request_is_not_remembered() {
        let (p, resolve) = (Prepared::new(100), resolver());
        let bad = queue("no spaces allowed");
        assert!(p.get_or_resolve(&bad, || resolve(&bad)).is_err());
        assert!(p.get_or_resolve(&bad, || resolve(&bad)).is_err());
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn stays_within_its_bound() {
        let (p, resolve) = (Prepared::new(64), resolver());
        for i in 0..1000 {
            let req = queue(&format!("q{i}"));
            p.get_or_resolve(&req, || resolve(&req)).unwrap();
        }
        assert!(p.len() <= 64, "{}", p.len());
    }
}
