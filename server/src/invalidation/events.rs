//! Change events from outside (the webhook and EventBridge doors, the
//! Notification API listener) and the purges they map to: one parser per
//! envelope and one topic-pattern mapping, shared by every door.

use serde_json::Value;

use super::Purge;
use crate::config::TopicMapping;
use crate::keys::EntityId;

/// A change event, whatever door it came through.
#[derive(Debug, PartialEq)]
pub struct ChangeEvent {
    pub id: String,
    pub topic: String,
    pub entity_id: Option<String>,
}

fn str_field<'a>(v: &'a Value, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| v.get(n).and_then(Value::as_str)).filter(|s| !s.is_empty())
}

/// A Genesys-style body: `{"eventId", "topicName", "entityId"?, "eventBody"?}`.
pub fn parse_genesys(v: &Value) -> Result<ChangeEvent, String> {
    let id = str_field(v, &["eventId", "id"]).ok_or("eventId is required")?;
    let topic = str_field(v, &["topicName", "topic", "eventName"]).ok_or("topicName is required")?;
    let entity_id = str_field(v, &["entityId"])
        .or_else(|| v.get("eventBody").and_then(|b| str_field(b, &["id", "entityId"])))
        .map(str::to_string);
    Ok(ChangeEvent { id: id.to_string(), topic: topic.to_string(), entity_id })
}

/// An EventBridge envelope: `{"id", "detail": {"topicName", "eventBody"}}`.
pub fn parse_eventbridge(v: &Value) -> Result<ChangeEvent, String> {
    let id = str_field(v, &["id"]).ok_or("id (the EventBridge event id) is required")?;
    let detail = v.get("detail").filter(|d| d.is_object()).ok_or("detail object is required")?;
    let topic = str_field(detail, &["topicName"]).ok_or("detail.topicName is required")?;
    let entity_id =
        detail.get("eventBody").and_then(|b| str_field(b, &["id", "entityId"])).map(str::to_string);
    Ok(ChangeEvent { id: id.to_string(), topic: topic.to_string(), entity_id })
}

/// The purge an event maps to, if any topic pattern matches.
pub fn map_event(topics: &[TopicMapping], event: &ChangeEvent, door: &str, env: &str) -> Option<Purge> {
    for m in topics {
        let Some(captured) = match_topic(&m.topic, &event.topic) else { continue };
        let id = EntityId::parse(&captured.or_else(|| event.entity_id.clone())?)?;
        let id = id.as_str();
        return Some(Purge {
            keys: m.keys.iter().map(|k| format!("{env}:{}", k.replace("{id}", id))).collect(),
            prefixes: Vec::new(),
            tags: m.tags.iter().map(|t| t.replace("{id}", id)).collect(),
            reason: format!("{door}:{}", event.topic),
            actor: door.to_string(),
            event_id: Some(event.id.clone()),
        });
    }
    None
}

/// Matches a dot-separated topic against a pattern; returns the `{id}`
/// capture (None when the pattern has none) on a match.
fn match_topic(pattern: &str, topic: &str) -> Option<Option<String>> {
    let pat: Vec<&str> = pattern.split('.').collect();
    let top: Vec<&str> = topic.split('.').collect();
    let mut captured = None;
    for (i, p) in pat.iter().enumerate() {
        if *p == "**" {
            return (top.len() > i).then_some(captured);
        }
        let t = top.get(i)?;
        match *p {
            "*" => {}
            "{id}" => captured = Some(t.to_string()),
            lit if lit == *t => {}
            _ => return None,
        }
    }
    (pat.len() == top.len()).then_some(captured)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WebhookSettings;

    #[test]
    fn topic_patterns() {
        assert_eq!(match_topic("routing.queue.*", "routing.queue.updated"), Some(None));
        assert_eq!(match_topic("routing.queue.*", "routing.queues.updated"), None);
        assert_eq!(
            match_topic("v2.users.{id}.routingStatus", "v2.users.u1.routingStatus"),
            Some(Some("u1".into()))
        );
        assert_eq!(
            match_topic("v2.routing.queues.{id}.**", "v2.routing.queues.q1.conversations"),
            Some(Some("q1".into()))
        );
        assert_eq!(match_topic("v2.routing.queues.{id}.**", "v2.routing.queues.q1"), None);
    }

    #[test]
    fn events_map_to_tag_purges() {
        let topics = WebhookSettings::default().topics;
        let e = ChangeEvent {
            id: "e1".into(),
            topic: "routing.queue.updated".into(),
            entity_id: Some("q1".into()),
        };
        assert_eq!(map_event(&topics, &e, "webhook", "p").unwrap().tags, vec!["queue:q1"]);
        let e = ChangeEvent {
            id: "e2".into(),
            topic: "v2.audits.entitytype.QUEUE.entityid.q9".into(),
            entity_id: None,
        };
        assert_eq!(map_event(&topics, &e, "eventbridge", "p").unwrap().tags, vec!["queue:q9"]);
        let e = ChangeEvent { id: "e3".into(), topic: "routing.queue.updated".into(), entity_id: None };
        assert!(map_event(&topics, &e, "webhook", "p").is_none(), "no id, no purge");
        let e = ChangeEvent { id: "e4".into(), topic: "something.else".into(), entity_id: Some("x".into()) };
        assert!(map_event(&topics, &e, "webhook", "p").is_none());
    }
}
