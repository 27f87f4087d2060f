//! Shared test harness for the end-to-end suites: a real Redis Cluster,
//! the Genesys emulator and cxcache instances on free ports, each started
//! and awaited by readiness (never by sleeping), and stopped on drop.
//!
//! - [`Scenario`]: what one test needs (cluster, emulator, instances,
//!   clients), started in one expression as a [`Scene`]. Every test of the
//!   suite goes through one: the suite is one binary, its tests share the
//!   process, and the scene holds the test's turn ([`Scenario::alone`]).
//! - [`RedisCluster`]: 3 masters + 3 replicas of real `redis-server`
//!   processes (through `scripts/redis-cluster.sh`). [`redis_url`] reuses the
//!   cluster `.ci/run` started (`CXCACHE_TEST_REDIS_URL`) or one the test
//!   process starts and shares.
//! - [`emulator`]: the Genesys emulator in-process on port 0.
//! - [`Instance`]: a cxcache server in-process on port 0, with a gRPC client.
//! - [`ProcessInstance`]: the `cxcache` binary as a process of its own.
//! - [`Backend`]: where a scenario's instances keep their entries.
//! - [`faults`]: what the fault-injection suite does to a fleet (one
//!   instance cut off a Redis Cluster through a rewriting proxy, …);
//!   [`checker`]: the racing read-your-invalidation checker it runs meanwhile.

pub mod checker;
pub mod faults;
mod scenario;
pub use scenario::{redis_url, Scenario, Scene};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cxcache::config::{Config, Credential, Secret};
use cxcache::proto::v1::cache_client::CacheClient;
use cxcache::proto::v1::{watch_event, GetRequest, GetResponse, InvalidateRequest, WatchEvent, WatchRequest};
use fred::prelude::{Builder, ClientLike, Config as RedisConfig, KeysInterface};
use genesys_emulator::{EmulatorConfig, EmulatorHandle, Fault};
use tonic::transport::Channel;
use tonic::Streaming;

/// Root of the repository (scripts live there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// A 3-master / 3-replica Redis Cluster on loopback, stopped on drop.
pub struct RedisCluster {
    dir: tempfile::TempDir,
    pub url: String,
    pub first_port: u16,
}

impl RedisCluster {
    /// Starts a cluster on a free block of ports; a start that loses a port
    /// race to a parallel test is cleaned up and retried on another block.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_node_timeout(None)
    }

    /// [`RedisCluster::start`] with its own `cluster-node-timeout` (how
    /// long a dead master goes unnoticed; the script's default is 2 s).
    pub fn start_with_node_timeout(node_timeout: Option<Duration>) -> anyhow::Result<Self> {
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(node_timeout) {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last_error = e.to_string(),
            }
        }
        anyhow::bail!("starting the Redis cluster failed 3 times: {last_error}")
    }

    fn try_start(node_timeout: Option<Duration>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("cxcache-redis-").tempdir()?;
        let mut start = Command::new("bash");
        start.arg(repo_root().join("scripts/redis-cluster.sh")).arg("start").arg(dir.path());
        if let Some(t) = node_timeout {
            start.env("CXCACHE_CLUSTER_NODE_TIMEOUT_MS", t.as_millis().to_string());
        }
        let out = start.output()?;
        if !out.status.success() {
            let _ = Command::new("bash")
                .arg(repo_root().join("scripts/redis-cluster.sh"))
                .arg("stop")
                .arg(dir.path())
                .status();
            anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr));
        }
        let url = String::from_utf8(out.stdout)?.trim().to_string();
        let first_port = std::fs::read_to_string(dir.path().join("first_port"))?.trim().parse()?;
        Ok(RedisCluster { dir, url, first_port })
    }

    /// Ports of the six nodes.
    pub fn ports(&self) -> Vec<u16> {
        (0..6).map(|i| self.first_port + i).collect()
    }

    fn script(&self, args: &[&str]) -> anyhow::Result<()> {
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/redis-cluster.sh"))
            .args(args.iter().take(1))
            .arg(self.dir.path())
            .args(args.iter().skip(1))
            .status()?;
        anyhow::ensure!(status.success(), "redis-cluster.sh {args:?} failed");
        Ok(())
    }

    /// The port of the master serving `slot`, from `CLUSTER NODES`.
    pub fn master_for_slot(&self, slot: u16) -> Option<u16> {
        Self::master_for_slot_via(self.first_port, slot)
    }

    /// The port of the master serving `slot` as node `port` sees it (a
    /// master it flags as failed does not count).
    pub fn master_for_slot_via(port: u16, slot: u16) -> Option<u16> {
        let out =
            Command::new("redis-cli").args(["-p", &port.to_string(), "cluster", "nodes"]).output().ok()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            for range in &fields[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) {
                    if (lo..=hi).contains(&slot) {
                        let port = fields[1].split('@').next()?.rsplit(':').next()?;
                        return port.parse().ok();
                    }
                }
            }
        }
        None
    }

    /// SIGKILLs one node.
    pub fn kill_node(&self, port: u16) -> anyhow::Result<()> {
        self.script(&["kill", &port.to_string()])
    }

    /// Starts a killed node again (it rejoins as a replica).
    pub fn restart_node(&self, port: u16) -> anyhow::Result<()> {
        self.script(&["restart", &port.to_string()])
    }

    /// Whether every node reports `cluster_state:ok`, waiting up to `limit`.
    pub fn wait_ok(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self.ports().iter().all(|p| {
                Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            });
            if ok || Instant::now() >= deadline {
                return ok;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = self.script(&["stop"]);
    }
}

/// A key namespace unique to this test, so tests can share one cluster.
pub fn unique_env(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!(
        "t{}{}{}",
        std::process::id(),
        n,
        name.chars().filter(char::is_ascii_alphanumeric).collect::<String>()
    )
}

/// The Genesys emulator, in-process on a free port.
pub async fn emulator(config: EmulatorConfig) -> EmulatorHandle {
    genesys_emulator::start(config, ([127, 0, 0, 1], 0).into()).await.expect("start emulator")
}

/// Where a test's cxcache instances keep their entries.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The embedded in-memory store.
    Memory,
    /// A Redis (cluster) URL.
    Redis(String),
}

/// A config for an instance on free ports, against `emulator`.
pub fn config(env: &str, backend: &Backend, emulator: &EmulatorHandle) -> Config {
    let mut c = Config {
        env: env.to_string(),
        grpc_addr: ([127, 0, 0, 1], 0).into(),
        http_addr: ([127, 0, 0, 1], 0).into(),
        ..Config::default()
    };
    c.redis.url = match backend {
        Backend::Memory => None,
        Backend::Redis(url) => Some(url.clone()),
    };
    c.upstream.base_url = Some(emulator.base_url());
    c.upstream.credentials =
        vec![Credential { client_id: "cxcache-demo".into(), client_secret: Secret::new("demo-secret") }];
    // Short test bursts against the emulator's 300 calls/min: a burst of 100
    // leaves 200/min steady, still under the budget in any window.
    c.upstream.rate_limit.burst = 100;
    // Retries keep their shape (doubling, capped, jittered) at test speed.
    c.upstream.retry.base = Duration::from_millis(20);
    c.upstream.retry.cap = Duration::from_millis(160);
    c.upstream.retry.jitter = Duration::from_millis(10);
    // Tests count the upstream calls they cause: refresh ahead (on by
    // default) would add its own; the tests of it turn it on.
    c.cache.refresh_ahead.hot_requests = 0;
    c
}

/// A running cxcache server with a connected client.
pub struct Instance {
    pub running: Option<cxcache::server::Running>,
    pub client: CacheClient<Channel>,
    pub grpc_addr: std::net::SocketAddr,
    pub http_addr: std::net::SocketAddr,
}

impl Instance {
    pub async fn start(config: Config) -> Instance {
        let running = cxcache::server::start(config).await.expect("start cxcache");
        let grpc_addr = running.grpc_addr;
        let http_addr = running.http_addr;
        let client = connect(grpc_addr).await;
        Instance { running: Some(running), client, grpc_addr, http_addr }
    }

    /// A fresh client (own connection) to this instance.
    pub async fn new_client(&self) -> CacheClient<Channel> {
        connect(self.grpc_addr).await
    }

    pub async fn get(&self, req: GetRequest) -> Result<GetResponse, tonic::Status> {
        self.client.clone().get(req).await.map(|r| r.into_inner())
    }

    /// A Get with a deadline (`grpc-timeout`) of `limit`.
    pub async fn get_within(&self, req: GetRequest, limit: Duration) -> Result<GetResponse, tonic::Status> {
        let mut request = tonic::Request::new(req);
        request.set_timeout(limit);
        self.client.clone().get(request).await.map(|r| r.into_inner())
    }

    /// A Watch stream on a connection of its own.
    pub async fn watch(&self, req: WatchRequest) -> Streaming<WatchEvent> {
        let mut client = self.new_client().await;
        client.watch(req).await.expect("watch").into_inner()
    }

    /// The text of this instance's `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let url = format!("http://{}/metrics", self.http_addr);
        reqwest::get(url).await.expect("GET /metrics").text().await.expect("/metrics body")
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }
}

/// Connects, retrying briefly: the listener is bound before `start` returns,
/// so this succeeds at once unless something is badly wrong.
pub async fn connect(addr: std::net::SocketAddr) -> CacheClient<Channel> {
    let url = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match CacheClient::connect(url.clone()).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Lets `actions` (action id → `{"cacheable": bool}`) of the data-action
/// kind `integrations.action.execute` run; the catalog allows none by default.
pub fn allow_actions(config: &mut Config, actions: serde_json::Value) {
    let kind = serde_json::json!({
        "method": "POST",
        "path": "/api/v2/integrations/actions/{id}/execute",
        "key": "body",
        "ttl_class": "realtime",
        "tags": ["action:{id}"],
        "executes": true,
        "actions": actions,
    });
    config.catalog.insert("integrations.action.execute".into(), serde_json::from_value(kind).unwrap());
}

/// A queue Get request.
pub fn get_queue(id: &str) -> GetRequest {
    GetRequest { kind: "routing.queue".into(), id: id.into(), ..Default::default() }
}

/// The emulator's path of one queue (a fault's `path_prefix`).
pub fn queue_path(id: &str) -> String {
    format!("/api/v2/routing/queues/{id}")
}

/// Every upstream answer under `prefix` delayed by `ms`.
pub fn slow(prefix: impl Into<String>, ms: u64) -> Fault {
    Fault { path_prefix: prefix.into(), latency: Some(Duration::from_millis(ms)), ..Fault::default() }
}

/// Every upstream answer under `prefix` held open until released.
pub fn held(prefix: impl Into<String>) -> Fault {
    Fault { path_prefix: prefix.into(), hold: true, ..Fault::default() }
}

/// Every upstream answer under `prefix` replaced by `status`, until cleared.
pub fn failing(prefix: impl Into<String>, status: u16) -> Fault {
    Fault { path_prefix: prefix.into(), status: Some(status), ..Fault::default() }
}

/// An Invalidate of exact keys, prefixes and tags, with reason "test".
pub fn invalidate(keys: &[&str], prefixes: &[&str], tags: &[&str]) -> InvalidateRequest {
    InvalidateRequest {
        keys: keys.iter().map(|s| s.to_string()).collect(),
        prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
        reason: "test".into(),
    }
}

/// Next Watch message of any type (HEARTBEAT included) within `limit`.
pub async fn next_message(stream: &mut Streaming<WatchEvent>, limit: Duration) -> Option<WatchEvent> {
    use tokio_stream::StreamExt;
    tokio::time::timeout(limit, stream.next()).await.ok().flatten().map(|r| r.expect("watch item"))
}

/// Next Watch event within `limit`, skipping HEARTBEATs.
pub async fn next_event(stream: &mut Streaming<WatchEvent>, limit: Duration) -> Option<WatchEvent> {
    let deadline = Instant::now() + limit;
    loop {
        let ev = next_message(stream, deadline.saturating_duration_since(Instant::now())).await?;
        if ev.r#type() != watch_event::Type::Heartbeat {
            return Some(ev);
        }
    }
}

/// Next Watch event of `ty` for `key` within `limit`, skipping others.
pub async fn wait_event(
    stream: &mut Streaming<WatchEvent>,
    ty: watch_event::Type,
    key: &str,
    limit: Duration,
) -> Option<WatchEvent> {
    let deadline = Instant::now() + limit;
    while let Some(ev) = next_event(stream, deadline.saturating_duration_since(Instant::now())).await {
        if ev.r#type() == ty && ev.key == key {
            return Some(ev);
        }
    }
    None
}

/// Background tasks that each Get one request in a loop on a client of
/// their own, keeping fetches in flight, until [`Readers::stop`].
pub struct Readers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Readers {
    pub fn spawn(clients: Vec<CacheClient<Channel>>, req: GetRequest) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = clients
            .into_iter()
            .map(|mut client| {
                let (stop, req) = (stop.clone(), req.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = client.get(req.clone()).await;
                    }
                })
            })
            .collect();
        Readers { stop, tasks }
    }

    /// Stops every reader and waits for it (a panicked reader fails the test).
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
    }
}

/// A plain fred client for asserting on what is in Redis.
pub async fn redis_client(url: &str) -> fred::prelude::Client {
    let client =
        Builder::from_config(RedisConfig::from_url(url).expect("redis url")).build().expect("client");
    client.init().await.expect("connect redis");
    client
}

/// Every store key (`cx:{env:…`) of `env` in the cluster, scanning each master.
pub async fn keys_of_env(client: &fred::prelude::Client, env: &str) -> Vec<String> {
    keys_matching(client, &format!("cx:{{{env}:*")).await
}

/// Every key matching `pattern` in the cluster, scanning each master.
pub async fn keys_matching(client: &fred::prelude::Client, pattern: &str) -> Vec<String> {
    use fred::types::scan::Scanner;
    use futures::StreamExt;
    let pattern = pattern.to_string();
    let mut keys = Vec::new();
    let mut scan = client.scan_cluster(pattern, Some(500), None);
    while let Some(page) = scan.next().await {
        let mut page = page.expect("scan");
        if let Some(results) = page.take_results() {
            keys.extend(results.into_iter().filter_map(|k| k.into_string()));
        }
    }
    keys
}

/// Milliseconds to live of `key` (-1: no expiry, -2: absent).
pub async fn pttl(client: &fred::prelude::Client, key: &str) -> i64 {
    client.pttl(key).await.expect("pttl")
}

/// Waits until `cond` holds, polling every 10 ms, at most `limit`.
pub async fn wait_until<F: FnMut() -> bool>(limit: Duration, mut cond: F) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// The google.rpc details of a status.
pub fn details(status: &tonic::Status) -> tonic_types::ErrorDetails {
    use tonic_types::StatusExt;
    status.get_error_details()
}

/// A cxcache binary running as its own process (for tests that kill one).
/// Build it first (`cargo build -p cxcache-server`; the test command does).
pub struct ProcessInstance {
    child: std::process::Child,
    pub grpc_addr: std::net::SocketAddr,
    pub http_addr: std::net::SocketAddr,
    /// The process's stderr (its logs), kept in a file.
    log: tempfile::NamedTempFile,
}

/// Path of the built `cxcache` binary (the test command builds it first:
/// `cargo build -p cxcache-server`); panics when it is not there.
pub fn cxcache_binary() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let bin = target.join("debug").join("cxcache");
    assert!(bin.exists(), "{} not built: run `cargo build -p cxcache-server`", bin.display());
    bin
}

/// Command-line arguments for a `cxcache` process in namespace `env` in
/// front of the emulator at `upstream`, with the demo credential.
pub fn process_args(env: &str, upstream: &str) -> Vec<String> {
    [
        "--env",
        env,
        "--upstream-url",
        upstream,
        "--client-id",
        "cxcache-demo",
        "--client-secret",
        "demo-secret",
    ]
    .map(str::to_string)
    .to_vec()
}

impl ProcessInstance {
    /// Starts the binary on free ports with `args` and `CXCACHE_*` `envs`,
    /// and waits (bounded) for its listening line.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> ProcessInstance {
        use std::io::{BufRead, BufReader};
        let bin = cxcache_binary();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut child = Command::new(bin)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(args)
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .expect("spawn cxcache");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("cxcache listening line");
        let field = |name: &str| -> std::net::SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        ProcessInstance { grpc_addr: field("grpc="), http_addr: field("http="), child, log }
    }

    /// The log lines written so far.
    pub fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.log.path()).unwrap_or_default().lines().map(str::to_string).collect()
    }

    /// Sends `signal` (e.g. `HUP`) to the process.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status();
    }

    /// SIGKILL: no graceful anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (bounded wait).
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ProcessInstance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A distinct analytics query per (`tag`, `n`): each a miss, each one
/// upstream call (the tag keeps tests' keys apart).
pub fn distinct_analytics(tag: &str, n: usize) -> GetRequest {
    GetRequest {
        kind: "analytics.conversations.aggregates".into(),
        body_json: serde_json::json!({
            "interval": "2020-01-01T00:00:00Z/2020-01-01T01:00:00Z",
            "metrics": ["nOffered"],
            "filter": {"type": "and", "predicates": [{"dimension": "queueId", "value": format!("{tag}{n}")}]},
        })
        .to_string(),
        ..Default::default()
    }
}

/// Wall-clock milliseconds (to compare with the emulator's request log).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}
