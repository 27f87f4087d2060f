//! SIGTERM to the real `cxcache` binary while Gets are in flight: the
//! listener closes, every call already accepted is answered OK, Watch
//! streams end cleanly, the process exits 0, and the trace exporter flushes
//! to the collector on the way out.
//!
//! The binary is the one the test command built (`scripts/test.sh` builds
//! the workspace first): `$CARGO_TARGET_DIR/debug/cxcache` or
//! `<repo>/target/debug/cxcache`.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cxcache::proto::v1::{Source, WatchRequest};
use genesys_emulator::{queue_id, Fault};
use harness::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_stream::wrappers::TcpListenerStream;

/// A real OTLP/gRPC trace collector that remembers the span names it got.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let names = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .map(|s| s.name);
        self.spans.lock().unwrap().extend(names);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Serves on a free loopback port; returns its address.
    async fn start(&self) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        addr
    }

    fn count(&self, name: &str) -> usize {
        self.spans.lock().unwrap().iter().filter(|n| *n == name).count()
    }
}

/// Starts the binary in namespace `env` against `upstream` (`None`: its
/// bundled emulator); returns it with its gRPC address.
async fn spawn_cxcache(
    env: &str,
    upstream: Option<&str>,
    extra_env: &[(&str, String)],
) -> (Child, std::net::SocketAddr) {
    let upstream_args = match upstream {
        Some(url) => {
            vec!["--upstream-url", url, "--client-id", "cxcache-demo", "--client-secret", "demo-secret"]
        }
        None => vec![],
    };
    let mut child = Command::new(cxcache_binary())
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--env", env])
        .args(upstream_args)
        .envs(extra_env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn cxcache");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("cxcache printed its addresses in time")
        .unwrap()
        .expect("a line on stdout");
    // `cxcache listening grpc=ADDR http=ADDR`
    let grpc = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .unwrap_or_else(|| panic!("unexpected first line: {line}"));
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, grpc.parse().unwrap())
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success(), "kill -TERM {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_gets_and_exits_zero() {
    let mut s = Scenario::new("sigterm").instances(0).start().await;
    let emu = s.emu();
    // A real OTLP collector: the spans of the drained calls must reach it
    // before the process exits (batched spans are flushed on shutdown).
    let collector = Collector::default();
    let collector_addr = collector.start().await;
    let (child, grpc) = spawn_cxcache(
        &s.env,
        Some(&emu.base_url()),
        &[("CXCACHE_TELEMETRY__OTLP_ENDPOINT", format!("http://{collector_addr}"))],
    )
    .await;
    let client = connect(grpc).await;
    // A Watch subscriber: its stream must end cleanly (OK), not hang the exit.
    let mut watch = client
        .clone()
        .watch(WatchRequest { kinds: vec!["routing.queue".into()], ..Default::default() })
        .await
        .expect("Watch opened")
        .into_inner();

    // Bounded load: 24 Gets on distinct keys, each held upstream until released.
    const IN_FLIGHT: usize = 24;
    emu.inject_fault(Fault { hold: true, count: 0, ..Default::default() });
    let calls: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let mut client = client.clone();
            let req = get_queue(&queue_id(i));
            tokio::spawn(async move { client.get(req).await.map(|r| r.into_inner()) })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || emu.held_count() == IN_FLIGHT).await,
        "all {IN_FLIGHT} Gets reached the upstream (held: {})",
        emu.held_count()
    );

    sigterm(&child);
    // Draining: new connections are refused once the listener is closed...
    let closed = async {
        while TcpStream::connect(grpc).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), closed).await.expect("listener closed after SIGTERM");
    // ...while the accepted calls are still waiting on the upstream.
    assert_eq!(emu.held_count(), IN_FLIGHT, "in-flight calls still pending while draining");
    emu.release_held();
    emu.clear_faults();

    for call in calls {
        let reply = call.await.unwrap().expect("an in-flight Get failed during shutdown");
        assert_eq!(reply.source(), Source::Upstream);
    }
    let watch_end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.message().await {
                Ok(Some(_event)) => continue,
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    })
    .await
    .expect("the Watch stream ended after SIGTERM");
    assert!(watch_end.is_ok(), "Watch ended with an error: {watch_end:?}");
    let mut child = child;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("cxcache exited after draining")
        .unwrap();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");

    // Every drained Get's span was flushed to the collector on the way out
    // (batched spans not yet exported are flushed by the shutdown).
    let gets = collector.count("get");
    assert!(gets >= IN_FLIGHT, "{gets} `get` spans exported, expected {IN_FLIGHT}: {:?}", collector.spans);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_when_idle_exits_zero_quickly() {
    let mut s = Scenario::new("sigterm").instances(0).start().await;
    let (mut child, grpc) = spawn_cxcache(&s.env, Some(&s.emu().base_url()), &[]).await;
    let mut client = connect(grpc).await;
    client.get(get_queue(&queue_id(0))).await.expect("a Get before shutdown");
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exited").unwrap();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_bundled_emulator_exits_zero() {
    let s = Scenario::new("sigterm").without_emulator().instances(0).start().await;
    let (mut child, grpc) = spawn_cxcache(&s.env, None, &[]).await;
    let mut client = connect(grpc).await;
    for i in 0..3 {
        client.get(get_queue(&queue_id(i))).await.expect("a Get before shutdown");
    }
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(25), child.wait()).await.expect("exited").unwrap();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}
