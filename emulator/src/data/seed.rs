//! Deterministic seed data: the n-th entity of a kind always looks the same,
//! so test expectations can be written without asking the emulator.

use chrono::{DateTime, Duration as ChronoDuration, FixedOffset, TimeZone};
use serde_json::{json, Value};

use super::{Entity, Kind};
use crate::ids::{division_id, queue_id, skill_id, user_id};
use crate::timefmt::{entity_offset, rfc3339_offset};

const DIVISIONS: [&str; 2] = ["Home", "Support"];
const EVALUATION: [&str; 3] = ["ALL", "BEST", "NONE"];

/// 2024-03-01T14:00:00+02:00, the newest seeded creation time.
fn base_time() -> DateTime<FixedOffset> {
    entity_offset().with_ymd_and_hms(2024, 3, 1, 14, 0, 0).single().expect("fixed seed time is unambiguous")
}

fn created(n: usize) -> DateTime<FixedOffset> {
    base_time() - ChronoDuration::days((n % 3650) as i64)
}

fn modified(n: usize) -> DateTime<FixedOffset> {
    created(n) + ChronoDuration::minutes(60 + ((n * 37) % 1440) as i64)
}

fn division(n: usize) -> Value {
    let d = n % DIVISIONS.len();
    let id = division_id(d);
    json!({
        "id": id,
        "name": DIVISIONS[d],
        "selfUri": format!("/api/v2/authorization/divisions/{id}"),
    })
}

fn entity(kind: Kind, id: String, mut doc: Value, n: usize) -> Entity {
    let modified = modified(n);
    if let Value::Object(map) = &mut doc {
        map.insert("version".into(), json!(1));
        map.insert("dateModified".into(), json!(rfc3339_offset(&modified)));
        map.insert("selfUri".into(), json!(format!("{}/{}", kind.collection_path(), id)));
    }
    Entity { id, doc, version: 1, modified }
}

/// The n-th seeded queue.
pub(crate) fn queue(n: usize) -> Entity {
    let id = queue_id(n);
    let members = 5 + (n * 7) % 40;
    let doc = json!({
        "id": id,
        "name": format!("Queue {n:04}"),
        "description": format!("Seeded queue number {n}"),
        "memberCount": members,
        "joinedMemberCount": members - (n % 5),
        "mediaSettings": {
            "call": {
                "alertingTimeoutSeconds": 8 + (n % 5) * 2,
                "serviceLevel": {
                    "percentage": 0.8,
                    "durationMs": 20_000 + (n % 4) * 5_000,
                },
            },
        },
        "skillEvaluationMethod": EVALUATION[n % EVALUATION.len()],
        "division": division(n),
        "dateCreated": rfc3339_offset(&created(n)),
    });
    entity(Kind::Queue, id, doc, n)
}

/// The n-th seeded user.
pub(crate) fn user(n: usize) -> Entity {
    let id = user_id(n);
    let doc = json!({
        "id": id,
        "name": format!("User {n:04}"),
        "email": format!("user{n:04}@example.com"),
        "state": "active",
        "division": division(n),
    });
    entity(Kind::User, id, doc, n)
}

/// The n-th seeded skill.
pub(crate) fn skill(n: usize) -> Entity {
    let id = skill_id(n);
    let doc = json!({
        "id": id,
        "name": format!("Skill {n:04}"),
        "state": "active",
    });
    entity(Kind::Skill, id, doc, n)
}

/// Start time of the n-th user's seeded routing status.
pub(crate) fn routing_status_start(n: usize) -> DateTime<FixedOffset> {
    modified(n) + ChronoDuration::minutes(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_queue_shape() {
        let q = queue(7);
        assert_eq!(q.doc["name"], "Queue 0007");
        assert_eq!(q.doc["version"], 1);
        assert!(q.doc["dateModified"].as_str().unwrap().ends_with("+02:00"));
        assert_eq!(q.self_uri(), format!("/api/v2/routing/queues/{}", queue_id(7)));
        assert_eq!(q.etag(), queue(7).etag());
        assert_ne!(q.etag(), queue(8).etag());
    }
}
