//! The racing read-your-invalidation checker of the fault-injection suite.
//!
//! While a fault happens, it runs on a small set of queues against every
//! instance of a fleet:
//!
//! - **readers**: tasks per instance doing Gets (with a deadline) on the
//!   keys; each answer's `version` (the emulator bumps it on every change)
//!   is compared with the acknowledged purges: a Get that *started* after an
//!   `Invalidate` of its key returned OK at time T, and answered a version
//!   older than the change made before that Invalidate, is a **stale read**.
//! - **mutators**: each owns some of the keys; in a loop it changes a queue
//!   in the emulator (its `version` goes up), then `Invalidate`s that key on
//!   one instance (round robin over the live ones) with a unique `reason`;
//!   an OK records (T, version) as the key's floor.
//! - **watchers**: one Watch stream per instance on the keys' prefix. Every
//!   purge acknowledged while a watcher was live must reach it as an
//!   INVALIDATED event of its key carrying that purge's `reason`, or be covered by a
//!   gap the watcher was told about (a LAGGED event, or the stream breaking
//!   and being reopened) at or after the purge started; anything else is an
//!   **event lost without LAGGED**. A sequence number that skips without a
//!   LAGGED counts as lost too.
//! - **upstream budget**: the emulator's 429 answers during the run (it
//!   enforces the per-token window, so a 429 is a call over budget).
//!
//! [`Checker::finish`] stops the load, waits (bounded) for the last events,
//! and returns a [`Report`]; [`Report::print`] writes one `FAULT-REPORT
//! {json}` line that `loadtest/faults.sh` collects into its table.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cxcache::proto::v1::cache_client::CacheClient;
use cxcache::proto::v1::{watch_event, InvalidateRequest, WatchRequest};
use genesys_emulator::{queue_id, EmulatorHandle};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::{connect, get_queue};

/// How the checker loads the fleet.
#[derive(Debug, Clone)]
pub struct CheckerConfig {
    /// Queues `queue_id(first_queue..first_queue + keys)` are checked.
    pub first_queue: usize,
    pub keys: usize,
    /// Reader tasks per instance.
    pub readers: usize,
    /// Mutator tasks (each owns every `mutators`-th key).
    pub mutators: usize,
    /// Pause between one mutator's rounds.
    pub mutate_every: Duration,
    /// Deadline of each Get.
    pub get_deadline: Duration,
    /// Deadline of each Invalidate.
    pub invalidate_deadline: Duration,
    /// A watcher that takes this long per event (to be pushed past its
    /// buffer); `None`: watchers read as fast as they can.
    pub slow_watch: Option<Duration>,
    /// For the checker's own test only: Invalidate a queue that is not
    /// checked instead of the changed one and still count the OK as if,
    /// so the checker must report stale reads and lost events.
    pub sabotage: bool,
}

impl Default for CheckerConfig {
    fn default() -> Self {
        CheckerConfig {
            first_queue: 0,
            keys: 8,
            readers: 3,
            mutators: 4,
            mutate_every: Duration::from_millis(40),
            get_deadline: Duration::from_secs(5),
            invalidate_deadline: Duration::from_secs(5),
            slow_watch: None,
            sabotage: false,
        }
    }
}

/// One instance the checker talks to.
struct Target {
    addr: std::net::SocketAddr,
    /// Set when the test killed it on purpose: it is no longer read,
    /// invalidated through or held to its Watch from then on.
    retired: Mutex<Option<Instant>>,
}

/// A purge that was acknowledged.
struct Acked {
    reason: String,
    /// The key it was meant to purge (the event must name it).
    key: String,
    started: Instant,
}

#[derive(Default)]
struct WatchLog {
    opened: Option<Instant>,
    /// (reason, key) of every INVALIDATED event of the checker.
    reasons: HashSet<(String, String)>,
    /// When the watcher was told of a gap (LAGGED, or a reopened stream).
    gaps: Vec<Instant>,
    lagged: u64,
    sequence_skips: u64,
    events: u64,
}

#[derive(Default)]
struct Shared {
    /// Per key: (time an Invalidate returned OK, version changed before it).
    floors: Vec<Mutex<Vec<(Instant, u64)>>>,
    acked: Mutex<Vec<Acked>>,
    watch: Vec<Mutex<WatchLog>>,
    gets: AtomicU64,
    get_ok: AtomicU64,
    get_failed: Mutex<BTreeMap<String, u64>>,
    gets_to_retired: AtomicU64,
    invalidates: AtomicU64,
    invalidate_failed: Mutex<BTreeMap<String, u64>>,
    stale: AtomicU64,
    stale_examples: Mutex<Vec<String>>,
}

/// What one fault run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub fault: String,
    pub secs: f64,
    pub gets: u64,
    pub get_failed: BTreeMap<String, u64>,
    /// Gets to an instance after the test killed it (not counted as failed).
    pub gets_to_killed: u64,
    pub invalidates: u64,
    pub invalidate_failed: BTreeMap<String, u64>,
    pub stale_reads: u64,
    pub stale_examples: Vec<String>,
    /// Acknowledged purges that were checked against watchers (× watchers).
    pub events_expected: u64,
    pub lost_events: u64,
    pub lagged: u64,
    /// Events each instance's watcher received.
    pub watch_events: Vec<u64>,
    pub upstream_calls: u64,
    pub upstream_429: u64,
    /// Anything else the scenario measured (e.g. failover time).
    pub notes: Vec<String>,
}

impl Report {
    pub fn gets_failed(&self) -> u64 {
        self.get_failed.values().sum()
    }

    pub fn invalidates_failed(&self) -> u64 {
        self.invalidate_failed.values().sum()
    }

    /// Prints the human summary and one `FAULT-REPORT {json}` line.
    pub fn print(&self) {
        let json = serde_json::json!({
            "fault": self.fault,
            "secs": (self.secs * 10.0).round() / 10.0,
            "gets": self.gets,
            "get_failed": self.get_failed,
            "gets_to_killed": self.gets_to_killed,
            "invalidates": self.invalidates,
            "invalidate_failed": self.invalidate_failed,
            "stale_reads": self.stale_reads,
            "events_expected": self.events_expected,
            "lost_events": self.lost_events,
            "lagged": self.lagged,
            "watch_events": self.watch_events,
            "upstream_calls": self.upstream_calls,
            "upstream_429": self.upstream_429,
            "notes": self.notes,
            "stale_examples": self.stale_examples,
        });
        println!("FAULT-REPORT {json}");
        for example in &self.stale_examples {
            println!("  stale read: {example}");
        }
    }
}

/// The running checker; [`Checker::finish`] stops it.
pub struct Checker {
    cfg: CheckerConfig,
    env: String,
    targets: Arc<Vec<Target>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    load: Vec<JoinHandle<()>>,
    watchers: Vec<JoinHandle<()>>,
    stop_watch: Arc<AtomicBool>,
    emu: EmulatorHandle,
    calls_before: u64,
    limited_before: u64,
    started: Instant,
}

impl Checker {
    /// The logical key of checked queue `i`.
    pub fn logical(&self, i: usize) -> String {
        logical(&self.env, self.cfg.first_queue + i)
    }

    /// Starts watchers on every instance at `addrs` (each open before this
    /// returns), then the readers and mutators.
    pub async fn start(
        env: &str,
        emu: &EmulatorHandle,
        addrs: &[std::net::SocketAddr],
        cfg: CheckerConfig,
    ) -> Checker {
        let targets: Arc<Vec<Target>> =
            Arc::new(addrs.iter().map(|&addr| Target { addr, retired: Mutex::new(None) }).collect());
        let shared = Arc::new(Shared {
            floors: (0..cfg.keys).map(|_| Mutex::new(Vec::new())).collect(),
            watch: addrs.iter().map(|_| Mutex::new(WatchLog::default())).collect(),
            ..Shared::default()
        });
        let before = emu.counters();
        let mut checker = Checker {
            cfg: cfg.clone(),
            env: env.to_string(),
            targets: targets.clone(),
            shared: shared.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            load: Vec::new(),
            watchers: Vec::new(),
            stop_watch: Arc::new(AtomicBool::new(false)),
            emu: emu.clone(),
            calls_before: before.total,
            limited_before: before.rate_limited,
            started: Instant::now(),
        };
        let prefix = format!("{env}:routing.queue:");
        for t in 0..targets.len() {
            let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
            checker.watchers.push(tokio::spawn(watcher(
                t,
                targets.clone(),
                shared.clone(),
                prefix.clone(),
                checker.stop_watch.clone(),
                cfg.slow_watch,
                opened_tx,
            )));
            tokio::time::timeout(Duration::from_secs(10), opened_rx)
                .await
                .expect("a Watch stream opened within 10 s")
                .expect("watcher task alive");
        }
        // The first value of every key, so misses do not all come at once.
        for t in 0..targets.len() {
            let mut client = connect(targets[t].addr).await;
            for i in 0..cfg.keys {
                let _ = client.get(get_queue(&queue_id(cfg.first_queue + i))).await;
            }
        }
        for t in 0..targets.len() {
            for r in 0..cfg.readers {
                checker.load.push(tokio::spawn(reader(
                    t,
                    r,
                    targets.clone(),
                    shared.clone(),
                    checker.stop.clone(),
                    cfg.clone(),
                )));
            }
        }
        for m in 0..cfg.mutators {
            checker.load.push(tokio::spawn(mutator(
                m,
                env.to_string(),
                emu.clone(),
                targets.clone(),
                shared.clone(),
                checker.stop.clone(),
                cfg.clone(),
            )));
        }
        checker.started = Instant::now();
        checker
    }

    /// Marks instance `t` killed on purpose from now on.
    pub fn retire(&self, t: usize) {
        *self.targets[t].retired.lock() = Some(Instant::now());
    }

    /// Acknowledged Invalidates so far (to wait for progress).
    pub fn acked(&self) -> usize {
        self.shared.acked.lock().len()
    }

    /// Gets answered OK so far.
    pub fn gets_ok(&self) -> u64 {
        self.shared.get_ok.load(Ordering::Relaxed)
    }

    /// Waits (at most `limit`) until `n` more Invalidates were acknowledged;
    /// whether they were.
    pub async fn wait_acked(&self, n: usize, limit: Duration) -> bool {
        let target = self.acked() + n;
        let deadline = Instant::now() + limit;
        while self.acked() < target {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Stops the load, waits up to 5 s for watchers to hear every
    /// acknowledged purge, and reports.
    pub async fn finish(self, fault: &str) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.load {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        let secs = self.started.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (expected, lost) = loop {
            let (expected, lost) = count_lost(&self.shared, &self.targets);
            if lost == 0 || Instant::now() >= deadline {
                break (expected, lost);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.stop_watch.store(true, Ordering::Relaxed);
        for w in self.watchers {
            w.abort();
        }
        let after = self.emu.counters();
        let s = &self.shared;
        let lagged: u64 = s.watch.iter().map(|w| w.lock().lagged).sum();
        let watch_events = s.watch.iter().map(|w| w.lock().events).collect();
        Report {
            fault: fault.to_string(),
            secs,
            gets: s.gets.load(Ordering::Relaxed),
            get_failed: s.get_failed.lock().clone(),
            gets_to_killed: s.gets_to_retired.load(Ordering::Relaxed),
            invalidates: s.invalidates.load(Ordering::Relaxed),
            invalidate_failed: s.invalidate_failed.lock().clone(),
            stale_reads: s.stale.load(Ordering::Relaxed),
            stale_examples: s.stale_examples.lock().clone(),
            events_expected: expected,
            lost_events: lost,
            lagged,
            watch_events,
            upstream_calls: after.total - self.calls_before,
            upstream_429: after.rate_limited - self.limited_before,
            notes: Vec::new(),
        }
    }
}

fn logical(env: &str, n: usize) -> String {
    format!("{env}:routing.queue:{}:full", queue_id(n))
}

/// (purge × watcher pairs checked, those neither delivered nor covered by a gap).
fn count_lost(shared: &Shared, targets: &[Target]) -> (u64, u64) {
    let acked = shared.acked.lock();
    let (mut expected, mut lost) = (0, 0);
    for (t, log) in shared.watch.iter().enumerate() {
        let log = log.lock();
        let retired = *targets[t].retired.lock();
        let Some(opened) = log.opened else { continue };
        for a in acked.iter() {
            if a.started < opened || retired.is_some_and(|r| a.started >= r) {
                continue;
            }
            expected += 1;
            if !log.reasons.contains(&(a.reason.clone(), a.key.clone()))
                && !log.gaps.iter().any(|&g| g >= a.started)
            {
                lost += 1;
            }
        }
        lost += log.sequence_skips;
    }
    (expected, lost)
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

fn live_targets(targets: &[Target]) -> Vec<usize> {
    (0..targets.len()).filter(|&t| targets[t].retired.lock().is_none()).collect()
}

async fn reader(
    t: usize,
    r: usize,
    targets: Arc<Vec<Target>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    cfg: CheckerConfig,
) {
    let mut client: CacheClient<Channel> = connect(targets[t].addr).await;
    let mut n = r * 7 + t * 3;
    while !stop.load(Ordering::Relaxed) {
        if targets[t].retired.lock().is_some() {
            return;
        }
        n = n.wrapping_add(1);
        let i = n % cfg.keys;
        let started = Instant::now();
        let mut req = tonic::Request::new(get_queue(&queue_id(cfg.first_queue + i)));
        req.set_timeout(cfg.get_deadline);
        let answer = tokio::time::timeout(cfg.get_deadline + Duration::from_secs(2), client.get(req)).await;
        if targets[t].retired.lock().is_some() {
            shared.gets_to_retired.fetch_add(1, Ordering::Relaxed);
            return;
        }
        shared.gets.fetch_add(1, Ordering::Relaxed);
        let reply = match answer {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => {
                *shared.get_failed.lock().entry(code_name(status.code())).or_default() += 1;
                continue;
            }
            Err(_) => {
                *shared.get_failed.lock().entry("ClientTimeout".into()).or_default() += 1;
                continue;
            }
        };
        shared.get_ok.fetch_add(1, Ordering::Relaxed);
        let version = serde_json::from_slice::<serde_json::Value>(&reply.value)
            .ok()
            .and_then(|v| v["version"].as_u64())
            .unwrap_or(0);
        // The newest acknowledged purge before this Get started (versions
        // only grow, so it carries the highest floor).
        let floor =
            shared.floors[i].lock().iter().filter(|(at, _)| *at < started).max_by_key(|&&(_, v)| v).copied();
        if let Some((acked_at, floor)) = floor {
            if version < floor {
                shared.stale.fetch_add(1, Ordering::Relaxed);
                let mut ex = shared.stale_examples.lock();
                if ex.len() < 5 {
                    ex.push(format!(
                        "instance {t} queue {i}: version {version} < {floor}, source {:?}, Get started {} ms after the Invalidate returned OK",
                        reply.source(),
                        started.duration_since(acked_at).as_millis()
                    ));
                }
            }
        }
    }
}

async fn mutator(
    m: usize,
    env: String,
    emu: EmulatorHandle,
    targets: Arc<Vec<Target>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    cfg: CheckerConfig,
) {
    let mut clients = Vec::new();
    for t in targets.iter() {
        clients.push(connect(t.addr).await);
    }
    let mine: Vec<usize> = (0..cfg.keys).filter(|i| i % cfg.mutators == m).collect();
    // Seeded queues start at version 1; only this task changes these.
    let mut versions = vec![1u64; cfg.keys];
    let mut round = 0usize;
    let mut tick = tokio::time::interval(cfg.mutate_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let live = live_targets(&targets);
        if live.is_empty() || mine.is_empty() {
            return;
        }
        let i = mine[round % mine.len()];
        let t = live[(round / mine.len() + m) % live.len()];
        round += 1;
        let id = queue_id(cfg.first_queue + i);
        assert!(emu.mutate_queue(&id, serde_json::json!({ "description": format!("fault-check {round}") })));
        versions[i] += 1;
        let reason = format!("chk-{m}-{round}");
        let mut req = tonic::Request::new(InvalidateRequest {
            keys: vec![logical(
                &env,
                if cfg.sabotage { cfg.first_queue + cfg.keys + 1000 + i } else { cfg.first_queue + i },
            )],
            reason: reason.clone(),
            ..Default::default()
        });
        req.set_timeout(cfg.invalidate_deadline);
        let started = Instant::now();
        shared.invalidates.fetch_add(1, Ordering::Relaxed);
        let answer = tokio::time::timeout(
            cfg.invalidate_deadline + Duration::from_secs(2),
            clients[t].invalidate(req),
        )
        .await;
        match answer {
            Ok(Ok(_)) => {
                let now = Instant::now();
                shared.floors[i].lock().push((now, versions[i]));
                shared.acked.lock().push(Acked { reason, key: logical(&env, cfg.first_queue + i), started });
            }
            Ok(Err(status)) => {
                *shared.invalidate_failed.lock().entry(code_name(status.code())).or_default() += 1;
            }
            Err(_) => {
                *shared.invalidate_failed.lock().entry("ClientTimeout".into()).or_default() += 1;
            }
        }
    }
}

async fn watcher(
    t: usize,
    targets: Arc<Vec<Target>>,
    shared: Arc<Shared>,
    prefix: String,
    stop: Arc<AtomicBool>,
    slow: Option<Duration>,
    opened: tokio::sync::oneshot::Sender<()>,
) {
    use tokio_stream::StreamExt;
    let mut opened = Some(opened);
    let req = WatchRequest { prefixes: vec![prefix], ..Default::default() };
    while !stop.load(Ordering::Relaxed) {
        if targets[t].retired.lock().is_some() {
            return;
        }
        let stream = match tokio::time::timeout(Duration::from_secs(5), async {
            let mut client = CacheClient::connect(format!("http://{}", targets[t].addr)).await.ok()?;
            client.watch(req.clone()).await.ok()
        })
        .await
        {
            Ok(Some(s)) => s.into_inner(),
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        {
            let mut log = shared.watch[t].lock();
            let now = Instant::now();
            if log.opened.is_none() {
                log.opened = Some(now);
            } else {
                // Reopened: whatever happened while it was down is a gap the
                // subscriber knows about.
                log.gaps.push(now);
            }
        }
        if let Some(tx) = opened.take() {
            let _ = tx.send(());
        }
        let mut stream = stream;
        let mut last_seq = 0u64;
        let mut after_lag = false;
        while let Some(item) = stream.next().await {
            let Ok(ev) = item else { break };
            if let Some(pause) = slow {
                tokio::time::sleep(pause).await;
            }
            let mut log = shared.watch[t].lock();
            log.events += 1;
            let lag = ev.r#type() == watch_event::Type::Lagged;
            if last_seq != 0 && ev.sequence != last_seq + 1 && !lag && !after_lag {
                log.sequence_skips += 1;
            }
            last_seq = ev.sequence;
            after_lag = lag;
            match ev.r#type() {
                watch_event::Type::Lagged => {
                    log.lagged += 1;
                    log.gaps.push(Instant::now());
                }
                watch_event::Type::Invalidated if ev.reason.starts_with("chk-") => {
                    log.reasons.insert((ev.reason, ev.key));
                }
                _ => {}
            }
        }
        // The stream broke: the subscriber knows it may have missed events.
        shared.watch[t].lock().gaps.push(Instant::now());
    }
}
