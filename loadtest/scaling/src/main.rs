//! `cxcache-scaling watch`: the Watch fan-out row of `loadtest/scaling.sh`.
//!
//! Opens `--subs` Watch streams on `--addr` (over `--conns` HTTP/2
//! connections), all watching one kind. Once every stream has sent its
//! first HEARTBEAT (it is live), it measures the server's CPU
//! (`/proc/<--pid>/stat`) for `--secs` with no purges (the streams' idle
//! cost), then for `--secs` while it purges one key every `1/--rate` s
//! through `--drive` (another instance of the same fleet: the events reach
//! `--addr` over the bus, as in production), and counts the INVALIDATED
//! events the streams receive. Prints one JSON object on stdout.
//!
//! Exit status 1 when a stream fails, a purge fails, or events are lost
//! (received fewer than purges × subscribers, LAGGED counted as loss).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use cxcache::proto::v1::cache_client::CacheClient;
use cxcache::proto::v1::watch_event::Type;
use cxcache::proto::v1::{InvalidateRequest, WatchRequest};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
#[command(name = "cxcache-scaling")]
enum Cmd {
    /// Watch fan-out: subscribers on one instance, purges through another.
    Watch(WatchArgs),
}

#[derive(Debug, Parser)]
struct WatchArgs {
    /// gRPC address (host:port) of the instance the subscribers attach to.
    #[arg(long)]
    addr: String,
    /// Pid of that instance, whose CPU is measured.
    #[arg(long)]
    pid: u32,
    /// gRPC address of the instance the purges are sent to.
    #[arg(long)]
    drive: String,
    /// The fleet's namespace (`--env` of both instances).
    #[arg(long)]
    env: String,
    #[arg(long, default_value_t = 10)]
    subs: usize,
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Seconds of each window (idle, then purging).
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Purges per second during the second window.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
}

#[derive(Default)]
struct Counts {
    heartbeats_first: AtomicU64,
    invalidated: AtomicU64,
    lagged: AtomicU64,
    errors: AtomicU64,
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

async fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))?.connect().await
}

async fn watch(a: WatchArgs) -> Result<serde_json::Value, String> {
    let counts = Arc::new(Counts::default());
    let mut chans = Vec::new();
    for _ in 0..a.conns.max(1) {
        chans.push(channel(&a.addr).await.map_err(|e| format!("connect {}: {e}", a.addr))?);
    }
    let kind = "routing.queue";
    let mut tasks = Vec::new();
    for i in 0..a.subs {
        let mut client = CacheClient::new(chans[i % chans.len()].clone());
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            let req =
                WatchRequest { kinds: vec![kind.to_string()], invalidated_only: true, ..Default::default() };
            let mut stream = match client.watch(req).await {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    eprintln!("watch: {e}");
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let mut first = true;
            loop {
                match stream.message().await {
                    Ok(Some(ev)) => match ev.r#type() {
                        Type::Heartbeat if first => {
                            first = false;
                            counts.heartbeats_first.fetch_add(1, Ordering::Relaxed);
                        }
                        Type::Invalidated => {
                            counts.invalidated.fetch_add(1, Ordering::Relaxed);
                        }
                        Type::Lagged | Type::Reset => {
                            counts.lagged.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    },
                    Ok(None) => return,
                    Err(e) if e.code() == tonic::Code::Cancelled => return,
                    Err(e) => {
                        eprintln!("watch stream: {e}");
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }
    let opened_by = Instant::now() + Duration::from_secs(30);
    while counts.heartbeats_first.load(Ordering::Relaxed) < a.subs as u64 {
        if Instant::now() > opened_by || counts.errors.load(Ordering::Relaxed) > 0 {
            return Err(format!(
                "only {} of {} streams went live",
                counts.heartbeats_first.load(Ordering::Relaxed),
                a.subs
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let window = Duration::from_secs_f64(a.secs);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Idle: every stream open, nothing purged.
    let t0 = cpu_ticks(a.pid);
    tokio::time::sleep(window).await;
    let idle = cpu_ticks(a.pid) - t0;

    // Purging: one key per purge, at a fixed rate, through the other instance.
    let mut driver =
        CacheClient::new(channel(&a.drive).await.map_err(|e| format!("connect {}: {e}", a.drive))?);
    let received0 = counts.invalidated.load(Ordering::Relaxed);
    let t0 = cpu_ticks(a.pid);
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut sent, mut purge_errors, mut slowest) = (0u64, 0u64, Duration::ZERO);
    while start.elapsed() < window {
        tick.tick().await;
        let key = format!("{}:{kind}:scaling-{sent}:full", a.env);
        let began = Instant::now();
        let req = InvalidateRequest { keys: vec![key], reason: "scaling".into(), ..Default::default() };
        match driver.invalidate(req).await {
            Ok(_) => sent += 1,
            Err(e) => {
                eprintln!("invalidate: {e}");
                purge_errors += 1;
            }
        }
        slowest = slowest.max(began.elapsed());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let busy = cpu_ticks(a.pid) - t0;
    let in_window = counts.invalidated.load(Ordering::Relaxed) - received0;
    // Stragglers: every purge was acknowledged by the instance (its bus
    // delivered it), the streams may still be writing.
    let expected = sent * a.subs as u64;
    let drain = Instant::now() + Duration::from_secs(10);
    while counts.invalidated.load(Ordering::Relaxed) < expected && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = counts.invalidated.load(Ordering::Relaxed);
    for t in &tasks {
        t.abort();
    }
    let hz = clk_tck();
    let net_cpu_s = (busy as f64 - idle as f64 * elapsed / a.secs).max(0.0) / hz;
    let events_per_s = in_window as f64 / elapsed;
    Ok(serde_json::json!({
        "subs": a.subs,
        "conns": a.conns,
        "rate": a.rate,
        "window_s": elapsed,
        "purges": sent,
        "purge_errors": purge_errors,
        "slowest_purge_ms": slowest.as_secs_f64() * 1e3,
        "expected": expected,
        "received": received,
        "received_in_window": in_window,
        "lagged": counts.lagged.load(Ordering::Relaxed),
        "stream_errors": counts.errors.load(Ordering::Relaxed),
        "idle_cpu_s": idle as f64 / hz,
        "busy_cpu_s": busy as f64 / hz,
        "net_cpu_s": net_cpu_s,
        "events_per_s": events_per_s,
        "cpu_us_per_event": if in_window > 0 { busy as f64 / hz * 1e6 / in_window as f64 } else { 0.0 },
        "net_cpu_us_per_event": if in_window > 0 { net_cpu_s * 1e6 / in_window as f64 } else { 0.0 },
        "events_per_s_per_core": if busy > 0 { in_window as f64 / (busy as f64 / hz) } else { 0.0 },
    }))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let Cmd::Watch(args) = Cmd::parse();
    match watch(args).await {
        Ok(report) => {
            println!("{report}");
            let bad = report["stream_errors"].as_u64() != Some(0)
                || report["purge_errors"].as_u64() != Some(0)
                || report["lagged"].as_u64() != Some(0)
                || report["received"].as_u64() < report["expected"].as_u64();
            if bad {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("cxcache-scaling: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
