use std::time::Duration;

use genesys_emulator::EmulatorConfig;
use serde_json::Value;

use crate::common::*;

fn small_budget() -> EmulatorConfig {
    EmulatorConfig { rate_limit: 3, window: Duration::from_secs(2), ..EmulatorConfig::default() }
}

#[tokio::test]
async fn budget_headers_429_and_window_reset() {
    let emu = emu(small_budget()).await;
    let token = emu.token().await;
    let path = "/api/v2/routing/skills";
    for n in 1..=3 {
        let resp = emu.get(&token, path).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "inin-ratelimit-count"), n.to_string());
        assert_eq!(header(&resp, "inin-ratelimit-allowed"), "3");
        let reset: u64 = header(&resp, "inin-ratelimit-reset").parse().unwrap();
        assert!((1..=2).contains(&reset), "reset {reset}");
        assert_eq!(header(&resp, "cache-control"), "no-cache, no-store, must-revalidate");
    }
    let resp = emu.get(&token, path).await;
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = header(&resp, "retry-after").parse().unwrap();
    assert!((1..=2).contains(&retry_after), "retry-after {retry_after}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "too.many.requests.retry.after");
    assert_eq!(body["status"], 429);
    assert_eq!(
        body["message"],
        format!("Rate limit exceeded the maximum. Retry the request in [{retry_after}] seconds")
    );
    assert_eq!(emu.handle.counters().rate_limited, 1);

    // Another token of the same client has its own budget.
    let other = emu.token().await;
    assert_eq!(emu.get(&other, path).await.status(), 200);

    // After Retry-After the window has reset.
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(50)).await;
    let resp = emu.get(&token, path).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "inin-ratelimit-count"), "1");
}

#[tokio::test]
async fn token_endpoint_and_admin_are_not_rate_limited() {
    let emu = emu(small_budget()).await;
    for _ in 0..5 {
        emu.token().await;
        let resp = emu.http.get(emu.url("/admin/health")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("inin-ratelimit-count").is_none());
    }
    assert_eq!(emu.handle.counters().total, 5);
}
