//! `/metrics` on the HTTP side moves with the traffic: hits, misses,
//! coalesced waiters, upstream calls per token and a 429 (emulator fault
//! injection); and it never shows a credential's secret.
//!
//! The Prometheus recorder is process-wide and the whole suite shares the
//! process, so the assertions compare scrapes taken before and after, and
//! the test that asserts exact counts runs alone (`Scenario::alone`): no
//! other test drives traffic meanwhile.

use std::collections::BTreeMap;
use std::time::Duration;

use cxcache::proto::v1::Source;
use genesys_emulator::{queue_id, Fault};
use harness::*;
use tonic::Code;

/// One scrape: `name{labels}` → value (labels as exposed, sorted by the exporter).
type Scrape = BTreeMap<String, f64>;

async fn scrape(http_addr: std::net::SocketAddr) -> (Scrape, String) {
    let resp = reqwest::get(format!("http://{http_addr}/metrics")).await.expect("GET /metrics");
    assert!(resp.status().is_success(), "/metrics answered {}", resp.status());
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = resp.text().await.unwrap();
    let mut samples = Scrape::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        samples.insert(series.to_string(), value.parse().unwrap_or(f64::NAN));
    }
    (samples, text)
}

fn value(s: &Scrape, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(0.0)
}

/// How much `series` grew between two scrapes.
fn delta(before: &Scrape, after: &Scrape, series: &str) -> f64 {
    value(after, series) - value(before, series)
}

/// Gets through the HTTP data-action door are counted like gRPC Gets (the
/// cache counts them, whichever door they came through).
#[tokio::test]
async fn data_action_gets_are_counted_like_grpc_gets() {
    let mut s = Scenario::new("da-metrics").alone().start().await;
    let cx = s.cx();
    let (before, _) = scrape(cx.http_addr).await;
    let url = format!("http://{}/data-action", cx.http_addr);
    let http = reqwest::Client::new();
    let id = queue_id(3);
    for _ in 0..3 {
        let body = serde_json::json!({"kind": "routing.queue", "id": id});
        assert_eq!(http.post(&url).json(&body).send().await.unwrap().status(), 200);
    }
    let no_id = serde_json::json!({"kind": "routing.queue"});
    assert_eq!(http.post(&url).json(&no_id).send().await.unwrap().status(), 400);
    let (after, text) = scrape(cx.http_addr).await;
    let kind = r#"kind="routing.queue""#;
    let served: f64 = ["upstream", "store", "l1"]
        .iter()
        .map(|src| delta(&before, &after, &format!(r#"cxcache_get_total{{{kind},source="{src}"}}"#)))
        .sum();
    assert_eq!(served, 3.0, "{text}");
    assert_eq!(delta(&before, &after, r#"cxcache_get_errors_total{code="INVALID_ARGUMENT"}"#), 1.0, "{text}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_move_with_hits_misses_coalescing_and_429() {
    let mut s = Scenario::new("metrics").alone().start().await;
    let (cx, emu) = (s.cx(), s.emu());
    let (before, _) = scrape(cx.http_addr).await;

    // A miss, then hits.
    let hot = queue_id(0);
    assert_eq!(cx.get(get_queue(&hot)).await.unwrap().source(), Source::Upstream);
    let mut hit_sources = Vec::new();
    for _ in 0..5 {
        hit_sources.push(cx.get(get_queue(&hot)).await.unwrap().source());
    }

    // Coalescing: 20 callers on one cold key the upstream answers slowly.
    let cold = queue_id(1);
    emu.inject_fault(Fault { count: 1, ..slow(queue_path(&cold), 300) });
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let mut client = cx.client.clone();
            let req = get_queue(&cold);
            tokio::spawn(async move { client.get(req).await.map(|r| r.into_inner().source()) })
        })
        .collect();
    let mut coalesced = 0;
    for c in callers {
        match c.await.unwrap().expect("coalesced Get") {
            Source::Coalesced => coalesced += 1,
            // Late callers find the stored value (or started the flight).
            Source::Store | Source::L1 => hit_sources.push(Source::Store),
            _ => {}
        }
    }
    assert!(coalesced > 0, "some callers joined the flight");

    // A 429 from the platform.
    let limited = queue_id(2);
    emu.inject_fault(Fault { retry_after_secs: Some(1), count: 1, ..failing(queue_path(&limited), 429) });
    let limited_result = cx.get(get_queue(&limited)).await;

    let (after, text) = scrape(cx.http_addr).await;
    let kind = r#"kind="routing.queue""#;
    // The hot key, the cold key's flight leader (and the limited key, if a
    // retry got it after the 429).
    let fetched = 2.0 + f64::from(u8::from(limited_result.is_ok()));
    assert_eq!(
        delta(&before, &after, &format!(r#"cxcache_get_total{{{kind},source="upstream"}}"#)),
        fetched,
        "{text}"
    );
    let hits = delta(&before, &after, &format!(r#"cxcache_get_total{{{kind},source="store"}}"#))
        + delta(&before, &after, &format!(r#"cxcache_get_total{{{kind},source="l1"}}"#));
    assert_eq!(hits as usize, hit_sources.len(), "hits counted by tier: {hit_sources:?}\n{text}");
    assert_eq!(
        delta(&before, &after, &format!(r#"cxcache_get_total{{{kind},source="coalesced"}}"#)) as usize,
        coalesced,
        "{text}"
    );
    assert!(delta(&before, &after, "cxcache_coalesced_total") >= coalesced as f64, "{text}");
    assert_eq!(value(&after, "cxcache_coalesced_waiters"), 0.0, "no waiter left behind\n{text}");
    assert!(
        delta(&before, &after, &format!(r#"cxcache_get_duration_seconds_count{{{kind},source="upstream"}}"#))
            >= 1.0,
        "latency histogram recorded\n{text}"
    );
    assert!(text.contains("cxcache_get_duration_seconds_bucket{"), "a histogram, not a summary\n{text}");

    // Upstream, per token: the client id is a label, the secret appears nowhere.
    let client = r#"client_id="cxcache-demo""#;
    assert!(
        delta(&before, &after, &format!(r#"cxcache_upstream_requests_total{{{client},status="200"}}"#))
            >= 2.0,
        "{text}"
    );
    assert!(
        delta(&before, &after, &format!(r#"cxcache_upstream_requests_total{{{client},status="429"}}"#))
            >= 1.0,
        "{text}"
    );
    assert!(
        delta(&before, &after, &format!("cxcache_upstream_rate_limited_total{{{client}}}")) >= 1.0,
        "{text}"
    );
    assert!(
        after.contains_key(&format!("cxcache_upstream_quota_remaining{{{client}}}")),
        "remaining quota per token\n{text}"
    );
    assert!(!text.contains("demo-secret"), "secrets never exported");

    // The 429 reached the caller as RESOURCE_EXHAUSTED (unless the upstream
    // client retried it successfully): either way it is counted.
    match limited_result {
        Err(status) => {
            assert_eq!(status.code(), Code::ResourceExhausted);
            assert!(
                delta(&before, &after, r#"cxcache_get_errors_total{code="RESOURCE_EXHAUSTED"}"#) >= 1.0,
                "{text}"
            );
        }
        Ok(reply) => assert_eq!(reply.source(), Source::Upstream),
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_served_has_help_and_type() {
    let mut s = Scenario::new("describe").start().await;
    let cx = s.cx();
    // A miss and a hit: each family below then has at least one series.
    cx.get(get_queue(&queue_id(20))).await.unwrap();
    cx.get(get_queue(&queue_id(20))).await.unwrap();
    let (_, text) = scrape(cx.http_addr).await;
    assert!(text.contains("cxcache_build_info{version="), "{text}");
    for family in [
        "cxcache_get_total",
        "cxcache_get_duration_seconds",
        "cxcache_upstream_requests_total",
        "cxcache_upstream_duration_seconds",
        "cxcache_upstream_credential_parked",
        "cxcache_watch_subscribers",
        "cxcache_l1_bytes",
    ] {
        assert!(text.contains(&format!("# HELP {family} ")), "{family} has no HELP:\n{text}");
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} has no TYPE:\n{text}");
    }
    // Every family in the exposition is described, none left bare.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let family = line.split_whitespace().nth(2).unwrap();
        assert!(text.contains(&format!("# HELP {family} ")), "{family} has no HELP");
    }
    s.stop().await;
}

/// Every purge writes one structured audit line: with JSON logs its fields
/// (actor, reason, what was named, what matched) are fields of the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_writes_one_structured_audit_line() {
    let mut s = Scenario::new("audit").instances(0).start().await;
    let cx = s.process(&["--log-format", "json"], &[]);
    let mut client = connect(cx.grpc_addr).await;
    client.get(get_queue(&queue_id(21))).await.unwrap();
    let tag = format!("queue:{}", queue_id(21));
    let req = cxcache::proto::v1::InvalidateRequest {
        tags: vec![tag.clone()],
        reason: "ticket-42".into(),
        ..Default::default()
    };
    assert_eq!(client.invalidate(req).await.unwrap().into_inner().purged, 1);
    let audit = || {
        cx.log_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "cxcache::audit")
            .collect::<Vec<_>>()
    };
    assert!(wait_until(Duration::from_secs(5), || !audit().is_empty()).await, "no audit line");
    let lines = audit();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["audit"], "purge", "{line}");
    assert_eq!(line["reason"], "ticket-42", "{line}");
    assert_eq!(line["tags"], serde_json::to_string(&[tag]).unwrap(), "{line}");
    // A queue's own tag names its keys from the catalog (full, sla,
    // summary: no per-entity index), of which one was cached.
    assert_eq!(line["matched"], 3, "{line}");
    assert_eq!(line["purged"], 1, "{line}");
    assert!(line["actor"].as_str().is_some_and(|a| !a.is_empty()), "{line}");
    s.stop().await;
}
