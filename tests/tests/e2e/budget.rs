//! Issue 14 end to end: the budget is learned from the platform's headers.
//!
//! The emulator states its per-token limit in `inin-ratelimit-*` headers;
//! the instances start from a configured budget that is wrong (in either
//! direction) and must follow the headers: after the first window, at least
//! 90 % of the real capacity is spent and no call is answered 429. The same
//! run, sized by environment variables, is `loadtest/quota.sh`'s learned
//! mode. Windows are scaled to seconds so the default run stays short.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cxcache::config::{Credential, Secret};
use cxcache::proto::v1::cache_client::CacheClient;
use genesys_emulator::{EmulatorConfig, EmulatorHandle};
use harness::*;
use tonic::transport::Channel;

const ANALYTICS_ROUTE: &str = "POST /api/v2/analytics/conversations/aggregates/query";

/// A limit: calls per window.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub allowed: u32,
    pub window: Duration,
}

/// What a learned-budget run measured after its first window.
#[derive(Debug)]
pub struct Learned {
    /// Successful upstream calls after the first window.
    pub calls: u64,
    /// What the headers' limit allows over that time, all tokens together.
    pub capacity: f64,
    /// 429 answers after the first window, and in all.
    pub late_429s: u64,
    pub all_429s: u64,
    pub failed_gets: u64,
}

impl Learned {
    pub fn utilisation(&self) -> f64 {
        self.calls as f64 / self.capacity
    }
}

/// Misses from every client until `end`.
async fn load(clients: &[CacheClient<Channel>], end: tokio::time::Instant, failed: Arc<AtomicU64>) {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = clients
        .iter()
        .map(|client| {
            let (client, next, failed) = (client.clone(), next.clone(), failed.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < end {
                    let mut req = tonic::Request::new(distinct_analytics(
                        "learn",
                        next.fetch_add(1, Ordering::Relaxed),
                    ));
                    req.set_timeout(Duration::from_secs(10));
                    if let Err(e) = client.clone().get(req).await {
                        eprintln!("failed Get: {:?} {}", e.code(), e.message());
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Calls and 429s of `emu` in `[from_ms, to_ms)`.
fn count(emu: &EmulatorHandle, from_ms: u64, to_ms: u64) -> (u64, u64) {
    let log = emu.requests(10_000);
    let within = |r: &&genesys_emulator::RequestRecord| (from_ms..to_ms).contains(&r.at_ms);
    let ok = log.iter().filter(within).filter(|r| r.route == ANALYTICS_ROUTE && r.status == 200).count();
    let limited = log.iter().filter(within).filter(|r| r.status == 429).count();
    (ok as u64, limited as u64)
}

/// `tokens` credentials, two instances on the shared cluster configured
/// with `configured`, in front of an emulator whose headers say `real`;
/// a saturating miss load for `run`.
pub async fn learned_run(
    name: &str,
    tokens: usize,
    configured: Limit,
    real: Limit,
    run: Duration,
    workers: usize,
) -> Learned {
    let clients: Vec<(String, String)> =
        (0..tokens).map(|i| (format!("{name}-{}-{i}", std::process::id()), format!("s{i}"))).collect();
    let creds = clients.clone();
    let emulator = EmulatorConfig {
        rate_limit: real.allowed,
        window: real.window,
        clients,
        ..EmulatorConfig::default()
    };
    let mut s = Scenario::new(name)
        .emulator(emulator)
        .configure(move |c| {
            c.upstream.credentials = creds
                .iter()
                .map(|(id, secret)| Credential { client_id: id.clone(), client_secret: Secret::new(secret) })
                .collect();
            c.upstream.rate_limit.allowed = configured.allowed;
            c.upstream.rate_limit.window = configured.window;
            c.upstream.rate_limit.burst = 0; // the default: 3 % of the budget
        })
        .cluster()
        .instances(2)
        .clients(workers)
        .alone()
        .start()
        .await;
    let failed = Arc::new(AtomicU64::new(0));
    let started = unix_ms();
    load(&s.clients, tokio::time::Instant::now() + run, failed.clone()).await;
    let ended = started + run.as_millis() as u64;
    let first_window_over = started + real.window.as_millis() as u64;
    let (calls, late_429s) = count(s.emu(), first_window_over, ended);
    let (_, all_429s) = count(s.emu(), 0, u64::MAX);

    let steady = Duration::from_millis(ended - first_window_over);
    for cx in &s.instances {
        eprintln!("upstream stats: {:?}", cx.running.as_ref().expect("running").upstream_stats());
    }
    s.stop().await;
    Learned {
        calls,
        capacity: tokens as f64 * real.allowed as f64 * steady.as_secs_f64() / real.window.as_secs_f64(),
        late_429s,
        all_429s,
        failed_gets: failed.load(Ordering::Relaxed),
    }
}

fn check(what: &str, o: &Learned) {
    eprintln!(
        "{what}: utilisation {:.1} % ({} of {:.0}) after the first window, 429s {} after it ({} in all)",
        o.utilisation() * 100.0,
        o.calls,
        o.capacity,
        o.late_429s,
        o.all_429s
    );
    assert_eq!(o.late_429s, 0, "{what}: 429s after the first window: {o:?}");
    // 90 % is the load test's bar (release build, loadtest/quota.sh
    // --learned); this debug run shares two cores with the suite.
    assert!(o.utilisation() >= 0.85, "{what}: under 85 % of the real capacity: {o:?}");
    assert!(o.utilisation() <= 1.02, "{what}: over the real capacity: {o:?}");
}

/// Configured 300 per 60 s (the default) in front of headers saying 20 per
/// 2 s (the 50 per 10 s case, scaled): the window is learned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_window_in_the_headers_is_learned() {
    let configured = Limit { allowed: 300, window: Duration::from_secs(60) };
    let real = Limit { allowed: 20, window: Duration::from_secs(2) };
    let o = learned_run("learn-window", 2, configured, real, Duration::from_secs(8), 8).await;
    check("300/60s configured, 20/2s real", &o);
}

/// Configured 20 per 2 s, headers saying 80 per 2 s: the budget is raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_budget_in_the_headers_is_followed() {
    let configured = Limit { allowed: 20, window: Duration::from_secs(2) };
    let real = Limit { allowed: 80, window: Duration::from_secs(2) };
    let o = learned_run("learn-raise", 2, configured, real, Duration::from_secs(8), 24).await;
    check("20/2s configured, 80/2s real", &o);
}

/// The platform lowers the limit mid-run (80 → 20 per 2 s): followed within
/// a window, with a few 429s at most (one per token as the change lands),
/// then none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_lowered_at_run_time_is_followed_without_a_429_storm() {
    let tokens = 2;
    let clients: Vec<(String, String)> =
        (0..tokens).map(|i| (format!("learn-lower-{}-{i}", std::process::id()), format!("s{i}"))).collect();
    let creds = clients.clone();
    let window = Duration::from_secs(2);
    let emulator = EmulatorConfig { rate_limit: 80, window, clients, ..EmulatorConfig::default() };
    let mut s = Scenario::new("learn-lower")
        .emulator(emulator)
        .configure(move |c| {
            c.upstream.credentials = creds
                .iter()
                .map(|(id, secret)| Credential { client_id: id.clone(), client_secret: Secret::new(secret) })
                .collect();
            c.upstream.rate_limit.allowed = 80;
            c.upstream.rate_limit.window = window;
            c.upstream.rate_limit.burst = 0;
        })
        .clients(8)
        .alone()
        .start()
        .await;
    let failed = Arc::new(AtomicU64::new(0));
    let end = tokio::time::Instant::now() + Duration::from_secs(9);
    let loader = {
        let (clients, failed) = (s.clients.clone(), failed.clone());
        tokio::spawn(async move { load(&clients, end, failed).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.emu().set_rate_limit(20, window);
    let changed = unix_ms();
    loader.await.unwrap();
    let ended = unix_ms();
    let (_, storm) = count(s.emu(), changed, changed + window.as_millis() as u64);
    let settled = changed + window.as_millis() as u64;
    let (calls, late) = count(s.emu(), settled, ended);
    let capacity = tokens as f64 * 20.0 * (ended - settled) as f64 / window.as_millis() as f64;
    eprintln!(
        "lowered: {storm} 429s in the window of the change, {late} after; {calls} calls of {capacity:.0}"
    );
    assert!(storm <= 2 * tokens as u64, "a 429 storm: {storm}");
    assert_eq!(late, 0, "429s after the first window at the new limit");
    // One instance, 2 s windows: the nearly-spent rest (to a reset the
    // header rounds up to a second) costs more here than in real windows:
    // 66 of 96 (69 %) on the day this bound was set; 10 s windows reach
    // 95 % (loadtest/quota.sh).
    assert!(calls as f64 >= 0.6 * capacity, "the lowered budget is still spent: {calls} of {capacity:.0}");
    s.stop().await;
}

/// The load test's entry (`loadtest/quota.sh --learned`): sized by
/// environment variables, prints one line per case.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "load test: run through loadtest/quota.sh"]
async fn loadtest_learned_budget() {
    let var =
        |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let tokens = var("QUOTA_TOKENS", 3) as usize;
    let scale = var("QUOTA_WINDOW_SECS", 10); // the real window: 10 s, or 2 s for --short
    let run = Duration::from_secs(var("QUOTA_SECS", 60).min(600));
    let workers = var("QUOTA_WORKERS", 16) as usize;
    let w = Duration::from_secs(scale);
    // Scaled so the rates are the issue's: 50 per 10 s real, 300 per 60 s configured.
    // QUOTA_BOOST multiplies the budgets (--short: 2, so 2 s windows keep
    // budgets large enough for the pacing's one-call margin).
    let boost = var("QUOTA_BOOST", 1);
    let per = |calls_per_10s: u32| (calls_per_10s as u64 * scale * boost / 10).max(1) as u32;
    let cases = [
        (
            "headers-50/10s-configured-300/60s",
            Limit { allowed: 300, window: Duration::from_secs(60) },
            Limit { allowed: per(50), window: w },
        ),
        (
            "configured-50/10s-headers-200/10s",
            Limit { allowed: per(50), window: w },
            Limit { allowed: per(200), window: w },
        ),
    ];
    for (name, configured, real) in cases {
        let o = learned_run(name, tokens, configured, real, run, workers).await;
        println!(
            "case={name} tokens={tokens} real={}/{}s configured={}/{}s run={}s calls={} capacity={:.0} utilisation={:.1}% late_429s={} all_429s={} failed_gets={}",
            real.allowed,
            real.window.as_secs(),
            configured.allowed,
            configured.window.as_secs(),
            run.as_secs(),
            o.calls,
            o.capacity,
            o.utilisation() * 100.0,
            o.late_429s,
            o.all_429s,
            o.failed_gets
        );
    }
}
