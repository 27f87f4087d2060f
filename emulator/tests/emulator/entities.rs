use std::collections::HashSet;
use std::time::Duration;

use chrono::DateTime;
use genesys_emulator::{queue_id, skill_id, user_id, EmulatorConfig};
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn queue_has_the_platform_shape() {
    let emu = emu_default().await;
    let token = emu.token().await;
    let id = queue_id(7);
    let q = emu.get_json(&token, &format!("/api/v2/routing/queues/{id}")).await;
    assert_eq!(q["id"], id.as_str());
    assert_eq!(q["name"], "Queue 0007");
    assert_eq!(q["selfUri"], format!("/api/v2/routing/queues/{id}"));
    assert_eq!(q["version"], 1);
    assert!(q["memberCount"].is_u64() && q["joinedMemberCount"].is_u64());
    assert!(q["mediaSettings"]["call"]["serviceLevel"]["durationMs"].is_u64());
    assert!(q["division"]["id"].is_string());
    assert!(q["skillEvaluationMethod"].is_string());
    for field in ["dateCreated", "dateModified"] {
        let s = q[field].as_str().unwrap();
        let t = DateTime::parse_from_rfc3339(s).unwrap();
        assert_ne!(t.offset().local_minus_utc(), 0, "{field} must carry a non-UTC offset: {s}");
    }
    let href = q["_links"]["self"]["href"].as_str().unwrap();
    assert!(href.starts_with(&format!("/api/v2/routing/queues/{id}?requestId=")));
    assert!(q["retrievedAt"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn unknown_ids_are_404() {
    let emu = emu_default().await;
    let token = emu.token().await;
    for path in [
        "/api/v2/routing/queues/nope",
        "/api/v2/users/nope",
        "/api/v2/users/nope/routingstatus",
        "/api/v2/routing/skills/nope",
    ] {
        let resp = emu.get(&token, path).await;
        assert_eq!(resp.status(), 404, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "not.found");
        assert_eq!(body["status"], 404);
    }
}

#[tokio::test]
async fn volatile_fields_change_while_stable_fields_do_not() {
    let emu = emu_default().await;
    let token = emu.token().await;
    let path = format!("/api/v2/routing/queues/{}", queue_id(3));
    let a = emu.get_json(&token, &path).await;
    // retrievedAt has millisecond resolution.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let b = emu.get_json(&token, &path).await;
    assert_ne!(a["_links"], b["_links"]);
    assert_ne!(a["retrievedAt"], b["retrievedAt"]);
    assert_eq!(stable(a), stable(b));

    let list_a = emu.get_json(&token, "/api/v2/routing/queues?pageSize=2").await;
    let list_b = emu.get_json(&token, "/api/v2/routing/queues?pageSize=2").await;
    assert_ne!(list_a["entities"][0]["_links"], list_b["entities"][0]["_links"]);
    assert_eq!(stable(list_a["entities"][0].clone()), stable(list_b["entities"][0].clone()));
}

#[tokio::test]
async fn paging_walks_120_queues_in_3_pages() {
    let emu = emu(EmulatorConfig { queues: 120, ..EmulatorConfig::default() }).await;
    let token = emu.token().await;
    let mut next = Some("/api/v2/routing/queues?pageSize=50".to_string());
    let mut ids = Vec::new();
    let mut pages = Vec::new();
    while let Some(path) = next {
        let page = emu.get_json(&token, &path).await;
        assert_eq!(page["total"], 120);
        assert_eq!(page["pageCount"], 3);
        assert_eq!(page["pageSize"], 50);
        assert_eq!(page["firstUri"], "/api/v2/routing/queues?pageSize=50&pageNumber=1");
        assert_eq!(page["lastUri"], "/api/v2/routing/queues?pageSize=50&pageNumber=3");
        for e in page["entities"].as_array().unwrap() {
            ids.push(e["id"].as_str().unwrap().to_string());
        }
        next = page["nextUri"].as_str().map(str::to_string);
        pages.push(page);
    }
    assert_eq!(pages.len(), 3);
    assert_eq!(pages[0]["nextUri"], "/api/v2/routing/queues?pageSize=50&pageNumber=2");
    assert!(pages[0].get("previousUri").is_none());
    assert_eq!(pages[2]["previousUri"], "/api/v2/routing/queues?pageSize=50&pageNumber=2");
    assert_eq!(pages[2]["selfUri"], "/api/v2/routing/queues?pageSize=50&pageNumber=3");
    assert_eq!(pages[2]["entities"].as_array().unwrap().len(), 20);
    let expected: Vec<String> = (0..120).map(queue_id).collect();
    assert_eq!(ids, expected);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 120);

    let defaults = emu.get_json(&token, "/api/v2/routing/queues").await;
    assert_eq!(defaults["pageSize"], 25);
    assert_eq!(defaults["pageNumber"], 1);
    let past_end = emu.get_json(&token, "/api/v2/routing/queues?pageSize=50&pageNumber=9").await;
    assert_eq!(past_end["entities"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn paging_rejects_bad_parameters_and_filters_by_name() {
    let emu = emu(EmulatorConfig { queues: 120, ..EmulatorConfig::default() }).await;
    let token = emu.token().await;
    for q in ["pageSize=501", "pageSize=0", "pageNumber=0", "pageSize=abc"] {
        let resp = emu.get(&token, &format!("/api/v2/routing/queues?{q}")).await;
        assert_eq!(resp.status(), 400, "{q}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "bad.request");
    }
    let page = emu.get_json(&token, "/api/v2/routing/queues?name=queue%20011").await;
    let names: Vec<&str> =
        page["entities"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(page["total"], 10);
    assert_eq!(names.first(), Some(&"Queue 0110"));
    assert_eq!(names.last(), Some(&"Queue 0119"));
    let upper = emu.get_json(&token, "/api/v2/routing/queues?name=QUEUE%2000").await;
    assert_eq!(upper["total"], 100);
    assert_eq!(upper["nextUri"], "/api/v2/routing/queues?pageSize=25&pageNumber=2&name=QUEUE+00");
    let big = emu.get_json(&token, "/api/v2/routing/queues?pageSize=500").await;
    assert_eq!(big["entities"].as_array().unwrap().len(), 120);
    assert_eq!(big["pageCount"], 1);
    assert!(big.get("nextUri").is_none());
}

#[tokio::test]
async fn users_routing_status_and_skills() {
    let emu = emu_default().await;
    let token = emu.token().await;
    let uid = user_id(2);
    let user = emu.get_json(&token, &format!("/api/v2/users/{uid}")).await;
    assert_eq!(user["id"], uid.as_str());
    assert_eq!(user["email"], "user0002@example.com");
    assert!(user["dateModified"].as_str().unwrap().ends_with("+02:00"));
    assert!(user["_links"].is_object() && user["retrievedAt"].is_string());

    let path = format!("/api/v2/users/{uid}/routingstatus");
    let status = emu.get_json(&token, &path).await;
    assert_eq!(status["userId"], uid.as_str());
    assert!(
        ["OFF_QUEUE", "IDLE", "INTERACTING", "NOT_RESPONDING"].contains(&status["status"].as_str().unwrap())
    );
    assert_eq!(emu.get_json(&token, &path).await, status, "stable between mutations");

    let target = if status["status"] == "IDLE" { "INTERACTING" } else { "IDLE" };
    assert!(emu.handle.set_routing_status(&uid, target));
    let changed = emu.get_json(&token, &path).await;
    assert_eq!(changed["status"], target);
    assert_ne!(changed["startTime"], status["startTime"]);

    let skills = emu.get_json(&token, "/api/v2/routing/skills?pageSize=5&pageNumber=2").await;
    assert_eq!(skills["total"], 20);
    assert_eq!(skills["pageCount"], 4);
    assert_eq!(skills["entities"][0]["id"], skill_id(5).as_str());
    let skill = emu.get_json(&token, &format!("/api/v2/routing/skills/{}", skill_id(5))).await;
    assert_eq!(skill["name"], "Skill 0005");
}
