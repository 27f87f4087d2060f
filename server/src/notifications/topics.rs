//! Which topics the cache needs, and what to purge for a topic.
//!
//! A catalog kind with a `topic` template (`v2.users.{id}.routingStatus`)
//! needs that topic for every entity of it that is cached: the wanted set is
//! read from the kind indexes of cached keys ([`crate::keys::kind_index`]),
//! so it is the same whichever instance cached a key.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::catalog::{Catalog, Kind};
use crate::config::TopicMapping;
use crate::error::Result;
use crate::invalidation::events::{map_event, ChangeEvent};
use crate::invalidation::Purge;
use crate::keys;
use crate::store::Store;

/// Tags purged per call when a gap covers many topics: as many as one
/// purge may name (was 500, which the invalidation layer refused, so gaps
/// over more than 100 entities purged nothing).
const TAGS_PER_PURGE: usize = crate::invalidation::MAX_PATTERNS;

/// The entity a topic stands for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub kind: String,
    pub id: String,
}

/// Catalog kinds that have a topic.
#[derive(Debug, Clone)]
pub struct TopicKinds {
    kinds: Vec<(String, Arc<Kind>, String)>,
}

impl TopicKinds {
    pub fn new(catalog: &Catalog) -> TopicKinds {
        let kinds = catalog
            .names()
            .filter_map(|name| {
                let kind = catalog.get(name)?;
                Some((name.to_string(), kind.clone(), kind.topic.clone()?))
            })
            .collect();
        TopicKinds { kinds }
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// Names of the kinds with a topic.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.kinds.iter().map(|(n, _, _)| n.as_str())
    }

    /// The topic of a cached logical key (`{env}:{kind}:{id}:…`), if its kind has one.
    pub fn topic_of_key(&self, key: &str) -> Option<String> {
        let key = keys::Key::parse(key)?;
        let (_, _, template) = self.kinds.iter().find(|(n, _, _)| n == key.kind)?;
        key.entity().map(|id| template.replace("{id}", id))
    }

    /// Every topic needed by what is cached now, with its entity.
    pub async fn wanted(&self, store: &dyn Store, env: &str) -> Result<BTreeMap<String, Target>> {
        let mut wanted = BTreeMap::new();
        for (name, _, template) in &self.kinds {
            let prefix = format!("{env}:{name}:");
            for key in
                store.index_members(&keys::kind_index(env, name), &prefix).await?.into_iter().map(|m| m.key)
            {
                let Some(id) = keys::Key::parse(&key).and_then(|k| k.entity()) else { continue };
                wanted
                    .entry(template.replace("{id}", id))
                    .or_insert_with(|| Target { kind: name.clone(), id: id.to_string() });
            }
        }
        Ok(wanted)
    }

    /// The entity a topic names, by the catalog templates.
    pub fn target_of(&self, topic: &str) -> Option<Target> {
        self.kinds.iter().find_map(|(name, _, template)| {
            let (pre, post) = template.split_once("{id}")?;
            let id = topic.strip_prefix(pre)?.strip_suffix(post)?;
            (!id.is_empty() && !id.contains('.') && !id.contains(':'))
                .then(|| Target { kind: name.clone(), id: id.to_string() })
        })
    }

    /// Purges for topics whose events may have been missed: each entity's
    /// tags (or, for a kind without tags, its key prefix), in bounded calls.
    pub fn gap_purges<'a>(
        &self,
        env: &str,
        targets: impl IntoIterator<Item = &'a Target>,
        why: &str,
    ) -> Vec<Purge> {
        let mut tags = Vec::new();
        let mut prefixes = Vec::new();
        for t in targets {
            let Some((_, kind, _)) = self.kinds.iter().find(|(n, _, _)| *n == t.kind) else { continue };
            let own = kind.tags_for(&t.id);
            if own.is_empty() {
                prefixes.push(format!("{env}:{}:{}:", t.kind, t.id));
            } else {
                tags.extend(own);
            }
        }
        tags.sort();
        tags.dedup();
        let purge = |tags: Vec<String>, prefixes: Vec<String>| Purge {
            keys: Vec::new(),
            prefixes,
            tags,
            reason: format!("notifications gap: {why}"),
            actor: "notifications".into(),
            event_id: None,
        };
        let mut out: Vec<Purge> =
            tags.chunks(TAGS_PER_PURGE).map(|c| purge(c.to_vec(), Vec::new())).collect();
        out.extend(prefixes.chunks(TAGS_PER_PURGE).map(|c| purge(Vec::new(), c.to_vec())));
        out
    }

    /// One purge of every cached key of every kind with a topic (a new
    /// listener cannot know what its predecessor missed).
    pub fn takeover_purge(&self, env: &str) -> Option<Purge> {
        (!self.is_empty()).then(|| Purge {
            keys: Vec::new(),
            prefixes: self.names().map(|n| format!("{env}:{n}:")).collect(),
            tags: Vec::new(),
            reason: "notifications gap: listener took over".into(),
            actor: "notifications".into(),
            event_id: None,
        })
    }

    /// What a heard event purges: the webhook/EventBridge topic mapping
    /// (one mapping for every door), else the catalog's topic templates.
    pub fn event_purge(
        &self,
        mappings: &[TopicMapping],
        env: &str,
        topic: &str,
        body: &Value,
    ) -> Option<Purge> {
        let event_id = ["id", "eventId"]
            .iter()
            .find_map(|f| body.get(f).and_then(Value::as_str))
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let entity_id =
            ["entityId", "id"].iter().find_map(|f| body.get(f).and_then(Value::as_str)).map(str::to_string);
        let event = ChangeEvent { id: event_id.clone(), topic: topic.to_string(), entity_id };
        if let Some(p) = map_event(mappings, &event, "notifications", env) {
            return Some(p);
        }
        let target = self.target_of(topic)?;
        let mut p = self.gap_purges(env, [&target], "").pop()?;
        p.reason = format!("notifications:{topic}");
        p.event_id = Some(event_id);
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WebhookSettings;
    use crate::store::MemoryStore;
    use std::collections::BTreeMap as Map;

    #[tokio::test]
    async fn topics_follow_cached_keys() {
        let kinds = TopicKinds::new(&Catalog::with_presets(&Map::new()).unwrap());
        assert_eq!(
            kinds.topic_of_key("p:routing.queue:q1:summary").as_deref(),
            Some("v2.audits.entitytype.QUEUE.entityid.q1")
        );
        assert_eq!(kinds.topic_of_key("p:routing.queues:_:full"), None);
        let store = MemoryStore::new();
        let far = crate::entry::now_ms() + 60_000;
        for (kind, key) in [
            ("routing.queue", "p:routing.queue:q1:full"),
            ("routing.queue", "p:routing.queue:q1:summary"),
            ("user.routing_status", "p:user.routing_status:u1:full"),
            ("routing.queues", "p:routing.queues:_:full"),
        ] {
            store.index_add(&keys::kind_index("p", kind), key, far).await.unwrap();
        }
        let wanted = kinds.wanted(&store, "p").await.unwrap();
        assert_eq!(
            wanted.keys().cloned().collect::<Vec<_>>(),
            vec!["v2.audits.entitytype.QUEUE.entityid.q1", "v2.users.u1.routingStatus"]
        );
        let t = kinds.target_of("v2.users.u1.routingStatus").unwrap();
        assert_eq!((t.kind.as_str(), t.id.as_str()), ("user.routing_status", "u1"));
        let gap = kinds.gap_purges("p", wanted.values(), "test");
        assert_eq!(gap.len(), 1);
        assert_eq!(gap[0].tags, vec!["queue:q1", "user-routing-status:u1"]);
        let mappings = WebhookSettings::default().topics;
        let p =
            kinds.event_purge(&mappings, "p", "v2.users.u1.routingStatus", &serde_json::json!({})).unwrap();
        assert_eq!(p.tags, vec!["user-routing-status:u1"]);
        assert!(kinds.event_purge(&mappings, "p", "v2.other.thing", &serde_json::json!({})).is_none());
    }

    /// A gap over many entities must still purge them all: every purge it
    /// plans is one the invalidation layer accepts (at most 100 tags).
    #[test]
    fn gap_purges_over_many_entities_stay_within_the_purge_limits() {
        let kinds = TopicKinds::new(&Catalog::with_presets(&Map::new()).unwrap());
        let targets: Vec<Target> =
            (0..2500).map(|n| Target { kind: "routing.queue".into(), id: format!("q{n}") }).collect();
        let purges = kinds.gap_purges("p", &targets, "test");
        let tags: usize = purges.iter().map(|p| p.tags.len()).sum();
        assert_eq!(tags, 2500);
        for p in &purges {
            crate::invalidation::validate("p", p).expect("a purge the invalidation layer accepts");
        }
    }
}
