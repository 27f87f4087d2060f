//! Change callbacks across a fleet: three `cxcache` processes on the real
//! cluster, one endpoint (an HTTP server in the test) that checks every
//! signature with the scheme the README documents, dedupes by event id,
//! goes down for 10 s, and outlives a SIGKILLed deliverer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use cxcache::proto::v1::cache_client::CacheClient;
use harness::*;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;
use tonic::transport::Channel;

const SECRET: &str = "e2e-callback-secret-0123";

/// The endpoint's record: every event id it accepted, how often, and the key.
#[derive(Default)]
struct Received {
    deliveries: BTreeMap<String, usize>,
    keys: BTreeMap<String, Vec<String>>,
    rejected: usize,
}

type Hook = Arc<Mutex<Received>>;

/// The README's check: `x-cxcache-signature: t=<unix s>,v1=<hex>` where v1 is
/// HMAC-SHA256(secret, "<t>.<body>"), and t within 5 minutes of now.
fn signature_ok(secret: &str, header: Option<&str>, body: &[u8]) -> bool {
    let Some(header) = header else { return false };
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    if (unix_ms() as i64 / 1000 - t).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

async fn hook(State(rx): State<Hook>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let sig = headers.get("x-cxcache-signature").and_then(|v| v.to_str().ok());
    if !signature_ok(SECRET, sig, &body) {
        rx.lock().rejected += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(json["endpoint"], "cdn");
    let mut r = rx.lock();
    for e in json["events"].as_array().expect("events") {
        let id = e["id"].as_str().expect("id").to_string();
        *r.deliveries.entry(id.clone()).or_default() += 1;
        let keys = e["keys"].as_array().map(|k| k.iter().map(|k| k.as_str().unwrap().to_string()).collect());
        r.keys.insert(id, keys.unwrap_or_default());
    }
    StatusCode::NO_CONTENT
}

/// The endpoint, served on `addr` until the returned sender fires.
async fn serve(
    addr: SocketAddr,
    rx: Hook,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the endpoint");
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(rx);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (stop, task)
}

/// Event ids accepted per key (of those the test purged).
fn ids_by_key(rx: &Hook) -> BTreeMap<String, BTreeSet<String>> {
    let r = rx.lock();
    let mut by_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, keys) in &r.keys {
        for k in keys {
            by_key.entry(k.clone()).or_default().insert(id.clone());
        }
    }
    by_key
}

async fn wait_for_keys(rx: &Hook, keys: &[String], limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        let got = ids_by_key(rx);
        if keys.iter().all(|k| got.contains_key(k)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Whether the process at `http` says it delivers `cdn`'s events.
async fn delivers(http: SocketAddr) -> bool {
    let text = match reqwest::get(format!("http://{http}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return false,
    };
    text.lines().any(|l| l.starts_with("cxcache_callback_deliverer{endpoint=\"cdn\"} 1"))
}

/// Purges queue `i` for each `i` of `range` (and a user, which the filter
/// leaves out) through the `alive` clients in turn; the queue keys purged.
async fn purge_round(
    env: &str,
    clients: &mut [CacheClient<Channel>],
    range: std::ops::Range<usize>,
    alive: &[usize],
) -> Vec<String> {
    let mut keys = Vec::new();
    for (n, i) in range.enumerate() {
        let c = &mut clients[alive[n % alive.len()]];
        // Ids of their own: every purge of the test names a distinct key.
        let key = format!("{env}:routing.queue:cb-{i}:full");
        c.invalidate(invalidate(&[&key], &[], &[])).await.expect("purge");
        let user = format!("{env}:user:cb-{i}:full");
        c.invalidate(invalidate(&[&user], &[], &[])).await.expect("purge");
        keys.push(key);
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_hears_each_purge_once_per_event_id_across_three_instances_through_downtime_and_a_kill() {
    let s = Scenario::new("callbacks").cluster().instances(0).start().await;
    let env = s.env.clone();
    let received: Hook = Default::default();
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let (stop, task) = serve(addr, received.clone()).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cxcache.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[callbacks]]
name = "cdn"
url = "http://{addr}/hook"
secret = "{SECRET}"
kinds = ["routing.queue"]
invalidated_only = true
retry_min = "100ms"
retry_max = "1s"
lease_ttl = "1s"
poll = "200ms"
"#
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    let mut procs: Vec<ProcessInstance> = (0..3).map(|_| s.process(&["--config", &config], &[])).collect();
    let mut clients = Vec::new();
    for p in &procs {
        clients.push(connect(p.grpc_addr).await);
    }
    // 1. Purges through all three instances: one event id per purge.
    let first = purge_round(&env, &mut clients, 0..30, &[0, 1, 2]).await;
    assert!(wait_for_keys(&received, &first, Duration::from_secs(15)).await, "first round delivered");

    // 2. The endpoint is down for 10 s while purges go on; they arrive after.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("endpoint stopped").unwrap();
    let second = purge_round(&env, &mut clients, 30..50, &[0, 1, 2]).await;
    tokio::time::sleep(Duration::from_secs(10)).await; // the outage itself
    assert!(ids_by_key(&received).keys().all(|k| !second.contains(k)), "nothing arrived while down");
    let (stop, task) = serve(addr, received.clone()).await;
    assert!(wait_for_keys(&received, &second, Duration::from_secs(15)).await, "retried after the outage");

    // 3. The deliverer is SIGKILLed: another instance takes its lease over.
    let mut holder = None;
    for (i, p) in procs.iter().enumerate() {
        if delivers(p.http_addr).await {
            holder = Some(i);
        }
    }
    let holder = holder.expect("one instance delivers");
    procs[holder].kill();
    let alive: Vec<usize> = (0..3).filter(|i| *i != holder).collect();
    let third = purge_round(&env, &mut clients, 50..60, &alive).await;
    assert!(wait_for_keys(&received, &third, Duration::from_secs(15)).await, "delivered after the kill");
    let mut successors = 0;
    for i in &alive {
        successors += delivers(procs[*i].http_addr).await as usize;
    }
    assert_eq!(successors, 1, "exactly one successor delivers");

    // Every purge arrived, and only the filter's keys. Before the kill each
    // purge is one event, one id. Purges right after it wait for the dead
    // instance's acknowledgement until its registry entry expires, and are
    // retried inside cxcache: a retry purges (and announces) again, so the
    // endpoint may hear such a key twice, under two ids, as Watch does.
    let by_key = ids_by_key(&received);
    for k in first.iter().chain(&second) {
        assert_eq!(by_key[k].len(), 1, "{k}: one event id per purge, got {:?}", by_key[k]);
    }
    let retried = third.iter().filter(|k| by_key[*k].len() > 1).count();
    println!("after the kill: {retried} of {} purges were retried (announced twice)", third.len());
    let all: Vec<String> = first.iter().chain(&second).chain(&third).cloned().collect();
    assert_eq!(by_key.len(), all.len(), "no other keys (users are filtered out): {:?}", by_key.keys());
    {
        let r = received.lock();
        let redelivered: Vec<_> = r.deliveries.iter().filter(|(_, n)| **n > 1).collect();
        // Nothing was in flight at the kill or the outage: no redelivery either.
        assert!(redelivered.is_empty(), "redelivered ids: {redelivered:?}");
        assert_eq!(r.rejected, 0, "every delivery carried a valid signature");
    }

    // 4. The check on the endpoint's side rejects what it should: another
    // secret, a tampered body, an old timestamp.
    let body = br#"{"endpoint":"cdn","events":[]}"#;
    let sign = |secret: &str, t: i64, body: &[u8]| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    };
    let now = unix_ms() as i64 / 1000;
    let http = reqwest::Client::new();
    let post = |sig: String, body: &'static [u8]| {
        http.post(format!("http://{addr}/hook")).header("x-cxcache-signature", sig).body(body).send()
    };
    assert_eq!(post(sign(SECRET, now, body), body).await.unwrap().status(), 204, "a good signature passes");
    assert_eq!(post(sign("another-secret-0123456", now, body), body).await.unwrap().status(), 401);
    assert_eq!(
        post(sign(SECRET, now, body), br#"{"endpoint":"cdn","events":[{}]}"#).await.unwrap().status(),
        401
    );
    assert_eq!(post(sign(SECRET, now - 3600, body), body).await.unwrap().status(), 401);
    assert_eq!(received.lock().rejected, 3);

    stop.send(()).unwrap();
    let _ = task.await;
    for (i, mut p) in procs.into_iter().enumerate() {
        if i != holder {
            p.terminate(Duration::from_secs(10));
        }
    }
}
