//! The spine end to end: Get through a cxcache instance to the emulator and
//! back, on the embedded store and on a real Redis Cluster.

use std::collections::HashSet;
use std::time::Duration;

use cxcache::proto::v1::{Freshness, GetRequest, Source};
use genesys_emulator::{queue_id, Fault};
use harness::*;
use serde_json::json;
use tonic::Code;

const QUEUE_ROUTE: &str = "GET /api/v2/routing/queues/{id}";
const ANALYTICS_ROUTE: &str = "POST /api/v2/analytics/conversations/aggregates/query";

/// Runs one scenario against both backends, each test with its own namespace.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(harness::Scenario::new(stringify!($name))).await; })*
        }
        mod redis_cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(harness::Scenario::new(stringify!($name)).cluster()).await; })*
        }
    };
}

both_backends!(
    first_get_goes_upstream_then_hits_with_identical_bytes,
    equivalent_analytics_bodies_share_one_key_and_one_call,
    upstream_failures_are_mapped_and_never_stored,
    ttl_expiry_leads_to_a_refetch,
    bad_input_is_rejected_without_upstream_call_or_write,
    variants_and_lists_are_separate_entries,
);

async fn first_get_goes_upstream_then_hits_with_identical_bytes(scenario: Scenario) {
    let mut s = scenario.start().await;
    let (cx, emu, env) = (s.cx(), s.emu(), &s.env);
    let id = queue_id(3);

    let first = cx.get(get_queue(&id)).await.unwrap();
    assert_eq!(first.source(), Source::Upstream);
    assert_eq!(first.key, format!("{env}:routing.queue:{id}:full"));
    assert_eq!(emu.counters().route(QUEUE_ROUTE), 1);
    let value: serde_json::Value = serde_json::from_slice(&first.value).unwrap();
    assert_eq!(value["id"], id.as_str());
    assert!(value.get("_links").is_none() && value.get("retrievedAt").is_none(), "volatile fields dropped");
    assert!(
        value["dateModified"].as_str().unwrap().ends_with('Z'),
        "times in UTC: {}",
        value["dateModified"]
    );

    let mut from_l1 = 0;
    for _ in 0..100 {
        let hit = cx.get(get_queue(&id)).await.unwrap();
        assert!(matches!(hit.source(), Source::Store | Source::L1), "{:?}", hit.source());
        from_l1 += usize::from(hit.source() == Source::L1);
        assert_eq!(hit.value, first.value);
    }
    assert!(from_l1 > 90, "hot key served from L1: {from_l1}/100");
    assert_eq!(emu.counters().route(QUEUE_ROUTE), 1, "100 hits cost no upstream call");

    // A forced refetch gets a response whose _links/retrievedAt differ, yet
    // the stored bytes are identical.
    let refreshed = cx
        .get(GetRequest {
            freshness: Some(Freshness { force_refresh: true, ..Default::default() }),
            ..get_queue(&id)
        })
        .await
        .unwrap();
    assert_eq!(refreshed.source(), Source::Upstream);
    assert_eq!(emu.counters().route(QUEUE_ROUTE), 2);
    assert_eq!(refreshed.value, first.value, "normalized bytes are stable across responses");
    s.stop().await;
}

fn analytics(body: serde_json::Value) -> GetRequest {
    GetRequest {
        kind: "analytics.conversations.aggregates".into(),
        body_json: body.to_string(),
        ..Default::default()
    }
}

async fn equivalent_analytics_bodies_share_one_key_and_one_call(scenario: Scenario) {
    let mut s = scenario.start().await;
    let (cx, emu) = (s.cx(), s.emu());
    let a = json!({
        "interval": "2023-10-01T00:00:00Z/2023-10-01T06:00:00Z",
        "granularity": "PT1H",
        "groupBy": ["queueId"],
        "filter": {"type": "and", "predicates": [
            {"dimension": "queueId", "value": "q1"}, {"dimension": "mediaType", "value": "voice"}]},
        "metrics": ["nOffered", "tHandle"],
        "requestId": "a-1"
    });
    let b = json!({
        "metrics": ["nOffered", "tHandle"],
        "requestId": "b-2",
        "filter": {"predicates": [
            {"value": "voice", "dimension": "mediaType"}, {"dimension": "queueId", "value": "q1"}], "type": "and"},
        "groupBy": ["queueId"],
        "granularity": "PT1H",
        "interval": "2023-10-01T07:00:00+07:00/2023-10-01T13:00:00+07:00"
    });
    let ra = cx.get(analytics(a)).await.unwrap();
    let rb = cx.get(analytics(b)).await.unwrap();
    assert_eq!(ra.key, rb.key);
    assert_eq!(ra.source(), Source::Upstream);
    assert_eq!(rb.source(), Source::Store);
    assert_eq!(ra.value, rb.value);
    assert_eq!(emu.counters().route(ANALYTICS_ROUTE), 1);
    // A 2023 interval is long closed: the closed-interval class (24 h, less
    // jitter), not the granularity rule nor the config class.
    let ttl = ra.ttl_remaining.unwrap().seconds;
    assert!((82_000..=86_400).contains(&ttl), "analytics ttl {ttl}");

    // A different window is a different key and a second call.
    let c = json!({"interval": "2023-10-02T00:00:00Z/2023-10-02T06:00:00Z", "granularity": "PT1H", "metrics": ["nOffered"]});
    let rc = cx.get(analytics(c)).await.unwrap();
    assert_ne!(rc.key, ra.key);
    assert_eq!(emu.counters().route(ANALYTICS_ROUTE), 2);
    s.stop().await;
}

async fn upstream_failures_are_mapped_and_never_stored(scenario: Scenario) {
    let mut s = scenario.start().await;
    let (cx, emu) = (s.cx(), s.emu());
    let prefix = "/api/v2/routing/queues/";

    // 429 → RESOURCE_EXHAUSTED with RetryInfo from Retry-After.
    let id = queue_id(1);
    emu.inject_fault(Fault { retry_after_secs: Some(7), count: 1, ..failing(prefix, 429) });
    let err = cx.get(get_queue(&id)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let retry = details(&err).retry_info().expect("RetryInfo").retry_delay.expect("delay");
    assert_eq!(retry, Duration::from_secs(7));
    let ok = cx.get(get_queue(&id)).await.unwrap();
    assert_eq!(ok.source(), Source::Upstream, "the 429 was not stored");
    assert_eq!(emu.counters().route(QUEUE_ROUTE), 2);

    // 500 → UNAVAILABLE, not stored.
    let id = queue_id(2);
    // Until cleared: a one-off 5xx is retried away (issue 3).
    emu.inject_fault(failing(prefix, 500));
    let err = cx.get(get_queue(&id)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    emu.clear_faults();
    assert_eq!(cx.get(get_queue(&id)).await.unwrap().source(), Source::Upstream);

    // 403 → PERMISSION_DENIED, not stored; 404 → NOT_FOUND, remembered
    // briefly (`cache.ttl.not_found`): asked again, it costs no quota.
    let id = queue_id(4);
    emu.inject_fault(Fault { count: 1, ..failing(prefix, 403) });
    assert_eq!(cx.get(get_queue(&id)).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(cx.get(get_queue(&id)).await.unwrap().source(), Source::Upstream);
    let before = emu.counters().route(QUEUE_ROUTE);
    assert_eq!(cx.get(get_queue("no-such-queue")).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(cx.get(get_queue("no-such-queue")).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(emu.counters().route(QUEUE_ROUTE), before + 1, "a 404 is remembered");

    // Revoked credentials → UNAUTHENTICATED (the token is refused, then the
    // token endpoint refuses the client).
    emu.revoke_client("cxcache-demo");
    let err = cx.get(get_queue(&queue_id(5))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(!err.message().contains("demo-secret"), "secrets never appear in errors");
    s.stop().await;
}

async fn ttl_expiry_leads_to_a_refetch(scenario: Scenario) {
    let mut s = scenario.exact_ttl(Duration::from_millis(400)).start().await;
    let (cx, emu) = (s.cx(), s.emu());
    let id = queue_id(7);
    assert_eq!(cx.get(get_queue(&id)).await.unwrap().source(), Source::Upstream);
    assert_eq!(cx.get(get_queue(&id)).await.unwrap().source(), Source::Store);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let again = cx.get(get_queue(&id)).await.unwrap();
    // Refetched: conditionally (304, the queue did not change) here.
    assert!(matches!(again.source(), Source::Upstream | Source::Revalidated), "{:?}", again.source());
    assert_eq!(emu.counters().route(QUEUE_ROUTE), 2, "expired entry is refetched");
    s.stop().await;
}

async fn bad_input_is_rejected_without_upstream_call_or_write(scenario: Scenario) {
    let mut s = scenario.start().await;
    let (cx, emu, env) = (s.cx(), s.emu(), &s.env);
    let cases: Vec<(GetRequest, &str)> = vec![
        (GetRequest { kind: "routing.nothing".into(), id: "x".into(), ..Default::default() }, "kind"),
        (GetRequest { kind: "".into(), ..Default::default() }, "kind"),
        (GetRequest { kind: "routing.queue".into(), ..Default::default() }, "id"),
        (GetRequest { variant: "nope".into(), ..get_queue(&queue_id(1)) }, "variant"),
        (
            GetRequest {
                kind: "analytics.conversations.aggregates".into(),
                body_json: "{\"interval\":".into(),
                ..Default::default()
            },
            "body_json",
        ),
        (
            GetRequest {
                kind: "analytics.conversations.aggregates".into(),
                body_json: format!("{{\"pad\":\"{}\"}}", "x".repeat(100_000)),
                ..Default::default()
            },
            "body_json",
        ),
        (GetRequest { kind: "routing.queue".into(), id: "a/../../b".into(), ..Default::default() }, "id"),
        (
            GetRequest {
                kind: "analytics.conversations.details.job".into(),
                body_json: r#"{"interval":"yesterday"}"#.into(),
                ..Default::default()
            },
            "body_json",
        ),
        (
            GetRequest {
                kind: "routing.queues".into(),
                params: [("pageSize".to_string(), "1".to_string())].into(),
                ..Default::default()
            },
            "params[pageSize]",
        ),
    ];
    for (req, field) in cases {
        let err = cx.get(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{req:?}");
        let violations = details(&err).bad_request().expect("BadRequest details").field_violations.clone();
        assert!(violations.iter().any(|v| v.field == field), "{req:?}: {violations:?}");
    }
    assert_eq!(emu.counters().total, 0, "bad input causes no upstream call (not even a token)");

    if s.redis_url().is_some() {
        let redis = s.redis().await;
        assert!(keys_of_env(&redis, env).await.is_empty(), "bad input writes nothing");
        for index in [format!("cx:idx:{{{env}:*"), format!("cx:tag:{{{env}:*")] {
            assert!(keys_matching(&redis, &index).await.is_empty(), "bad input indexes nothing ({index})");
        }
    }

    // A grpc-timeout outside the spec (over 8 digits) is ignored, as tonic
    // does, instead of overflowing the deadline; the connection lives on.
    let mut huge = tonic::Request::new(get_queue(&queue_id(2)));
    huge.metadata_mut().insert("grpc-timeout", "9999999999999999H".parse().unwrap());
    cx.client.clone().get(huge).await.expect("Get with an out-of-spec grpc-timeout");
    let mut largest = tonic::Request::new(get_queue(&queue_id(2)));
    largest.metadata_mut().insert("grpc-timeout", "99999999H".parse().unwrap());
    cx.client.clone().get(largest).await.expect("Get with the largest grpc-timeout");
    s.stop().await;
}

async fn variants_and_lists_are_separate_entries(scenario: Scenario) {
    let mut scene = scenario.start().await;
    let (cx, env) = (scene.cx(), &scene.env);
    let id = queue_id(9);
    let full = cx.get(get_queue(&id)).await.unwrap();
    let summary = cx.get(GetRequest { variant: "summary".into(), ..get_queue(&id) }).await.unwrap();
    assert_eq!(summary.key, format!("{env}:routing.queue:{id}:summary"));
    let s: serde_json::Value = serde_json::from_slice(&summary.value).unwrap();
    let keys: HashSet<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, HashSet::from(["id", "name", "memberCount", "joinedMemberCount", "division"]));
    assert_ne!(full.value, summary.value);
    assert_eq!(summary.tags, vec![format!("queue:{id}")]);

    let list = cx.get(GetRequest { kind: "routing.queues".into(), ..Default::default() }).await.unwrap();
    let l: serde_json::Value = serde_json::from_slice(&list.value).unwrap();
    assert_eq!(l["entities"].as_array().unwrap().len(), 50, "all seeded queues assembled");
    assert_eq!(l["total"], 50);
    scene.stop().await;
}

/// Redis-only: every key written has a TTL, and keys spread over the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_all_expire_and_spread_over_slots() {
    let mut s = Scenario::new("spread").cluster().start().await;
    let (cx, env) = (s.cx(), &s.env);
    for n in 0..30 {
        cx.get(get_queue(&queue_id(n))).await.unwrap();
    }
    cx.get(analytics(
        json!({"interval": "2023-10-01T00:00:00Z/2023-10-01T01:00:00Z", "metrics": ["nOffered"]}),
    ))
    .await
    .unwrap();
    let redis = s.redis().await;
    // Entries plus their bookkeeping (generation, fence, lease sequence) and
    // the per-kind / per-tag indexes: every one of them must expire.
    let mut all = keys_of_env(&redis, env).await;
    all.extend(keys_matching(&redis, &format!("cx:idx:{{{env}:*")).await);
    all.extend(keys_matching(&redis, &format!("cx:tag:{{{env}:*")).await);
    for key in &all {
        let ms = pttl(&redis, key).await;
        assert!(ms > 0, "{key} has no expiry (PTTL {ms})");
    }
    let keys: Vec<String> = all.into_iter().filter(|k| !cxcache::keys::is_bookkeeping(k)).collect();
    assert_eq!(keys.len(), 31, "{keys:?}");
    let slots: HashSet<u16> = keys.iter().map(|k| fred::util::redis_keyslot(k.as_bytes())).collect();
    assert!(slots.len() >= 20, "keys should spread over many slots, got {}", slots.len());
    // The 3 masters split the 16384 slots in thirds: keys land on all of them.
    let thirds: HashSet<u16> = slots.iter().map(|s| s / 5462).collect();
    assert_eq!(thirds.len(), 3, "keys on every master: {slots:?}");
    s.stop().await;
}

/// Data actions may have side effects and run with cxcache's identity: an
/// action the catalog does not list is refused (PERMISSION_DENIED, nothing
/// called), a listed one that is not `cacheable` goes upstream on every
/// call (never stored, never shared), a cacheable one is cached.
#[tokio::test]
async fn data_actions_run_only_if_listed_and_are_cached_only_if_read_only() {
    let mut s = Scenario::new("actions")
        .configure(|c| {
            allow_actions(c, json!({ "lookup-customer": { "cacheable": true }, "update-case": {} }));
        })
        .start()
        .await;
    let (cx, emu) = (s.cx(), s.emu());
    const ROUTE: &str = "POST /api/v2/integrations/actions/{action_id}/execute";
    let action = |id: &str| GetRequest {
        kind: "integrations.action.execute".into(),
        id: id.into(),
        body_json: r#"{"caseId":"c1"}"#.into(),
        ..Default::default()
    };
    let err = cx.get(action("delete-everything")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("actions"), "names where to allow it: {}", err.message());
    assert_eq!(emu.counters().route(ROUTE), 0, "nothing executed");

    for _ in 0..2 {
        assert_eq!(cx.get(action("update-case")).await.unwrap().source(), Source::Upstream);
    }
    assert_eq!(emu.counters().route(ROUTE), 2, "an action with side effects runs every time");
    assert_eq!(cx.get(action("lookup-customer")).await.unwrap().source(), Source::Upstream);
    assert_eq!(cx.get(action("lookup-customer")).await.unwrap().source(), Source::Store);
    assert_eq!(emu.counters().route(ROUTE), 3);
    s.stop().await;
}
