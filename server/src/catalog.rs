//! The resource catalog: which upstream call and which cache policy stand
//! behind each resource kind a client may name.
//!
//! Clients never send URLs: naming kinds keeps the key space closed (no
//! arbitrary paths, no key injection) and lets operators tune TTLs per kind.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The Genesys Cloud presets, shipped with the binary.
const GENESYS_PRESETS: &str = include_str!("../catalog/genesys.toml");

/// HTTP method of the upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
}

/// How the cache key of a kind is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyShape {
    /// `{env}:{kind}:{id}:{variant}`.
    #[default]
    Id,
    /// `{env}:{kind}:{sha256 of the canonical body}`: the body is the query.
    Body,
}

/// TTL class; the durations live in `[cache.ttl]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TtlClass {
    /// Configuration objects (queues, users, skills): minutes.
    #[default]
    Config,
    /// Real-time state (routing status, presence): under a minute.
    Realtime,
    /// Analytics queries: aligned with the query's granularity/interval.
    Analytics,
    /// Data that practically never changes: hours.
    Static,
}

/// One resource kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kind {
    pub method: Method,
    /// Upstream path; `{id}` marks where the entity id goes.
    pub path: String,
    #[serde(default)]
    pub key: KeyShape,
    #[serde(default)]
    pub ttl_class: TtlClass,
    /// Overrides the class TTL for this kind.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<std::time::Duration>,
    /// Query parameters callers may pass.
    #[serde(default)]
    pub params: Vec<String>,
    /// Named projections: variant name → fields kept (dotted paths allowed).
    #[serde(default)]
    pub variants: BTreeMap<String, Vec<String>>,
    /// Tag templates; `{id}` is replaced by the entity id.
    #[serde(default)]
    pub tags: Vec<String>,
    /// List endpoint with Genesys paging: all pages are fetched and stored as one entry.
    #[serde(default)]
    pub paged: bool,
    /// Extra volatile fields dropped before storing.
    #[serde(default)]
    pub drop_fields: Vec<String>,
    /// Async job (POST submits, then poll and fetch results by cursor):
    /// the result is validated, split and merged before it is stored.
    #[serde(default)]
    pub job: bool,
    /// Notification API topic that announces changes of one entity; `{id}`
    /// is replaced by the entity id (e.g. `v2.users.{id}.routingStatus`).
    /// Cached keys of kinds with a topic are kept subscribed (see `notifications`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The call executes something upstream (a data action) rather than
    /// reading a resource: it may have side effects, and it runs with
    /// cxcache's own OAuth identity. Only the ids listed in `actions` may be
    /// called; only those marked `cacheable` (they just read) are cached and
    /// coalesced, the others go upstream on every call.
    #[serde(default)]
    pub executes: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub actions: BTreeMap<String, ActionRule>,
}

/// What the catalog allows of one action of an executing kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRule {
    /// The action only reads: its answer may be cached and shared.
    #[serde(default)]
    pub cacheable: bool,
}

impl Kind {
    /// Whether an answer for entity `id` may be cached: always, except for
    /// executing kinds, where only for actions listed as cacheable. None:
    /// `id` may not be called at all.
    pub fn cacheable(&self, id: Option<&str>) -> Option<bool> {
        if !self.executes {
            return Some(true);
        }
        self.actions.get(id?).map(|rule| rule.cacheable)
    }

    /// Whether requests must name an entity id.
    pub fn needs_id(&self) -> bool {
        self.path.contains("{id}")
    }

    /// Whether requests carry a JSON body (query-style kinds).
    pub fn takes_body(&self) -> bool {
        self.method == Method::Post
    }

    /// The tags an entry of this kind carries.
    pub fn tags_for(&self, id: &str) -> Vec<String> {
        self.tags.iter().map(|t| t.replace("{id}", id)).collect()
    }

    /// Whether every key of one entity can be named from the catalog: an
    /// id-keyed kind without query parameters has one key per variant,
    /// `{env}:{kind}:{id}:{variant}` (`full` and each named variant).
    pub fn keys_enumerable(&self) -> bool {
        self.key == KeyShape::Id && self.needs_id() && self.params.is_empty()
    }

    /// Whether entries record themselves in the index of the tag rendered
    /// from `template`. Not for a tag naming the entity (`queue:{id}`) of
    /// an enumerable kind: a purge of it names the entity's keys instead
    /// ([`Catalog::entity_keys_for_tag`]), so an entity keeps no index of
    /// its own (a Redis key, and up to 1 KB, per cached entity).
    pub fn indexes_tag(&self, template: &str) -> bool {
        !(template.contains("{id}") && self.keys_enumerable())
    }

    /// The tags an entry of this kind records in tag indexes (see [`Kind::indexes_tag`]).
    pub fn indexed_tags_for(&self, id: &str) -> Vec<String> {
        self.tags.iter().filter(|t| self.indexes_tag(t)).map(|t| t.replace("{id}", id)).collect()
    }
}

/// All kinds by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    kinds: BTreeMap<String, Arc<Kind>>,
}

impl Catalog {
    /// The keys that carry `tag` without being in its index: for each kind
    /// whose entity tag (`queue:{id}`, see [`Kind::indexes_tag`]) renders
    /// `tag`, that entity's key of every variant. A purge of `tag` purges
    /// these and the members of its index (other kinds' entries).
    pub fn entity_keys_for_tag(&self, env: &str, tag: &str) -> Vec<String> {
        let none = BTreeMap::new();
        let mut keys = Vec::new();
        for (name, kind) in &self.kinds {
            for template in kind.tags.iter().filter(|t| !kind.indexes_tag(t)) {
                let Some((before, after)) = template.split_once("{id}") else { continue };
                let Some(id) = tag.strip_prefix(before).and_then(|rest| rest.strip_suffix(after)) else {
                    continue;
                };
                if crate::keys::EntityId::parse(id).is_none() || template.replace("{id}", id) != tag {
                    continue;
                }
                keys.push(crate::keys::named(env, name, Some(id), None, &none));
                keys.extend(
                    kind.variants.keys().map(|v| crate::keys::named(env, name, Some(id), Some(v), &none)),
                );
            }
        }
        keys
    }

    /// The shipped Genesys presets with `overrides` laid over them by kind name.
    pub fn with_presets(overrides: &BTreeMap<String, Kind>) -> Result<Self, String> {
        let mut kinds: BTreeMap<String, Kind> =
            toml::from_str(GENESYS_PRESETS).map_err(|e| format!("bundled catalog: {e}"))?;
        kinds.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        let catalog = Catalog { kinds: kinds.into_iter().map(|(k, v)| (k, Arc::new(v))).collect() };
        catalog.validate()?;
        Ok(catalog)
    }

    fn validate(&self) -> Result<(), String> {
        for (name, kind) in &self.kinds {
            if name.is_empty() || name.contains(':') || name.contains(char::is_whitespace) {
                return Err(format!(
                    "catalog kind {name:?}: names may not be empty or contain ':' or spaces"
                ));
            }
            if !kind.path.starts_with('/') {
                return Err(format!("catalog kind {name}: path must start with '/'"));
            }
            if kind.key == KeyShape::Body && !kind.takes_body() {
                return Err(format!("catalog kind {name}: key = \"body\" needs method = \"POST\""));
            }
            // Keyed by id alone, different bodies would share one cached answer.
            if kind.takes_body() && kind.key != KeyShape::Body {
                return Err(format!("catalog kind {name}: method = \"POST\" needs key = \"body\""));
            }
            if kind.job && (kind.method != Method::Post || kind.paged) {
                return Err(format!("catalog kind {name}: job = true needs method = \"POST\" and no paging"));
            }
            if kind.topic.as_ref().is_some_and(|t| !t.contains("{id}") || !kind.needs_id()) {
                return Err(format!(
                    "catalog kind {name}: topic needs an id-keyed path and an {{id}} in the topic"
                ));
            }
            if kind.variants.contains_key("full") {
                return Err(format!("catalog kind {name}: variant name \"full\" is reserved"));
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Kind>> {
        self.kinds.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_load_and_cover_the_genesys_kinds() {
        let catalog = Catalog::with_presets(&BTreeMap::new()).unwrap();
        for name in [
            "routing.queue",
            "routing.queues",
            "user",
            "user.routing_status",
            "routing.skill",
            "integrations.action.execute",
            "analytics.conversations.aggregates",
        ] {
            assert!(catalog.get(name).is_some(), "missing preset {name}");
        }
        let queue = catalog.get("routing.queue").unwrap();
        assert!(queue.needs_id());
        assert_eq!(queue.tags_for("q1"), vec!["queue:q1"]);
        assert_eq!(catalog.get("analytics.conversations.aggregates").unwrap().key, KeyShape::Body);
        assert_eq!(catalog.get("user.routing_status").unwrap().ttl_class, TtlClass::Realtime);
    }

    /// An entity's own tag is resolved to its keys, one per variant; shared
    /// tags (`queues`) and tags of kinds whose keys cannot be named (body
    /// keys, query parameters) stay indexed.
    #[test]
    fn entity_tags_name_the_entity_keys_and_shared_tags_stay_indexed() {
        let catalog = Catalog::with_presets(&BTreeMap::new()).unwrap();
        assert_eq!(
            catalog.entity_keys_for_tag("p", "queue:q1"),
            ["p:routing.queue:q1:full", "p:routing.queue:q1:sla", "p:routing.queue:q1:summary"]
        );
        assert_eq!(
            catalog.entity_keys_for_tag("p", "user-routing-status:u1"),
            ["p:user.routing_status:u1:full"]
        );
        for tag in ["queues", "analytics", "action:a1", "queue:", "queue:a/b", "nothing:q1"] {
            assert_eq!(catalog.entity_keys_for_tag("p", tag), Vec::<String>::new(), "{tag}");
        }
        let queue = catalog.get("routing.queue").unwrap();
        assert!(!queue.indexes_tag("queue:{id}") && queue.indexes_tag("config"));
        assert_eq!(queue.indexed_tags_for("q1"), Vec::<String>::new());
        assert_eq!(catalog.get("routing.queues").unwrap().indexed_tags_for("_"), ["queues"]);
        assert_eq!(catalog.get("integrations.action.execute").unwrap().indexed_tags_for("a1"), ["action:a1"]);
    }

    #[test]
    fn bad_override_is_refused() {
        let mut over = BTreeMap::new();
        over.insert(
            "bad:name".to_string(),
            Kind {
                method: Method::Get,
                path: "/x".into(),
                key: KeyShape::Id,
                ttl_class: TtlClass::Config,
                ttl: None,
                params: vec![],
                variants: BTreeMap::new(),
                tags: vec![],
                paged: false,
                drop_fields: vec![],
                job: false,
                topic: None,
                executes: false,
                actions: BTreeMap::new(),
            },
        );
        assert!(Catalog::with_presets(&over).is_err());
    }

    #[test]
    fn a_post_kind_must_be_keyed_by_its_body() {
        let mut kind =
            Kind::clone(Catalog::with_presets(&BTreeMap::new()).unwrap().get("routing.queue").unwrap());
        kind.method = Method::Post;
        let over = BTreeMap::from([("search".to_string(), kind)]);
        let Err(err) = Catalog::with_presets(&over) else { panic!("a POST kind keyed by id was accepted") };
        assert!(err.to_string().contains("key = \"body\""), "{err}");
    }
}
