use std::time::{Duration, Instant};

use genesys_emulator::{queue_id, Fault};
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn status_fault_applies_count_times_then_clears() {
    let emu = emu_default().await;
    let token = emu.token().await;
    let path = format!("/api/v2/routing/queues/{}", queue_id(0));
    emu.handle.inject_fault(Fault {
        path_prefix: "/api/v2/routing/queues".into(),
        status: Some(500),
        count: 1,
        ..Fault::default()
    });
    // Other paths are not affected.
    assert_eq!(emu.get(&token, "/api/v2/routing/skills").await.status(), 200);
    let failed = emu.get(&token, &path).await;
    assert_eq!(failed.status(), 500);
    assert!(failed.headers().get("inin-ratelimit-count").is_some());
    let body: Value = failed.json().await.unwrap();
    assert_eq!(body["status"], 500);
    assert_eq!(emu.get(&token, &path).await.status(), 200);

    // Over HTTP, with count 0 = until cleared.
    let resp = emu
        .http
        .post(emu.url("/admin/faults"))
        .body(r#"{"path_prefix":"","status":503}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(emu.get(&token, &path).await.status(), 503);
    assert_eq!(emu.get(&token, "/api/v2/users").await.status(), 503);
    let cleared = emu.http.delete(emu.url("/admin/faults")).send().await.unwrap();
    assert_eq!(cleared.status(), 200);
    assert_eq!(emu.get(&token, &path).await.status(), 200);
    emu.handle.inject_fault(Fault { status: Some(502), ..Fault::default() });
    emu.handle.clear_faults();
    assert_eq!(emu.get(&token, &path).await.status(), 200);

    let bad = emu.http.post(emu.url("/admin/faults")).body("{oops").send().await.unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn injected_429_carries_retry_after_and_counts() {
    let emu = emu_default().await;
    let token = emu.token().await;
    emu.handle.inject_fault(Fault {
        status: Some(429),
        retry_after_secs: Some(7),
        count: 1,
        ..Fault::default()
    });
    let resp = emu.get(&token, "/api/v2/routing/queues").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after"), "7");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "too.many.requests.retry.after");
    assert_eq!(emu.handle.counters().rate_limited, 1);
}

#[tokio::test]
async fn latency_fault_delays_the_answer() {
    let emu = emu_default().await;
    let token = emu.token().await;
    let resp =
        emu.http.post(emu.url("/admin/faults")).body(r#"{"latency_ms":150,"count":1}"#).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    assert_eq!(emu.get(&token, "/api/v2/routing/skills").await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn held_responses_wait_for_release() {
    let emu = emu_default().await;
    let token = emu.token().await;
    emu.handle.inject_fault(Fault { hold: true, count: 1, ..Fault::default() });
    let url = emu.url(&format!("/api/v2/routing/queues/{}", queue_id(2)));
    let http = emu.http.clone();
    let held_token = token.clone();
    let held = tokio::spawn(async move { http.get(url).bearer_auth(held_token).send().await.unwrap() });
    let deadline = Instant::now() + Duration::from_secs(5);
    while emu.handle.held_count() == 0 {
        assert!(Instant::now() < deadline, "request never got held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Only one request is held; others go through.
    assert_eq!(emu.get(&token, "/api/v2/routing/skills").await.status(), 200);
    let admin_view: Value = emu.http.get(emu.url("/admin/held")).send().await.unwrap().json().await.unwrap();
    assert_eq!(admin_view["held"], 1);
    assert!(!held.is_finished());
    let released: Value =
        emu.http.post(emu.url("/admin/release")).send().await.unwrap().json().await.unwrap();
    assert_eq!(released["released"], 1);
    let resp = tokio::time::timeout(Duration::from_secs(5), held).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(emu.handle.held_count(), 0);
}

#[tokio::test]
async fn shutdown_releases_held_responses() {
    let emu = emu_default().await;
    let token = emu.token().await;
    emu.handle.inject_fault(Fault { hold: true, ..Fault::default() });
    let url = emu.url("/api/v2/routing/queues");
    let http = emu.http.clone();
    let held = tokio::spawn(async move { http.get(url).bearer_auth(token).send().await });
    while emu.handle.held_count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::timeout(Duration::from_secs(5), emu.handle.clone().shutdown()).await.unwrap();
    let resp = held.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
}
