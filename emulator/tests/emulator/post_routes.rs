use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const EXECUTE: &str = "/api/v2/integrations/actions/act-42/execute";
const AGGREGATES: &str = "/api/v2/analytics/conversations/aggregates/query";

#[tokio::test]
async fn data_action_output_depends_on_input_meaning() {
    let emu = emu_default().await;
    let token = emu.token().await;
    let a: Value =
        emu.post_json(&token, EXECUTE, r#"{"customer":"c-1","tier":2}"#).await.json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let b: Value =
        emu.post_json(&token, EXECUTE, r#"{"tier":2,"customer":"c-1"}"#).await.json().await.unwrap();
    assert_eq!(a["actionId"], "act-42");
    assert_eq!(a["input"]["customer"], "c-1");
    assert!(a["result"]["score"].is_u64());
    assert_ne!(a["_links"], b["_links"]);
    assert_ne!(a["retrievedAt"], b["retrievedAt"]);
    assert_eq!(stable(a.clone()), stable(b));
    let other: Value =
        emu.post_json(&token, EXECUTE, r#"{"customer":"c-2","tier":2}"#).await.json().await.unwrap();
    assert_ne!(other["result"], a["result"]);
    for bad in ["{not json", "[1,2]", "\"text\"", ""] {
        let resp = emu.post_json(&token, EXECUTE, bad).await;
        assert_eq!(resp.status(), 400, "{bad:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "bad.request");
    }
}

#[tokio::test]
async fn aggregates_are_deterministic_from_meaning() {
    let emu = emu_default().await;
    let token = emu.token().await;
    let a: Value = emu
        .post_json(
            &token,
            AGGREGATES,
            r#"{"interval":"2024-05-01T00:00:00Z/2024-05-01T02:00:00Z","granularity":"PT1H",
                "groupBy":["queueId"],"metrics":["nOffered","tHandle"]}"#,
        )
        .await
        .json()
        .await
        .unwrap();
    let b: Value = emu
        .post_json(
            &token,
            AGGREGATES,
            r#"{"metrics":["nOffered","tHandle"],"groupBy":["queueId"],"granularity":"PT1H",
                "interval":"2024-05-01T03:00:00.000+03:00/2024-05-01T05:00:00.000+03:00"}"#,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(a, b);
    let first = &a["results"][0];
    assert!(first["group"]["queueId"].is_string());
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    assert_eq!(first["data"][0]["metrics"][0]["metric"], "nOffered");
    assert!(first["data"][0]["metrics"][0]["stats"]["count"].is_u64());

    for bad in [
        r#"{"metrics":["nOffered"]}"#,
        r#"{"interval":"not-an-interval","metrics":["nOffered"]}"#,
        r#"{"interval":"2024-05-01T02:00:00Z/2024-05-01T00:00:00Z","metrics":["nOffered"]}"#,
        "[]",
    ] {
        let resp = emu.post_json(&token, AGGREGATES, bad).await;
        assert_eq!(resp.status(), 400, "{bad}");
    }
    let c = emu.handle.counters();
    assert_eq!(c.route("POST /api/v2/analytics/conversations/aggregates/query"), 6);
}
