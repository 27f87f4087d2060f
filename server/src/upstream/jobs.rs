//! Async analytics detail jobs: submit (POST), poll the job's state starting
//! at `jobs.poll_initial` and doubling to `jobs.poll_max` (1, 2, 4, 8, 15,
//! 15 s by default), then read the results page by page (`cursor`).
//!
//! A result is validated before it may be stored: the platform can cut a
//! large result short without saying so, so a result with fewer than
//! `jobs.min_rows_fraction` of the rows its interval and grouping imply
//! (one per granularity bucket and group) is discarded, the interval split
//! in two at a bucket boundary, each half run (and validated) on its own,
//! and the halves merged. Every submit, poll and page is an API call that
//! spends budget and refreshes tokens like any other.

use std::collections::HashSet;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::stats::UpstreamStats;
use super::{Call, Fetched, Upstream};
use crate::catalog::Method;
use crate::error::{Error, Result};

/// Result pages one job may have.
const MAX_RESULT_PAGES: usize = 10_000;
/// Longest wait to cancel an abandoned job.
const CANCEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The query of a job, parsed for splitting.
struct JobQuery {
    body: Map<String, Value>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    step: Option<chrono::Duration>,
    grouped: bool,
}

impl JobQuery {
    fn parse(body: Option<&Bytes>) -> Result<JobQuery> {
        let bad = |why: &str| Error::invalid("body_json", why.to_string());
        let body: Map<String, Value> = body
            .and_then(|b| serde_json::from_slice(b).ok())
            .ok_or_else(|| bad("an analytics job needs a JSON object body"))?;
        let interval = body
            .get("interval")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("an analytics job needs an \"interval\" (start/end)"))?;
        let (start, end) = interval
            .split_once('/')
            .and_then(|(a, b)| {
                Some((DateTime::parse_from_rfc3339(a).ok()?, DateTime::parse_from_rfc3339(b).ok()?))
            })
            .map(|(a, b)| (a.with_timezone(&Utc), b.with_timezone(&Utc)))
            .filter(|(a, b)| a < b)
            .ok_or_else(|| bad("\"interval\" must be start/end in RFC 3339, end after start"))?;
        let step = match body.get("granularity").and_then(Value::as_str) {
            Some(g) => Some(
                crate::ttl::iso8601_duration(g)
                    .and_then(|d| chrono::Duration::from_std(d).ok())
                    .filter(|d| *d > chrono::Duration::zero())
                    .ok_or_else(|| bad("\"granularity\" must be an ISO-8601 duration such as PT1H"))?,
            ),
            None => None,
        };
        let grouped = body.get("groupBy").and_then(Value::as_array).is_some_and(|g| !g.is_empty());
        Ok(JobQuery { body, start, end, step, grouped })
    }

    /// Granularity buckets in `[start, end)` (1 without a granularity).
    fn buckets(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> u64 {
        match self.step {
            Some(step) => {
                let span = (end - start).num_milliseconds().max(0) as u64;
                let step = step.num_milliseconds().max(1) as u64;
                span.div_ceil(step).max(1)
            }
            None => 1,
        }
    }

    /// The body of a job over `[start, end)`.
    fn body_for(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> Bytes {
        let mut body = self.body.clone();
        body.insert("interval".into(), json!(format!("{}/{}", rfc3339(start), rfc3339(end))));
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Rows a complete result has: buckets × groups seen (groups cannot be
/// known before the result; a cut result still shows them in its first buckets).
/// Checks an analytics job body at the request edge, so a bad one is
/// refused before anything is indexed, leased or called.
pub fn check_job_body(body: &Value) -> Result<()> {
    let bytes = Bytes::from(serde_json::to_vec(body).map_err(|e| Error::Internal(e.to_string()))?);
    JobQuery::parse(Some(&bytes)).map(|_| ())
}

fn expected_rows(q: &JobQuery, start: DateTime<Utc>, end: DateTime<Utc>, rows: &[Value]) -> u64 {
    let groups = if q.grouped {
        rows.iter().filter_map(|r| r.get("group")).map(|g| g.to_string()).collect::<HashSet<_>>().len().max(1)
    } else {
        1
    };
    q.buckets(start, end) * groups as u64
}

impl Upstream {
    pub(super) async fn fetch_job(&self, call: &Call, deadline: Option<Instant>) -> Result<Fetched> {
        let q = JobQuery::parse(call.body.as_ref())?;
        let limit = Instant::now() + self.settings.jobs.timeout;
        let deadline = Some(deadline.map_or(limit, |d| d.min(limit)));
        let rows = self.run_validated(call, &q, q.start, q.end, 0, deadline).await?;
        let total = rows.len();
        let body = serde_json::to_vec(&json!({ "conversations": rows, "total": total }))
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Fetched { body: Bytes::from(body), etag: None, last_modified: None, not_modified: false })
    }

    /// Runs the job over `[start, end)`; an incomplete result is split and rerun.
    fn run_validated<'a>(
        &'a self,
        call: &'a Call,
        q: &'a JobQuery,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        depth: u32,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Vec<Value>>> {
        Box::pin(async move {
            let rows = self.run_job(call, q, start, end, deadline).await?;
            let expected = expected_rows(q, start, end, &rows);
            let settings = &self.settings.jobs;
            if rows.len() as f64 >= expected as f64 * settings.min_rows_fraction {
                return Ok(rows);
            }
            let buckets = q.buckets(start, end);
            let interval = format!("{}/{}", rfc3339(start), rfc3339(end));
            if depth >= settings.max_splits || buckets < 2 {
                return Err(Error::BadUpstream(format!(
                    "analytics job over {interval} returned {} of {expected} expected rows, \
                     even after splitting; not stored",
                    rows.len()
                )));
            }
            tracing::warn!(%interval, rows = rows.len(), expected, "analytics job result incomplete; splitting the interval");
            UpstreamStats::bump(&self.stats.job_splits);
            let step = q.step.unwrap_or_else(|| end - start);
            let half = i32::try_from(buckets / 2)
                .map_err(|_| Error::BadUpstream(format!("{interval}: too many buckets to split")))?;
            let mid = start + step * half;
            // The halves run at once: the caller waits for the slower one,
            // not for both in turn. Both run to their end (a failing half
            // does not drop its sibling mid-job, which would leave it
            // running upstream uncancelled).
            let (earlier, later) = futures::join!(
                self.run_validated(call, q, start, mid, depth + 1, deadline),
                self.run_validated(call, q, mid, end, depth + 1, deadline),
            );
            let mut merged = earlier?;
            merged.extend(later?);
            Ok(merged)
        })
    }

    /// Submit, poll until done, read every result page.
    async fn run_job(
        &self,
        call: &Call,
        q: &JobQuery,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Value>> {
        let submit = Call {
            method: Method::Post,
            path: call.path.clone(),
            query: Vec::new(),
            body: Some(q.body_for(start, end)),
            job: false,
            validators: None,
            priority: call.priority,
        };
        let reply: Value = json_of(&self.call(&submit, deadline).await?)?;
        let id = reply
            .get("jobId")
            .and_then(Value::as_str)
            .filter(|id| {
                !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
            .ok_or_else(|| Error::BadUpstream("job submission answered no usable jobId".into()))?
            .to_string();
        UpstreamStats::bump(&self.stats.jobs_submitted);
        let job_path = format!("{}/{id}", call.path);
        let outcome = self.await_job(&id, &job_path, deadline).await;
        if outcome.is_err() {
            self.cancel_job(&job_path).await;
        }
        outcome
    }

    /// A job whose result will not be used (deadline, failed poll) is
    /// cancelled, so it stops costing the platform; best effort, bounded.
    async fn cancel_job(&self, job_path: &str) {
        let cancel = self.platform_json(None, reqwest::Method::DELETE, job_path, None);
        match tokio::time::timeout(CANCEL_TIMEOUT, cancel).await {
            Ok(Ok(_)) => UpstreamStats::bump(&self.stats.jobs_cancelled),
            Ok(Err(e)) => tracing::debug!(job = %job_path, error = %e, "cancelling the job failed"),
            Err(_) => tracing::debug!(job = %job_path, "cancelling the job timed out"),
        }
    }

    /// Polls the submitted job until it is done, then reads every result page.
    async fn await_job(&self, id: &str, job_path: &str, deadline: Option<Instant>) -> Result<Vec<Value>> {
        let settings = &self.settings.jobs;
        let mut delay = settings.poll_initial;
        loop {
            if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                return Err(Error::DeadlineExceeded(format!(
                    "analytics job {id} still running at the deadline"
                )));
            }
            tokio::time::sleep(delay).await;
            let status: Value = json_of(&self.call(&Call::get(job_path), deadline).await?)?;
            match status.get("state").and_then(Value::as_str).unwrap_or("") {
                "FULFILLED" | "COMPLETED" => break,
                state @ ("FAILED" | "CANCELLED" | "EXPIRED") => {
                    return Err(Error::BadUpstream(format!("analytics job {id} ended {state}")));
                }
                _ => {}
            }
            delay = (delay * 2).min(settings.poll_max);
        }

        let mut rows = Vec::new();
        let mut cursor: Option<String> = None;
        // All pages together are held to the one-response limit: a wide
        // interval must not pile up unbounded rows in memory.
        let (max, mut total) = (self.settings.max_response_bytes, 0usize);
        for _ in 0..MAX_RESULT_PAGES {
            let mut page = Call::get(format!("{job_path}/results"));
            if let Some(c) = &cursor {
                page.query.push(("cursor".into(), c.clone()));
            }
            let fetched = self.call(&page, deadline).await?;
            total += fetched.body.len();
            if total > max {
                return Err(Error::BadUpstream(format!(
                    "job {id} results over {max} bytes together (upstream.max_response_bytes)"
                )));
            }
            let mut doc = json_of(&fetched)?;
            match doc.get_mut("conversations").map(Value::take) {
                Some(Value::Array(items)) => rows.extend(items),
                None | Some(Value::Null) => {}
                Some(_) => {
                    return Err(Error::BadUpstream(format!(
                        "job {id} results: conversations is not an array"
                    )))
                }
            }
            cursor = doc.get("cursor").and_then(Value::as_str).filter(|c| !c.is_empty()).map(str::to_string);
            if cursor.is_none() {
                return Ok(rows);
            }
        }
        Err(Error::BadUpstream(format!("job {id} results did not end after {MAX_RESULT_PAGES} pages")))
    }
}

fn json_of(fetched: &Fetched) -> Result<Value> {
    serde_json::from_slice(&fetched.body)
        .map_err(|e| Error::BadUpstream(format!("job answer is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_expected_rows() {
        let body = Bytes::from_static(
            br#"{"interval":"2024-01-01T00:00:00Z/2024-01-01T06:00:00Z","granularity":"PT1H","groupBy":["queueId"]}"#,
        );
        let q = JobQuery::parse(Some(&body)).unwrap();
        assert_eq!(q.buckets(q.start, q.end), 6);
        let rows: Vec<Value> = (0..4).map(|i| json!({"group": {"queueId": format!("q{}", i % 2)}})).collect();
        assert_eq!(expected_rows(&q, q.start, q.end, &rows), 12);
        let half =
            String::from_utf8(q.body_for(q.start, q.start + chrono::Duration::hours(3)).to_vec()).unwrap();
        assert!(half.contains("2024-01-01T00:00:00Z/2024-01-01T03:00:00Z"), "{half}");
        assert!(JobQuery::parse(Some(&Bytes::from_static(b"{}"))).is_err());
        assert!(JobQuery::parse(None).is_err());
    }
}
