//! The HTTP doors: signed webhook / EventBridge purges and the data-action door.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Secret;

/// Signed change events that purge (see `http::webhook`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Shared secret: bodies are signed with HMAC-SHA256
    /// (`X-Cxcache-Signature: sha256=<hex>`) or carry an HS256 JWT
    /// (`Authorization: Bearer …`). Unset: the doors refuse every event.
    pub secret: Option<Secret>,
    /// An event id seen within this window is acknowledged and ignored.
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// Topic patterns → what to purge. Patterns are dot-separated; `{id}`
    /// captures a segment, `*` matches one segment, `**` the rest. Without
    /// `{id}` in the pattern, the event's `entityId` is the id.
    pub topics: Vec<TopicMapping>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicMapping {
    pub topic: String,
    /// Tag templates (`queue:{id}`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Key templates relative to the namespace (`routing.queue:{id}:full`).
    #[serde(default)]
    pub keys: Vec<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let map = |topic: &str, tag: &str| TopicMapping {
            topic: topic.into(),
            tags: vec![tag.into()],
            keys: vec![],
        };
        WebhookSettings {
            secret: None,
            dedupe_window: Duration::from_secs(3600),
            topics: vec![
                map("routing.queue.*", "queue:{id}"),
                map("v2.routing.queues.{id}.**", "queue:{id}"),
                map("v2.audits.entitytype.QUEUE.entityid.{id}", "queue:{id}"),
                map("user.*", "user:{id}"),
                map("v2.users.{id}.routingStatus", "user-routing-status:{id}"),
                map("v2.audits.entitytype.USER.entityid.{id}", "user:{id}"),
                map("routing.skill.*", "skill:{id}"),
                map("v2.audits.entitytype.SKILL.entityid.{id}", "skill:{id}"),
            ],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataActionSettings {
    /// Bearer token callers must send (`Authorization: Bearer …`). Unset:
    /// the door is open (bind the HTTP side to a private address).
    pub token: Option<Secret>,
    /// How long the door waits for an answer: a data action has a deadline
    /// of its own on the platform side, so past this a stale value (or the
    /// error) is better than no answer.
    #[serde(with = "humantime_serde")]
    pub timeout: std::time::Duration,
}

impl Default for DataActionSettings {
    fn default() -> Self {
        DataActionSettings { token: None, timeout: std::time::Duration::from_secs(10) }
    }
}
