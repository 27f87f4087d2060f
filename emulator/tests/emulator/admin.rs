use genesys_emulator::{queue_id, user_id};
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn health_and_patches() {
    let emu = emu_default().await;
    let health = emu.http.get(emu.url("/admin/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let id = queue_id(9);
    let patched = emu
        .http
        .patch(emu.url(&format!("/admin/queues/{id}")))
        .body(r#"{"name":"Renamed queue","mediaSettings":{"call":{"alertingTimeoutSeconds":30}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let body: Value = patched.json().await.unwrap();
    assert_eq!(body["name"], "Renamed queue");
    assert_eq!(body["version"], 2);
    assert_eq!(body["mediaSettings"]["call"]["alertingTimeoutSeconds"], 30);
    assert!(body["mediaSettings"]["call"]["serviceLevel"].is_object(), "merge, not replace");

    let token = emu.token().await;
    let q = emu.get_json(&token, &format!("/api/v2/routing/queues/{id}")).await;
    assert_eq!(q["name"], "Renamed queue");

    let missing =
        emu.http.patch(emu.url("/admin/queues/unknown")).body(r#"{"name":"x"}"#).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let invalid =
        emu.http.patch(emu.url(&format!("/admin/queues/{id}"))).body("not json").send().await.unwrap();
    assert_eq!(invalid.status(), 400);

    let uid = user_id(1);
    let status = emu
        .http
        .patch(emu.url(&format!("/admin/users/{uid}/routingstatus")))
        .body(r#"{"status":"NOT_RESPONDING"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let rs = emu.get_json(&token, &format!("/api/v2/users/{uid}/routingstatus")).await;
    assert_eq!(rs["status"], "NOT_RESPONDING");
    let bad_status = emu
        .http
        .patch(emu.url(&format!("/admin/users/{uid}/routingstatus")))
        .body(r#"{"status":"ASLEEP"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_status.status(), 400);

    // None of the admin calls were counted; the token request and 2 GETs were.
    assert_eq!(emu.handle.counters().total, 3);
}
