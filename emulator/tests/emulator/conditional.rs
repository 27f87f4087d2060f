use genesys_emulator::queue_id;
use serde_json::{json, Value};

use crate::common::*;

#[tokio::test]
async fn etag_and_last_modified_give_304() {
    let emu = emu_default().await;
    let token = emu.token().await;
    let path = format!("/api/v2/routing/queues/{}", queue_id(1));
    let first = emu.get(&token, &path).await;
    assert_eq!(first.status(), 200);
    let etag = header(&first, "etag").to_string();
    let last_modified = header(&first, "last-modified").to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'));
    assert!(last_modified.ends_with(" GMT"));

    let by_etag =
        emu.http.get(emu.url(&path)).bearer_auth(&token).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(by_etag.status(), 304);
    assert_eq!(header(&by_etag, "etag"), etag);
    assert!(by_etag.headers().get("inin-ratelimit-count").is_some());
    assert!(by_etag.bytes().await.unwrap().is_empty());

    let by_date = emu
        .http
        .get(emu.url(&path))
        .bearer_auth(&token)
        .header("if-modified-since", &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(by_date.status(), 304);

    let other_etag = emu
        .http
        .get(emu.url(&path))
        .bearer_auth(&token)
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other_etag.status(), 200);

    let c = emu.handle.counters();
    assert_eq!(c.not_modified, 2);
    assert_eq!(c.by_status[&304], 2);
    assert_eq!(c.route("GET /api/v2/routing/queues/{id}"), 4);
}

#[tokio::test]
async fn mutation_changes_version_date_and_etag() {
    let emu = emu_default().await;
    let token = emu.token().await;
    let id = queue_id(4);
    let path = format!("/api/v2/routing/queues/{id}");
    let before_resp = emu.get(&token, &path).await;
    let old_etag = header(&before_resp, "etag").to_string();
    let before: Value = before_resp.json().await.unwrap();

    assert!(emu.handle.mutate_queue(&id, json!({"description": "changed", "memberCount": 99})));
    assert!(!emu.handle.mutate_queue("unknown", json!({"name": "x"})));

    let after_resp = emu.get(&token, &path).await;
    let new_etag = header(&after_resp, "etag").to_string();
    let after: Value = after_resp.json().await.unwrap();
    assert_ne!(old_etag, new_etag);
    assert_eq!(after["version"], 2);
    assert_eq!(after["description"], "changed");
    assert_eq!(after["memberCount"], 99);
    assert_eq!(after["name"], before["name"]);
    assert_eq!(after["dateCreated"], before["dateCreated"]);
    let (old_mod, new_mod) = (
        chrono::DateTime::parse_from_rfc3339(before["dateModified"].as_str().unwrap()).unwrap(),
        chrono::DateTime::parse_from_rfc3339(after["dateModified"].as_str().unwrap()).unwrap(),
    );
    assert!(new_mod > old_mod);
    assert_eq!(new_mod.offset(), old_mod.offset());

    let stale = emu
        .http
        .get(emu.url(&path))
        .bearer_auth(&token)
        .header("if-none-match", &old_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
    let fresh = emu
        .http
        .get(emu.url(&path))
        .bearer_auth(&token)
        .header("if-none-match", &new_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 304);
}
