use std::time::Duration;

use genesys_emulator::{queue_id, EmulatorConfig};
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn token_is_issued_for_good_credentials() {
    let emu = emu_default().await;
    let resp = emu.token_response(CLIENT_ID, SECRET).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "cache-control"), "no-cache, no-store, must-revalidate");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 86_400);
    assert!(body["access_token"].as_str().unwrap().len() >= 32);
    assert!(body.get("refresh_token").is_none());
    let c = emu.handle.counters();
    assert_eq!(c.route("POST /oauth/token"), 1);
    assert_eq!(c.by_client[CLIENT_ID], 1);
}

#[tokio::test]
async fn bad_credentials_and_grants_are_refused() {
    let emu = emu_default().await;
    for (id, secret) in [(CLIENT_ID, "wrong"), ("stranger", SECRET)] {
        let resp = emu.token_response(id, secret).await;
        assert_eq!(resp.status(), 401);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client");
    }
    let no_auth =
        emu.http.post(emu.url("/oauth/token")).body("grant_type=client_credentials").send().await.unwrap();
    assert_eq!(no_auth.status(), 401);
    let wrong_grant = emu
        .http
        .post(emu.url("/oauth/token"))
        .basic_auth(CLIENT_ID, Some(SECRET))
        .body("grant_type=password")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_grant.status(), 400);
    let body: Value = wrong_grant.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");
    assert_eq!(emu.handle.counters().by_status[&401], 3);
}

#[tokio::test]
async fn api_needs_a_known_bearer_token() {
    let emu = emu_default().await;
    let path = format!("/api/v2/routing/queues/{}", queue_id(0));
    let resp = emu.http.get(emu.url(&path)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "authentication.required");
    assert_eq!(body["status"], 401);
    let resp = emu.get("not-a-token", &path).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(header(&resp, "cache-control"), "no-cache, no-store, must-revalidate");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "bad.credentials");
    assert_eq!(emu.handle.counters().by_client["anonymous"], 2);
}

#[tokio::test]
async fn tokens_expire_after_their_ttl() {
    let emu = emu(EmulatorConfig { token_ttl: Duration::from_secs(1), ..EmulatorConfig::default() }).await;
    let resp = emu.token_response(CLIENT_ID, SECRET).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["expires_in"], 1);
    let token = body["access_token"].as_str().unwrap().to_string();
    let path = format!("/api/v2/routing/queues/{}", queue_id(0));
    assert_eq!(emu.get(&token, &path).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = emu.get(&token, &path).await;
    assert_eq!(resp.status(), 401);
    // An expired token is still attributed to its client.
    assert_eq!(emu.handle.counters().by_client[CLIENT_ID], 3);
    // A new token works again.
    let fresh = emu.token().await;
    assert_eq!(emu.get(&fresh, &path).await.status(), 200);
}

#[tokio::test]
async fn revoked_clients_lose_their_tokens() {
    let emu = emu(EmulatorConfig {
        clients: vec![("a".into(), "sa".into()), ("b".into(), "sb".into()), ("c".into(), "sc".into())],
        ..EmulatorConfig::default()
    })
    .await;
    let (ta, tb, tc) =
        (emu.token_for("a", "sa").await, emu.token_for("b", "sb").await, emu.token_for("c", "sc").await);
    let path = "/api/v2/routing/queues";
    emu.handle.revoke_client("a");
    let revoked = emu.http.post(emu.url("/admin/clients/b/revoke")).send().await.unwrap();
    assert_eq!(revoked.status(), 200);
    assert_eq!(emu.get(&ta, path).await.status(), 401);
    assert_eq!(emu.get(&tb, path).await.status(), 401);
    assert_eq!(emu.get(&tc, path).await.status(), 200);
    assert_eq!(emu.token_response("a", "sa").await.status(), 401);
    assert_eq!(emu.token_response("b", "sb").await.status(), 401);
    assert_eq!(emu.token_response("c", "sc").await.status(), 200);
}
