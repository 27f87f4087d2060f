use genesys_emulator::{queue_id, Counters, EmulatorConfig, RequestRecord};

use crate::common::*;

#[tokio::test]
async fn counts_by_route_status_and_client() {
    let emu = emu(EmulatorConfig {
        clients: vec![("a".into(), "sa".into()), ("b".into(), "sb".into())],
        ..EmulatorConfig::default()
    })
    .await;
    let ta = emu.token_for("a", "sa").await;
    let tb = emu.token_for("b", "sb").await;
    for n in 0..3 {
        emu.get(&ta, &format!("/api/v2/routing/queues/{}", queue_id(n))).await;
    }
    emu.get(&tb, "/api/v2/routing/queues/unknown").await;
    emu.get(&tb, "/api/v2/routing/queues?pageSize=10").await;
    emu.get(&tb, "/api/v2/no/such/route").await;
    emu.http.get(emu.url("/api/v2/routing/queues")).send().await.unwrap();
    // Admin traffic is not counted.
    emu.http.get(emu.url("/admin/counters")).send().await.unwrap();

    let c = emu.handle.counters();
    assert_eq!(c.total, 9);
    assert_eq!(c.route("POST /oauth/token"), 2);
    assert_eq!(c.route("GET /api/v2/routing/queues/{id}"), 4);
    assert_eq!(c.route("GET /api/v2/routing/queues"), 2);
    assert_eq!(c.route("GET /api/v2/never/called"), 0);
    assert_eq!(c.by_status[&200], 6);
    assert_eq!(c.by_status[&404], 2);
    assert_eq!(c.by_status[&401], 1);
    assert_eq!(c.by_client["a"], 4);
    assert_eq!(c.by_client["b"], 3);
    assert_eq!(c.by_client["anonymous"], 2);

    let over_http: Counters =
        emu.http.get(emu.url("/admin/counters")).send().await.unwrap().json().await.unwrap();
    assert_eq!(over_http, c);

    let log: Vec<RequestRecord> =
        emu.http.get(emu.url("/admin/requests?limit=3")).send().await.unwrap().json().await.unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].route, "GET /api/v2/routing/queues");
    assert_eq!(log[0].client_id, "b");
    assert_eq!(log[0].path, "/api/v2/routing/queues");
    assert_eq!(log[2].client_id, "anonymous");
    assert_eq!(log[2].status, 401);
    assert!(log[0].at_ms > 1_700_000_000_000 && log[0].at_ms <= log[2].at_ms);
    assert_eq!(emu.handle.requests(100).len(), 9);

    let reset = emu.http.post(emu.url("/admin/counters/reset")).send().await.unwrap();
    assert_eq!(reset.status(), 200);
    assert_eq!(emu.handle.counters(), Counters::default());
    assert!(emu.handle.requests(10).is_empty());
    emu.get(&ta, "/api/v2/users").await;
    assert_eq!(emu.handle.counters().total, 1);
    emu.handle.reset_counters();
    assert_eq!(emu.handle.counters().total, 0);
}
