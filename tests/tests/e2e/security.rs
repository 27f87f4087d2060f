//! Who may call, and what each caller may do: secure by default, caller
//! authentication (API keys, rotation by reload), scopes, Watch limits, and
//! TLS on both listeners (reloaded certificates, mutual TLS).

use std::path::{Path, PathBuf};
use std::time::Duration;

use cxcache::auth::hash_key;
use cxcache::config::{CallerSettings, Config, Scopes};
use cxcache::proto::v1::cache_client::CacheClient;
use cxcache::proto::v1::{Freshness, GetRequest, WatchRequest};
use genesys_emulator::{queue_id, user_id};
use harness::*;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

const QUEUE_ROUTE: &str = "GET /api/v2/routing/queues/{id}";

fn caller(name: &str, keys: &[&str], scopes: Scopes) -> CallerSettings {
    CallerSettings {
        name: name.into(),
        api_keys: keys.iter().map(|k| hash_key(k)).collect(),
        scopes,
        ..CallerSettings::default()
    }
}

/// `routing-svc` (key `routing-key`) may Get, Watch and execute
/// `routing.*` and purge inside `{env}:routing.`; `admin` (key
/// `admin-key`) may do everything.
fn with_callers(c: &mut Config) {
    let env = c.env.clone();
    c.auth.callers = vec![
        caller(
            "routing-svc",
            &["routing-key"],
            Scopes {
                get: vec!["routing.*".into()],
                invalidate_prefixes: vec![format!("{env}:routing.")],
                invalidate_tags: vec!["queue:*".into()],
                watch: vec!["routing.*".into()],
                data_actions: vec!["routing.*".into()],
                ..Scopes::default()
            },
        ),
        caller(
            "admin",
            &["admin-key"],
            Scopes {
                get: vec!["*".into()],
                force_refresh: true,
                max_age: true,
                invalidate_prefixes: vec![format!("{env}:")],
                invalidate_tags: vec!["*".into()],
                watch: vec!["*".into()],
                data_actions: vec!["*".into()],
            },
        ),
    ];
}

fn keyed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

/// `message` with `key` as its bearer, or no credential at all.
fn ask<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    match key {
        Some(k) => keyed(message, k),
        None => tonic::Request::new(message),
    }
}

fn user(n: usize) -> GetRequest {
    GetRequest { kind: "user".into(), id: user_id(n), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exposed_listener_without_callers_exits_2_saying_how_to_configure_them() {
    let out = std::process::Command::new(cxcache_binary())
        .args(["--grpc-addr", "0.0.0.0:0", "--http-addr", "127.0.0.1:0"])
        .output()
        .expect("run cxcache");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("[[auth.callers]]") && stderr.contains("auth.allow_anonymous"), "{stderr}");

    // Said explicitly, it starts (with a warning).
    let mut child = std::process::Command::new(cxcache_binary())
        .args(["--grpc-addr", "0.0.0.0:0", "--http-addr", "127.0.0.1:0"])
        .env("CXCACHE_AUTH__ALLOW_ANONYMOUS", "true")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn cxcache");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("cxcache listening"), "{line:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_calls_read_purge_watch_and_execute_nothing() {
    let mut s = Scenario::new("unauth").configure(with_callers).start().await;
    let (cx, emu, env) = (s.cx(), s.emu(), s.env.clone());
    let id = queue_id(1);
    // Something cached, to see that nothing is purged.
    cx.client.clone().get(keyed(get_queue(&id), "admin-key")).await.unwrap();
    assert_eq!(emu.counters().route(QUEUE_ROUTE), 1);

    let mut client = cx.new_client().await;
    for key in [None, Some("wrong-key")] {
        let e = client.get(ask(get_queue(&queue_id(2)), key)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let e = client.invalidate(ask(invalidate(&[], &[&format!("{env}:")], &[]), key)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let e = client
            .watch(ask(WatchRequest { kinds: vec!["routing.queue".into()], ..Default::default() }, key));
        assert_eq!(e.await.unwrap_err().code(), Code::Unauthenticated);
    }
    let door = format!("http://{}/data-action", cx.http_addr);
    let body = serde_json::json!({"kind": "routing.queue", "id": queue_id(3)});
    let resp = reqwest::Client::new().post(&door).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = reqwest::Client::new().post(&door).bearer_auth("wrong").json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(emu.counters().route(QUEUE_ROUTE), 1, "nothing read upstream");
    // Nothing purged: the cached queue is still served from cache.
    let hit = cx.client.clone().get(keyed(get_queue(&id), "admin-key")).await.unwrap().into_inner();
    assert_ne!(hit.source(), cxcache::proto::v1::Source::Upstream);
    assert_eq!(emu.counters().route(QUEUE_ROUTE), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_scoped_caller_is_refused_outside_its_scopes_naming_the_scope() {
    let mut s = Scenario::new("scopes").configure(with_callers).start().await;
    let (cx, emu, env) = (s.cx(), s.emu(), s.env.clone());
    let mut client = cx.new_client().await;
    let key = "routing-key";

    client.get(keyed(get_queue(&queue_id(1)), key)).await.expect("routing.queue is in routing.*");
    let denied = |e: tonic::Status, scope: &str| {
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains(scope) && e.message().contains("routing-svc"), "{}", e.message());
    };
    denied(client.get(keyed(user(1), key)).await.unwrap_err(), "scope get");
    let forced = GetRequest {
        freshness: Some(Freshness { force_refresh: true, ..Default::default() }),
        ..get_queue(&queue_id(1))
    };
    denied(client.get(keyed(forced, key)).await.unwrap_err(), "scope force_refresh");
    assert_eq!(emu.counters().route("GET /api/v2/users/{id}"), 0, "nothing fetched for a refused Get");
    assert_eq!(emu.counters().route(QUEUE_ROUTE), 1);

    denied(
        client.invalidate(keyed(invalidate(&[], &[&format!("{env}:u")], &[]), key)).await.unwrap_err(),
        "invalidate_prefixes",
    );
    denied(
        client.invalidate(keyed(invalidate(&[], &[], &["user:x"]), key)).await.unwrap_err(),
        "invalidate_tags",
    );
    client
        .invalidate(keyed(invalidate(&[], &[&format!("{env}:routing.queue:")], &[]), key))
        .await
        .expect("its own namespace");
    let watch = WatchRequest { kinds: vec!["user".into()], ..Default::default() };
    denied(client.watch(keyed(watch, key)).await.unwrap_err(), "scope watch");

    let door = format!("http://{}/data-action", cx.http_addr);
    let resp = reqwest::Client::new()
        .post(&door)
        .bearer_auth(key)
        .json(&serde_json::json!({"kind": "user", "id": user_id(1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let text = resp.text().await.unwrap();
    assert!(text.contains("data_actions") && text.contains("PERMISSION_DENIED"), "{text}");
    assert_eq!(emu.counters().route("GET /api/v2/users/{id}"), 0, "no data action executed");
    let resp = reqwest::Client::new()
        .post(&door)
        .bearer_auth(key)
        .json(&serde_json::json!({"kind": "routing.queue", "id": queue_id(2)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_by_reloading_the_callers_without_a_restart() {
    let mut s = Scenario::new("rotate").configure(with_callers).start().await;
    let cx = s.cx();
    let mut client = cx.new_client().await;
    client.get(keyed(get_queue(&queue_id(1)), "routing-key")).await.unwrap();
    // Step 1: the new key is added beside the old one.
    let mut config = s.config();
    config.auth.callers[0].api_keys.push(hash_key("routing-key-2"));
    cx.running.as_ref().unwrap().reload_auth(&config.auth).unwrap();
    client.get(keyed(get_queue(&queue_id(1)), "routing-key")).await.unwrap();
    client.get(keyed(get_queue(&queue_id(1)), "routing-key-2")).await.unwrap();
    // Step 2: the old key is retired.
    config.auth.callers[0].api_keys.remove(0);
    cx.running.as_ref().unwrap().reload_auth(&config.auth).unwrap();
    let e = client.get(keyed(get_queue(&queue_id(1)), "routing-key")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    client.get(keyed(get_queue(&queue_id(1)), "routing-key-2")).await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_stop_at_the_callers_limit_and_other_callers_still_watch() {
    let mut s = Scenario::new("watchlimit")
        .configure(|c| {
            with_callers(c);
            c.limits.max_watch_streams_per_caller = 50;
            c.limits.max_watch_streams = 60;
        })
        .start()
        .await;
    let cx = s.cx();
    let mut client = cx.new_client().await;
    let req = || WatchRequest { kinds: vec!["routing.queue".into()], ..Default::default() };
    let mut open = Vec::new();
    let mut refused = None;
    for _ in 0..200 {
        match client.watch(keyed(req(), "routing-key")).await {
            Ok(stream) => open.push(stream.into_inner()),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert_eq!(open.len(), 50);
    let e = refused.expect("the 51st stream is refused");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_watch_streams_per_caller"), "{}", e.message());
    let running = cx.running.as_ref().unwrap();
    assert_eq!(running.watch_streams(), 50);
    let _admin = client.watch(keyed(req(), "admin-key")).await.expect("another caller still watches");
    // Closed streams free their slots.
    drop(open);
    assert!(
        wait_until(Duration::from_secs(5), || running.watch_streams() == 1).await,
        "{}",
        running.watch_streams()
    );
    client.watch(keyed(req(), "routing-key")).await.expect("a slot again");
    s.stop().await;
}

/// A CA and certificates it signs, written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let ca = params.self_signed(&ca_key).unwrap();
        let pki = Pki { dir: tempfile::tempdir().unwrap(), ca, ca_key };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A certificate for `sans` signed by the CA: (cert PEM, key PEM).
    fn issue(&self, sans: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }
}

fn write_server_cert(pki: &Pki, dir: &Path) {
    let (cert, key) = pki.issue(&["localhost"]);
    // Key first, then the certificate: a reload never sees a new
    // certificate with the old key.
    std::fs::write(dir.join("tls.key"), key).unwrap();
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
}

async fn tls_client(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<(String, String)>,
) -> Result<CacheClient<tonic::transport::Channel>, tonic::transport::Error> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(CacheClient::new(channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_served_plaintext_refused_and_a_rotated_certificate_served_without_restart() {
    let pki = Pki::new("cxcache test CA");
    let files = tempfile::tempdir().unwrap();
    write_server_cert(&pki, files.path());
    let (cert, key) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    let mut s = Scenario::new("tls")
        .instances(0)
        .configure(move |c| {
            c.tls.cert = Some(cert.clone());
            c.tls.key = Some(key.clone());
            c.tls.reload_interval = Duration::from_millis(100);
        })
        .start()
        .await;
    let running = cxcache::server::start(s.config()).await.expect("start with TLS");
    let addr = running.grpc_addr;

    let mut client = tls_client(addr, &pki.ca_pem(), None).await.expect("TLS with the CA");
    client.get(get_queue(&queue_id(1))).await.expect("Get over TLS");

    // Plaintext is refused.
    let plain = async {
        let mut c = CacheClient::connect(format!("http://{addr}")).await?;
        c.get(get_queue(&queue_id(1))).await.map_err(anyhow::Error::from)?;
        anyhow::Ok(())
    };
    assert!(tokio::time::timeout(Duration::from_secs(10), plain).await.map(|r| r.is_err()).unwrap_or(true));

    // The HTTP side too.
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).unwrap())
        .resolve("localhost", running.http_addr)
        .build()
        .unwrap();
    let ok =
        https.get(format!("https://localhost:{}/healthz", running.http_addr.port())).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(
        reqwest::get(format!("http://{}/healthz", running.http_addr)).await.is_err(),
        "plaintext HTTP refused"
    );

    // Rotation: a certificate from a new CA replaces the files; new
    // connections trusting only the new CA succeed, without a restart.
    let next = Pki::new("cxcache rotated CA");
    assert!(tls_client(addr, &next.ca_pem(), None).await.is_err(), "not yet rotated");
    write_server_cert(&next, files.path());
    let rotated = wait_until_async(Duration::from_secs(10), || async {
        match tls_client(addr, &next.ca_pem(), None).await {
            Ok(mut c) => c.get(get_queue(&queue_id(1))).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(rotated, "the rotated certificate is served");
    // The connection opened before the rotation still works.
    client.get(get_queue(&queue_id(1))).await.expect("old connection");
    running.shutdown().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate_and_names_the_caller_by_its_san() {
    let pki = Pki::new("cxcache mTLS CA");
    let files = tempfile::tempdir().unwrap();
    write_server_cert(&pki, files.path());
    let (cert, key, ca) = (files.path().join("tls.crt"), files.path().join("tls.key"), pki.path("ca.pem"));
    let mut s = Scenario::new("mtls")
        .instances(0)
        .configure(move |c| {
            c.tls.cert = Some(cert.clone());
            c.tls.key = Some(key.clone());
            c.tls.client_ca = Some(ca.clone());
            c.auth.callers = vec![CallerSettings {
                name: "routing-svc".into(),
                tls_san: vec!["routing-svc.test".into()],
                scopes: Scopes { get: vec!["routing.*".into()], ..Scopes::default() },
                ..CallerSettings::default()
            }];
        })
        .start()
        .await;
    let running = cxcache::server::start(s.config()).await.expect("start with mTLS");
    let addr = running.grpc_addr;

    let without = async {
        let mut c = tls_client(addr, &pki.ca_pem(), None).await?;
        c.get(get_queue(&queue_id(1))).await?;
        anyhow::Ok(())
    };
    assert!(without.await.is_err(), "no client certificate: refused");

    let mut client = tls_client(addr, &pki.ca_pem(), Some(pki.issue(&["routing-svc.test"]))).await.unwrap();
    client.get(get_queue(&queue_id(1))).await.expect("the SAN names routing-svc");
    let e = client.get(user(1)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "scopes apply: {e:?}");

    // A certificate the CA signed, naming no caller: UNAUTHENTICATED.
    let mut stranger = tls_client(addr, &pki.ca_pem(), Some(pki.issue(&["stranger.test"]))).await.unwrap();
    assert_eq!(stranger.get(get_queue(&queue_id(1))).await.unwrap_err().code(), Code::Unauthenticated);
    running.shutdown().await.unwrap();
    s.stop().await;
}

async fn wait_until_async<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A standalone `redis-server` serving TLS only, with certificates of `pki`.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start(pki: &Pki, auth_clients: &str) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pki.issue(&["localhost", "127.0.0.1"]);
        std::fs::write(dir.path().join("redis.crt"), cert).unwrap();
        std::fs::write(dir.path().join("redis.key"), key).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let p = |n: &str| dir.path().join(n).display().to_string();
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-cert-file", &p("redis.crt"), "--tls-key-file", &p("redis.key")])
            .args(["--tls-ca-cert-file", &pki.path("ca.pem").display().to_string()])
            .args(["--tls-auth-clients", auth_clients, "--save", "", "--appendonly", "no"])
            .args(["--dir", &dir.path().display().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (with TLS support) on PATH");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis { child, port, _dir: dir }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_talks_tls_to_a_rediss_server_and_never_downgrades() {
    let pki = Pki::new("cxcache redis CA");
    let redis = TlsRedis::start(&pki, "yes");
    let client_files = tempfile::tempdir().unwrap();
    let (cert, key) = pki.issue(&["cxcache.test"]);
    let (cert_path, key_path) = (client_files.path().join("c.crt"), client_files.path().join("c.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let mut s = Scenario::new("rediss").instances(0).start().await;
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let tls_config = |with_ca: bool, with_cert: bool| {
        let mut c = s.config();
        c.redis.url = Some(url.clone());
        c.redis.connect_timeout = Duration::from_secs(3);
        if with_ca {
            c.redis.tls_ca = Some(pki.path("ca.pem"));
        }
        if with_cert {
            c.redis.tls_cert = Some(cert_path.clone());
            c.redis.tls_key = Some(key_path.clone());
        }
        c
    };

    let running = cxcache::server::start(tls_config(true, true)).await.expect("start on rediss://");
    let mut client = connect(running.grpc_addr).await;
    let first = client.get(get_queue(&queue_id(1))).await.unwrap().into_inner();
    assert_eq!(first.source(), cxcache::proto::v1::Source::Upstream);
    // Past the in-process tier, the value comes from the TLS Redis.
    let mut second = client.get(get_queue(&queue_id(2))).await.unwrap().into_inner();
    assert_eq!(second.source(), cxcache::proto::v1::Source::Upstream);
    for _ in 0..50 {
        second = client.get(get_queue(&queue_id(2))).await.unwrap().into_inner();
        if second.source() == cxcache::proto::v1::Source::Store {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(second.source(), cxcache::proto::v1::Source::Store, "served from the TLS Redis");
    running.shutdown().await.unwrap();

    // The server's certificate is checked: the system roots do not know our CA.
    assert!(cxcache::server::start(tls_config(false, false)).await.is_err(), "untrusted certificate refused");
    // The server requires client certificates: without one, no connection.
    assert!(cxcache::server::start(tls_config(true, false)).await.is_err(), "no client certificate refused");
    // Plaintext to the TLS port does not work either (no downgrade path).
    let mut plain = tls_config(false, false);
    plain.redis.url = Some(format!("redis://127.0.0.1:{}", redis.port));
    assert!(cxcache::server::start(plain).await.is_err(), "plaintext to a TLS-only Redis fails");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_concurrency_limit_are_shed_and_a_get_ends_at_the_request_timeout() {
    let mut s = Scenario::new("shed")
        .configure(|c| {
            c.limits.max_concurrent_requests = 2;
            c.limits.request_timeout = Duration::from_secs(2);
        })
        .start()
        .await;
    let (cx, emu) = (s.cx(), s.emu());
    emu.inject_fault(held(queue_path(&queue_id(1))));
    emu.inject_fault(held(queue_path(&queue_id(2))));
    let started = std::time::Instant::now();
    let busy: Vec<_> = [1, 2]
        .map(|n| {
            let mut c = cx.client.clone();
            tokio::spawn(async move { c.get(get_queue(&queue_id(n))).await })
        })
        .into_iter()
        .collect();
    assert!(wait_until(Duration::from_secs(5), || emu.held_count() == 2).await, "two Gets in flight");
    let e = cx.new_client().await.get(get_queue(&queue_id(3))).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "shed at once: {e:?}");
    for b in busy {
        let e = b.await.unwrap().unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
        assert!(e.message().contains("request_timeout"), "{}", e.message());
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(5), "{took:?}");
    emu.release_held();
    emu.clear_faults();
    cx.client.clone().get(get_queue(&queue_id(3))).await.expect("capacity again");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_callers_of_the_config_file() {
    let mut s = Scenario::new("sighup").instances(0).start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cxcache.toml");
    let write = |key: &str| {
        let text = format!(
            "[[auth.callers]]\nname = \"svc\"\napi_keys = [\"{}\"]\nscopes = {{ get = [\"routing.*\"] }}\n",
            hash_key(key)
        );
        std::fs::write(&file, text).unwrap();
    };
    write("first-key");
    let mut process = s.process(&["--config", &file.display().to_string()], &[]);
    let mut client = connect(process.grpc_addr).await;
    client.get(keyed(get_queue(&queue_id(1)), "first-key")).await.expect("first key");
    write("second-key");
    process.signal("HUP");
    let reloaded = wait_until_async(Duration::from_secs(10), || {
        let mut c = client.clone();
        async move { c.get(keyed(get_queue(&queue_id(1)), "second-key")).await.is_ok() }
    })
    .await;
    assert!(reloaded, "the second key works after SIGHUP: {:?}", process.log_lines());
    let e = client.get(keyed(get_queue(&queue_id(1)), "first-key")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(process.terminate(Duration::from_secs(20)).is_some_and(|st| st.success()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_callers_metrics_behind_auth_and_list_limits() {
    let secret = "0123456789abcdef0123456789abcdef";
    let mut s = Scenario::new("jwt")
        .configure(move |c| {
            with_callers(c);
            c.auth.issuers = vec![cxcache::config::IssuerSettings {
                issuer: "https://idp.test".into(),
                audience: Some("cxcache".into()),
                secret: Some(cxcache::config::Secret::new(secret)),
                ..Default::default()
            }];
            c.auth.callers[0].jwt = vec![cxcache::config::JwtIdentity {
                issuer: "https://idp.test".into(),
                subject: Some("routing".into()),
            }];
            c.auth.metrics_need_caller = true;
            c.limits.max_list_entries = 3;
        })
        .start()
        .await;
    let cx = s.cx();
    let mut client = cx.new_client().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let sign = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let token = sign(
        serde_json::json!({"iss": "https://idp.test", "aud": "cxcache", "sub": "routing", "exp": now + 60}),
    );
    client.get(keyed(get_queue(&queue_id(1)), &token)).await.expect("a JWT names routing-svc");
    let e = client.get(keyed(user(1), &token)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "its scopes apply: {e:?}");
    let expired = sign(
        serde_json::json!({"iss": "https://idp.test", "aud": "cxcache", "sub": "routing", "exp": now - 120}),
    );
    assert_eq!(
        client.get(keyed(get_queue(&queue_id(1)), &expired)).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let metrics = format!("http://{}/metrics", cx.http_addr);
    assert_eq!(reqwest::get(&metrics).await.unwrap().status(), 401);
    let ok = reqwest::Client::new().get(&metrics).bearer_auth("admin-key").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.unwrap().contains("cxcache_refused_total"));

    let too_many = invalidate(&[], &[], &["queue:1", "queue:2", "queue:3", "queue:4"]);
    let e = client.invalidate(keyed(too_many, "admin-key")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("max_list_entries"), "{}", e.message());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_caller_spending_its_miss_budget_is_refused_while_others_still_miss() {
    let mut s = Scenario::new("budget")
        .configure(|c| {
            with_callers(c);
            // routing-svc: 5 upstream calls back to back, then one a minute.
            c.auth.callers[0].misses_per_minute = 1;
            c.auth.callers[0].miss_burst = 5;
            c.auth.callers[0].scopes.force_refresh = true;
        })
        .start()
        .await;
    let (cx, emu) = (s.cx(), s.emu());
    let mut client = cx.new_client().await;
    for n in 0..5 {
        client.get(keyed(get_queue(&queue_id(n)), "routing-key")).await.expect("within the burst");
    }
    let e = client.get(keyed(get_queue(&queue_id(10)), "routing-key")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("miss budget") && e.message().contains("routing-svc"), "{}", e.message());
    let wait = details(&e).retry_info().and_then(|r| r.retry_delay).expect("RetryInfo");
    assert!(wait > Duration::from_secs(30) && wait <= Duration::from_secs(60), "{wait:?}");
    let forced = GetRequest {
        freshness: Some(Freshness { force_refresh: true, ..Default::default() }),
        ..get_queue(&queue_id(1))
    };
    assert_eq!(client.get(keyed(forced, "routing-key")).await.unwrap_err().code(), Code::ResourceExhausted);
    assert_eq!(emu.counters().route(QUEUE_ROUTE), 5, "the noisy caller's refused Gets cost no upstream call");
    // Another caller's misses still go upstream.
    for n in 10..15 {
        let r = client.get(keyed(get_queue(&queue_id(n)), "admin-key")).await.expect("admin has no budget");
        assert_eq!(r.into_inner().source(), cxcache::proto::v1::Source::Upstream);
    }
    assert_eq!(emu.counters().route(QUEUE_ROUTE), 10);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_reaps_the_watch_streams_of_a_dead_connection() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut s = Scenario::new("keepalive")
        .configure(|c| {
            c.limits.keepalive_interval = Duration::from_millis(300);
            c.limits.keepalive_timeout = Duration::from_millis(300);
        })
        .start()
        .await;
    let cx = s.cx();
    // A proxy that can go silent: the client's side of the connection stays
    // open but nothing passes any more (a peer that vanished without a FIN).
    let frozen = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let (upstream, f) = (cx.grpc_addr, frozen.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, f.clone()));
            tokio::spawn(pump(sr, cw, f.clone()));
        }
    });
    let mut client = connect(proxy).await;
    let _stream = client
        .watch(WatchRequest { kinds: vec!["routing.queue".into()], ..Default::default() })
        .await
        .expect("watch through the proxy")
        .into_inner();
    let running = cx.running.as_ref().unwrap();
    assert_eq!(running.watch_streams(), 1);
    frozen.store(true, Ordering::Relaxed);
    let reaped = wait_until(Duration::from_secs(10), || running.watch_streams() == 0).await;
    assert!(reaped, "the dead connection's stream is reaped by keepalive");
    s.stop().await;
}

/// Copies `r` to `w` until `frozen`, then swallows everything.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(std::sync::atomic::Ordering::Relaxed) {
            continue;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Resident memory of this process (the in-process server and the test).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).expect("resident pages") * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watch_streams_from_one_caller_stop_at_its_limit_with_memory_bounded() {
    let mut s = Scenario::new("watch10k")
        .alone() // measures this process's memory
        .configure(|c| {
            with_callers(c);
            c.limits.max_watch_streams_per_caller = 1000;
        })
        .start()
        .await;
    let cx = s.cx();
    let running = cx.running.as_ref().unwrap();
    // Ten connections, as a fleet of pods of one service would open.
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(cx.new_client().await);
    }
    let req = || WatchRequest { kinds: vec!["routing.queue".into()], ..Default::default() };
    let before = rss_bytes();
    let mut open = Vec::new();
    let mut refused = 0usize;
    let mut rss_at_limit = 0;
    for round in 0..100 {
        let calls = (0..100).map(|i| {
            let mut c = clients[i % clients.len()].clone();
            async move { c.watch(keyed(req(), "routing-key")).await }
        });
        for result in futures::future::join_all(calls).await {
            match result {
                Ok(stream) => open.push(stream.into_inner()),
                Err(e) => {
                    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                    assert!(e.message().contains("max_watch_streams_per_caller"), "{}", e.message());
                    refused += 1;
                }
            }
        }
        if round == 9 {
            rss_at_limit = rss_bytes();
        }
    }
    assert_eq!((open.len(), refused), (1000, 9000), "exactly the limit is served");
    assert_eq!(running.watch_streams(), 1000);
    let after = rss_bytes();
    let per_stream = rss_at_limit.saturating_sub(before) / 1000;
    let refusals = after.saturating_sub(rss_at_limit);
    eprintln!(
        "watch10k: {} KiB per open stream (server and client), {} KiB more over 9000 refusals",
        per_stream / 1024,
        refusals / 1024
    );
    assert!(per_stream < 64 * 1024, "an open stream costs {per_stream} bytes");
    assert!(refusals < 32 << 20, "refused streams hold no memory: +{refusals} bytes");
    // The streams work, and closing them frees every slot.
    let mut admin = cx.new_client().await;
    let first = open[999].message().await.unwrap().unwrap();
    assert_eq!(first.r#type(), cxcache::proto::v1::watch_event::Type::Heartbeat);
    drop(open);
    assert!(
        wait_until(Duration::from_secs(10), || running.watch_streams() == 0).await,
        "{}",
        running.watch_streams()
    );
    admin.watch(keyed(req(), "routing-key")).await.expect("the caller watches again");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l1_hit_is_served_past_an_empty_miss_budget_it_does_not_spend() {
    let mut s = Scenario::new("budgethit")
        .configure(|c| {
            with_callers(c);
            c.auth.callers[0].misses_per_minute = 1;
            c.auth.callers[0].miss_burst = 2;
        })
        .start()
        .await;
    let (cx, emu) = (s.cx(), s.emu());
    let mut client = cx.new_client().await;
    let source = |r: tonic::Response<cxcache::proto::v1::GetResponse>| r.into_inner().source();
    let get = |n: usize| keyed(get_queue(&queue_id(n)), "routing-key");
    use cxcache::proto::v1::Source;
    assert_eq!(source(client.get(get(1)).await.unwrap()), Source::Upstream, "one miss");
    assert_eq!(source(client.get(get(1)).await.unwrap()), Source::Store, "a store hit fills L1");
    assert_eq!(source(client.get(get(2)).await.unwrap()), Source::Upstream, "the second miss");
    // The budget is spent: another miss is refused...
    let e = client.get(get(3)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // ...but what the instance holds costs nothing and is served.
    for _ in 0..20 {
        assert_eq!(source(client.get(get(1)).await.expect("an L1 hit")), Source::L1);
    }
    assert_eq!(emu.counters().route(QUEUE_ROUTE), 2);
    s.stop().await;
}
