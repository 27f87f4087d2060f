//! In-memory store of the seeded org, with the mutations the admin API offers.

use std::collections::HashMap;

use chrono::{DateTime, Duration as ChronoDuration, FixedOffset};
use serde_json::{json, Value};

use super::merge_patch::merge_patch;
use super::{seed, Entity, Kind};
use crate::ids::user_id;
use crate::timefmt::{now_entity, rfc3339_offset};

/// Values `routingstatus.status` may take.
pub(crate) const ROUTING_STATUSES: [&str; 4] = ["OFF_QUEUE", "IDLE", "INTERACTING", "NOT_RESPONDING"];

/// Entities of one kind in seed order (the deterministic list order).
#[derive(Debug, Default)]
pub(crate) struct Collection {
    items: Vec<Entity>,
    index: HashMap<String, usize>,
}

impl Collection {
    fn seeded(count: usize, make: fn(usize) -> Entity) -> Self {
        let items: Vec<Entity> = (0..count).map(make).collect();
        let index = items.iter().enumerate().map(|(i, e)| (e.id.clone(), i)).collect();
        Self { items, index }
    }

    pub fn get(&self, id: &str) -> Option<&Entity> {
        self.index.get(id).and_then(|&i| self.items.get(i))
    }

    /// Entities whose name starts with `prefix` (case-insensitive), in seed order.
    pub fn filter_by_name(&self, prefix: Option<&str>) -> Vec<&Entity> {
        let prefix = prefix.map(str::to_lowercase);
        self.items
            .iter()
            .filter(|e| prefix.as_deref().is_none_or(|p| e.name().to_lowercase().starts_with(p)))
            .collect()
    }

    /// Merge-patches the entity's document (its `id` and `selfUri` are kept),
    /// bumps `version` and sets `dateModified` to now, strictly after the previous
    /// value. Returns the updated entity, or `None` for an unknown id or a patch
    /// that is not a JSON object.
    pub fn patch(&mut self, id: &str, patch: &Value) -> Option<Entity> {
        if !patch.is_object() {
            return None;
        }
        let i = *self.index.get(id)?;
        let entity = self.items.get_mut(i)?;
        let self_uri = entity.self_uri().to_string();
        merge_patch(&mut entity.doc, patch);
        let modified = later_than(entity.modified);
        entity.version += 1;
        entity.modified = modified;
        if let Value::Object(map) = &mut entity.doc {
            map.insert("id".into(), json!(entity.id));
            map.insert("selfUri".into(), json!(self_uri));
            map.insert("version".into(), json!(entity.version));
            map.insert("dateModified".into(), json!(rfc3339_offset(&modified)));
        }
        Some(entity.clone())
    }
}

/// Now, but at least 1 ms after `previous`, so every mutation moves time forward.
fn later_than(previous: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
    let now = now_entity();
    let floor = previous + ChronoDuration::milliseconds(1);
    if now > floor {
        now
    } else {
        floor
    }
}

/// A user's routing status.
#[derive(Debug, Clone)]
pub(crate) struct RoutingStatus {
    pub user_id: String,
    pub status: &'static str,
    pub start: DateTime<FixedOffset>,
}

impl RoutingStatus {
    pub fn to_json(&self) -> Value {
        json!({
            "userId": self.user_id,
            "status": self.status,
            "startTime": rfc3339_offset(&self.start),
        })
    }
}

/// The whole emulated org.
#[derive(Debug, Default)]
pub(crate) struct Store {
    queues: Collection,
    users: Collection,
    skills: Collection,
    statuses: HashMap<String, RoutingStatus>,
}

impl Store {
    pub fn seeded(queues: usize, users: usize, skills: usize) -> Self {
        let statuses = (0..users)
            .map(|n| {
                let id = user_id(n);
                let status = RoutingStatus {
                    user_id: id.clone(),
                    status: ROUTING_STATUSES[n % ROUTING_STATUSES.len()],
                    start: seed::routing_status_start(n),
                };
                (id, status)
            })
            .collect();
        Self {
            queues: Collection::seeded(queues, seed::queue),
            users: Collection::seeded(users, seed::user),
            skills: Collection::seeded(skills, seed::skill),
            statuses,
        }
    }

    pub fn collection(&self, kind: Kind) -> &Collection {
        match kind {
            Kind::Queue => &self.queues,
            Kind::User => &self.users,
            Kind::Skill => &self.skills,
        }
    }

    pub fn collection_mut(&mut self, kind: Kind) -> &mut Collection {
        match kind {
            Kind::Queue => &mut self.queues,
            Kind::User => &mut self.users,
            Kind::Skill => &mut self.skills,
        }
    }

    pub fn routing_status(&self, user_id: &str) -> Option<&RoutingStatus> {
        self.statuses.get(user_id)
    }

    /// Sets a user's routing status (one of [`ROUTING_STATUSES`], matched
    /// case-insensitively); `startTime` becomes now. `None` for an unknown user
    /// or status.
    pub fn set_routing_status(&mut self, user_id: &str, status: &str) -> Option<RoutingStatus> {
        let status = ROUTING_STATUSES.iter().find(|s| s.eq_ignore_ascii_case(status))?;
        let entry = self.statuses.get_mut(user_id)?;
        entry.status = status;
        entry.start = later_than(entry.start);
        Some(entry.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::queue_id;

    #[test]
    fn patch_bumps_version_and_keeps_identity() {
        let mut store = Store::seeded(3, 2, 1);
        let id = queue_id(1);
        let before = store.collection(Kind::Queue).get(&id).unwrap().clone();
        let after = store
            .collection_mut(Kind::Queue)
            .patch(&id, &json!({"name": "Renamed", "id": "evil", "selfUri": null}))
            .unwrap();
        assert_eq!(after.version, 2);
        assert_eq!(after.doc["version"], 2);
        assert_eq!(after.doc["name"], "Renamed");
        assert_eq!(after.doc["id"], id.as_str());
        assert_eq!(after.self_uri(), before.self_uri());
        assert!(after.modified > before.modified);
        assert_ne!(after.etag(), before.etag());
        assert!(store.collection_mut(Kind::Queue).patch("nope", &json!({})).is_none());
        assert!(store.collection_mut(Kind::Queue).patch(&id, &json!(1)).is_none());
    }

    #[test]
    fn name_filter_is_case_insensitive_prefix() {
        let store = Store::seeded(12, 0, 0);
        let hits = store.collection(Kind::Queue).filter_by_name(Some("queue 001"));
        assert_eq!(hits.len(), 2);
    }

    #[test]
    fn routing_status_validates() {
        let mut store = Store::seeded(0, 2, 0);
        let id = user_id(0);
        assert_eq!(store.set_routing_status(&id, "idle").unwrap().status, "IDLE");
        assert!(store.set_routing_status(&id, "NAPPING").is_none());
        assert!(store.set_routing_status("nobody", "IDLE").is_none());
    }
}
