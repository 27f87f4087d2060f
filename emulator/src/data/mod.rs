//! The emulated org's entities: seeded deterministically from the config and
//! mutable through the admin API, so a cache's invalidation can be tested.
//!
//! Entities are kept as their *stable* JSON document; per-response volatile
//! fields are added at render time by [`crate::volatile`].

mod merge_patch;
mod seed;
mod store;

pub(crate) use store::{RoutingStatus, Store, ROUTING_STATUSES};

use chrono::{DateTime, FixedOffset};
use serde_json::Value;

use crate::canonical::hash_hex;

/// The kinds of seeded entity, with the collection each one lives under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Queue,
    User,
    Skill,
}

impl Kind {
    /// Collection path, e.g. `/api/v2/routing/queues`.
    pub fn collection_path(self) -> &'static str {
        match self {
            Kind::Queue => "/api/v2/routing/queues",
            Kind::User => "/api/v2/users",
            Kind::Skill => "/api/v2/routing/skills",
        }
    }

    /// Human label used in error messages.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Queue => "queue",
            Kind::User => "user",
            Kind::Skill => "skill",
        }
    }
}

/// One entity: its stable document plus the metadata conditional requests need.
#[derive(Debug, Clone)]
pub(crate) struct Entity {
    pub id: String,
    pub doc: Value,
    pub version: u64,
    pub modified: DateTime<FixedOffset>,
}

impl Entity {
    /// Strong ETag over the stable document (quoted, as sent in the header).
    pub fn etag(&self) -> String {
        format!("\"{}\"", &hash_hex(&self.doc)[..32])
    }

    /// `name` field, or "" when absent.
    pub fn name(&self) -> &str {
        self.doc.get("name").and_then(Value::as_str).unwrap_or("")
    }

    /// Stable `selfUri`.
    pub fn self_uri(&self) -> &str {
        self.doc.get("selfUri").and_then(Value::as_str).unwrap_or("")
    }
}
