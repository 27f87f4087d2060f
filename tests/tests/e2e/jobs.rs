//! Async analytics jobs end to end: submit, poll on the doubling schedule,
//! validate, split and rerun a truncated result, store the merged whole.

use std::collections::HashSet;
use std::time::Duration;

use cxcache::proto::v1::{GetRequest, Source};
use genesys_emulator::EmulatorConfig;
use harness::*;
use serde_json::{json, Value};

const JOBS: &str = "/api/v2/analytics/conversations/details/jobs";
const SUBMIT_ROUTE: &str = "POST /api/v2/analytics/conversations/details/jobs";
const STATUS_ROUTE: &str = "GET /api/v2/analytics/conversations/details/jobs/{jobId}";

fn job(interval: &str) -> GetRequest {
    GetRequest {
        kind: "analytics.conversations.details.job".into(),
        body_json: json!({"interval": interval, "granularity": "PT1H", "groupBy": ["queueId"]}).to_string(),
        ..Default::default()
    }
}

/// An instance polling jobs from `poll_initial_ms` up to `poll_max_ms`, in
/// front of an emulator whose jobs take `time_scale` × 20 s.
fn jobs(name: &str, time_scale: f64, poll_initial_ms: u64, poll_max_ms: u64) -> Scenario {
    Scenario::new(name).emulator(EmulatorConfig { time_scale, ..EmulatorConfig::default() }).configure(
        move |c| {
            c.upstream.jobs.poll_initial = Duration::from_millis(poll_initial_ms);
            c.upstream.jobs.poll_max = Duration::from_millis(poll_max_ms);
        },
    )
}

/// Six hourly buckets × three queues = 18 rows; the emulator cuts every job
/// to 10 rows, so the first result is discarded, the interval halved (9
/// rows each, complete), and the halves merged into the stored entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_job_is_split_rerun_and_merged() {
    // Jobs run 20 s × 0.025 = 500 ms.
    let mut s = jobs("jobsplit", 0.025, 20, 100).start().await;
    let (cx, emu) = (s.cx(), s.emu());
    emu.set_job_row_limit(Some(10));
    let req = job("2024-03-01T00:00:00Z/2024-03-01T06:00:00Z");
    let got = cx.get(req.clone()).await.unwrap();
    assert_eq!(got.source(), Source::Upstream);
    let v: Value = serde_json::from_slice(&got.value).unwrap();
    let rows = v["conversations"].as_array().unwrap();
    assert_eq!(v["total"], 18);
    assert_eq!(rows.len(), 18, "complete after the split");
    let cells: HashSet<(String, String)> = rows
        .iter()
        .map(|r| {
            (r["interval"].as_str().unwrap().to_string(), r["group"]["queueId"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(cells.len(), 18, "every bucket and queue once");
    let starts: Vec<&str> = rows.iter().map(|r| r["conversationStart"].as_str().unwrap()).collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "merged in time order");
    assert_eq!(emu.jobs_submitted(), 3, "the whole interval, then its two halves");
    // The halves ran at once: submitted together, not one job-length apart.
    let mut submits: Vec<u64> =
        emu.requests(1000).into_iter().filter(|r| r.route == SUBMIT_ROUTE).map(|r| r.at_ms).collect();
    submits.sort();
    assert!(submits[2] - submits[1] < 250, "halves submitted {} ms apart", submits[2] - submits[1]);

    // Stored validated: the next Get costs nothing upstream.
    let again = cx.get(req).await.unwrap();
    assert_eq!(again.source(), Source::Store);
    assert_eq!(again.value, got.value);
    assert_eq!(emu.jobs_submitted(), 3);
    // A long-closed interval: the closed-interval analytics class (24 h).
    let ttl = again.ttl_remaining.unwrap().seconds;
    assert!((82_000..=86_400).contains(&ttl), "ttl {ttl}");

    // A result too short even for one bucket is refused, never stored.
    emu.set_job_row_limit(Some(0));
    let err = cx.get(job("2024-03-02T00:00:00Z/2024-03-02T01:00:00Z")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("expected rows"), "{}", err.message());
    s.stop().await;
}

/// Polls follow 1, 2, 4, 8, 15, 15 (scaled: 1 unit = 50 ms) until the job,
/// running 2.5 s, is fulfilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_doubles_from_one_to_a_cap_of_fifteen() {
    // Jobs run 20 s × 0.125 = 2.5 s.
    let mut s = jobs("jobpoll", 0.125, 50, 750).start().await;
    let (cx, emu) = (s.cx(), s.emu());
    let got = cx.get(job("2024-03-03T00:00:00Z/2024-03-03T02:00:00Z")).await.unwrap();
    let v: Value = serde_json::from_slice(&got.value).unwrap();
    assert_eq!(v["total"], 6);
    let mut log: Vec<_> = emu
        .requests(1000)
        .into_iter()
        .filter(|r| r.route == SUBMIT_ROUTE || r.route == STATUS_ROUTE)
        .collect();
    log.sort_by_key(|r| r.at_ms);
    assert_eq!(log[0].route, SUBMIT_ROUTE);
    assert!(log[1..].iter().all(|r| r.path.starts_with(JOBS)));
    let gaps: Vec<u64> = log.windows(2).map(|w| w[1].at_ms - w[0].at_ms).collect();
    let expected = [50, 100, 200, 400, 750, 750];
    assert!(gaps.len() >= expected.len(), "polled until fulfilled: {gaps:?}");
    for (gap, want) in gaps.iter().zip(expected) {
        assert!(*gap >= want && *gap < want + 200, "poll gaps {gaps:?} should follow {expected:?}");
    }
    assert!(gaps[6..].iter().all(|g| *g >= 750), "capped at 15 units: {gaps:?}");
    s.stop().await;
}

/// Tokens that expire every second are refreshed while a 2.5 s job is
/// polled: no poll is sent with an expired token, the job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_outlives_its_tokens() {
    let mut s = jobs("jobtoken", 0.125, 50, 250)
        .emulator(EmulatorConfig {
            time_scale: 0.125,
            token_ttl: Duration::from_secs(1),
            ..EmulatorConfig::default()
        })
        .start()
        .await;
    let (cx, emu) = (s.cx(), s.emu());
    let got = cx.get(job("2024-03-04T00:00:00Z/2024-03-04T02:00:00Z")).await.expect("job completed");
    assert_eq!(got.source(), Source::Upstream);
    let c = emu.counters();
    assert_eq!(c.by_status.get(&401), None, "no poll used an expired token: {c:?}");
    assert!(c.route("POST /oauth/token") >= 3, "tokens refreshed during the poll: {c:?}");
    assert!(c.route(STATUS_ROUTE) >= 5, "polled for the whole job: {c:?}");
    s.stop().await;
}

/// A job still running when its caller's deadline passes is cancelled
/// upstream (its result would never be used), and the caller gets
/// DEADLINE_EXCEEDED in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_job_is_cancelled_upstream() {
    // Jobs run 20 s unscaled: far past the caller's deadline.
    let mut s = jobs("jobcancel", 1.0, 50, 250).start().await;
    let (cx, emu) = (s.cx(), s.emu());
    let started = std::time::Instant::now();
    let err = cx
        .get_within(job("2024-03-05T00:00:00Z/2024-03-05T02:00:00Z"), Duration::from_millis(800))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "answered in {:?}", started.elapsed());
    assert_eq!(emu.jobs_submitted(), 1);
    assert!(
        wait_until(Duration::from_secs(5), || emu.jobs_cancelled() == 1).await,
        "the job was not cancelled"
    );
    s.stop().await;
}

/// Result pages are bounded one by one *and* together: a wide interval
/// cannot pile up more than `upstream.max_response_bytes` in memory (here
/// 30 days × 24 h × 3 queues ≈ 2 160 rows in pages of 100, each well under
/// the 64 KiB limit, together far over it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_results_over_the_response_limit_together_are_refused() {
    let mut s =
        jobs("jobbig", 0.025, 20, 100).configure(|c| c.upstream.max_response_bytes = 64 << 10).start().await;
    let err = match s.cx().get(job("2024-03-01T00:00:00Z/2024-03-31T00:00:00Z")).await {
        Ok(got) => panic!("a {}-byte result was accepted", got.value.len()),
        Err(e) => e,
    };
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("max_response_bytes"), "{}", err.message());
    s.stop().await;
}
