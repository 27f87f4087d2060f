//! Async analytics detail jobs, as the platform runs them:
//! `POST /api/v2/analytics/conversations/details/jobs` → `{jobId}`,
//! `GET .../jobs/{jobId}` → `state` (QUEUED, PENDING, FULFILLED, CANCELLED),
//! `GET .../jobs/{jobId}/results?cursor=` pages rows by cursor,
//! `DELETE .../jobs/{jobId}` cancels.
//!
//! A job takes `job_duration × time_scale` to run (tests scale it down). Its
//! rows are a pure function of the query: one per granularity bucket and
//! group, bucket-major, so a client can tell from the interval and grouping
//! how many rows a complete result has. [`Jobs::set_row_limit`] makes later
//! jobs silently cut their result, like the platform's result-size limits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde_json::{json, Value};
use url::form_urlencoded;

use super::analytics::{groups, parse_interval, parse_iso_duration, stats};
use crate::canonical::{canonical_json, stable_u64};
use crate::error::ApiError;
use crate::extract::{json_object, path_param};
use crate::state::SharedState;
use crate::timefmt::rfc3339_utc;

/// Most granularity buckets one job may span.
const MAX_BUCKETS: i64 = 2000;
/// Jobs kept; the oldest are dropped past this.
const MAX_JOBS: usize = 1000;
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

const JOBS: &str = "/api/v2/analytics/conversations/details/jobs";

pub(super) fn router() -> Router<SharedState> {
    Router::new()
        .route(JOBS, post(submit))
        .route(&format!("{JOBS}/{{jobId}}"), get(status).delete(cancel))
        .route(&format!("{JOBS}/{{jobId}}/results"), get(results))
}

#[derive(Debug)]
struct Job {
    rows: Arc<Vec<Value>>,
    submitted: Instant,
    run_time: Duration,
    cancelled: bool,
}

impl Job {
    fn state(&self, now: Instant) -> &'static str {
        let elapsed = now.duration_since(self.submitted);
        if self.cancelled {
            "CANCELLED"
        } else if elapsed >= self.run_time {
            "FULFILLED"
        } else if elapsed < self.run_time / 4 {
            "QUEUED"
        } else {
            "PENDING"
        }
    }
}

/// Submitted jobs and the truncation setting.
#[derive(Debug, Default)]
pub(crate) struct Jobs {
    jobs: Mutex<HashMap<String, Job>>,
    order: Mutex<Vec<String>>,
    row_limit: Mutex<Option<usize>>,
    submitted: Mutex<u64>,
}

impl Jobs {
    /// Jobs submitted from now on keep at most `limit` rows (`None`: all).
    pub fn set_row_limit(&self, limit: Option<usize>) {
        *self.row_limit.lock() = limit;
    }

    /// How many jobs were submitted so far.
    pub fn submitted(&self) -> u64 {
        *self.submitted.lock()
    }

    /// How many jobs were cancelled (`DELETE`) so far.
    pub fn cancelled(&self) -> u64 {
        self.jobs.lock().values().filter(|j| j.cancelled).count() as u64
    }

    fn insert(&self, id: String, job: Job) {
        let mut order = self.order.lock();
        let mut jobs = self.jobs.lock();
        if order.len() >= MAX_JOBS {
            let old = order.remove(0);
            jobs.remove(&old);
        }
        order.push(id.clone());
        jobs.insert(id, job);
        *self.submitted.lock() += 1;
    }
}

type IdParam = Result<Path<String>, PathRejection>;

async fn submit(State(s): State<SharedState>, body: Bytes) -> Result<Response, ApiError> {
    let query = json_object(&body)?;
    let mut rows = rows_for(&query)?;
    if let Some(limit) = *s.jobs.row_limit.lock() {
        rows.truncate(limit);
    }
    let scale =
        if s.config.time_scale.is_finite() && s.config.time_scale >= 0.0 { s.config.time_scale } else { 1.0 };
    let run_time = s.config.job_duration.mul_f64(scale);
    let id = uuid::Uuid::new_v4().to_string();
    s.jobs.insert(
        id.clone(),
        Job { rows: Arc::new(rows), submitted: Instant::now(), run_time, cancelled: false },
    );
    Ok((StatusCode::ACCEPTED, Json(json!({ "jobId": id }))).into_response())
}

fn unknown(id: &str) -> ApiError {
    ApiError::not_found(format!("Unable to find an analytics job with id '{id}'"))
}

async fn status(State(s): State<SharedState>, id: IdParam) -> Result<Json<Value>, ApiError> {
    let id = path_param(id)?;
    let jobs = s.jobs.jobs.lock();
    let job = jobs.get(&id).ok_or_else(|| unknown(&id))?;
    Ok(Json(json!({ "id": id, "state": job.state(Instant::now()) })))
}

async fn cancel(State(s): State<SharedState>, id: IdParam) -> Result<Response, ApiError> {
    let id = path_param(id)?;
    let mut jobs = s.jobs.jobs.lock();
    let job = jobs.get_mut(&id).ok_or_else(|| unknown(&id))?;
    job.cancelled = true;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn results(
    State(s): State<SharedState>,
    id: IdParam,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let id = path_param(id)?;
    let rows = {
        let jobs = s.jobs.jobs.lock();
        let job = jobs.get(&id).ok_or_else(|| unknown(&id))?;
        let state = job.state(Instant::now());
        if state != "FULFILLED" {
            return Err(ApiError::bad_request(format!("Job {id} is {state}, not FULFILLED")));
        }
        job.rows.clone()
    };
    let mut offset = 0usize;
    let mut page_size = DEFAULT_PAGE_SIZE;
    for (k, v) in form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "cursor" if !v.is_empty() => {
                offset = v
                    .strip_prefix('c')
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n <= rows.len())
                    .ok_or_else(|| ApiError::bad_request(format!("Invalid cursor '{v}'")))?;
            }
            "pageSize" => {
                page_size = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                    .ok_or_else(|| ApiError::bad_request(format!("Invalid pageSize '{v}'")))?;
            }
            _ => {}
        }
    }
    let end = (offset + page_size).min(rows.len());
    let mut body = json!({ "conversations": rows[offset..end].to_vec() });
    if end < rows.len() {
        body["cursor"] = json!(format!("c{end}"));
    }
    Ok(Json(body))
}

/// Every row of a complete result: one per bucket and group, bucket-major.
fn rows_for(query: &Value) -> Result<Vec<Value>, ApiError> {
    let interval = query
        .get("interval")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("'interval' is required (ISO-8601 start/end)"))?;
    let (start, end) = parse_interval(interval)?;
    let step = match query.get("granularity") {
        None | Some(Value::Null) => end - start,
        Some(Value::String(g)) => parse_iso_duration(g)
            .ok_or_else(|| ApiError::bad_request(format!("Unsupported granularity '{g}'")))?,
        Some(_) => return Err(ApiError::bad_request("'granularity' must be an ISO-8601 duration")),
    };
    let step_ms = step.num_milliseconds().max(1);
    if (end - start).num_milliseconds().saturating_add(step_ms - 1) / step_ms > MAX_BUCKETS {
        return Err(ApiError::bad_request(format!("The interval holds more than {MAX_BUCKETS} buckets")));
    }
    let group_by: Vec<String> = match query.get("groupBy") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::bad_request("'groupBy' must be an array of strings"))?,
        Some(_) => return Err(ApiError::bad_request("'groupBy' must be an array of strings")),
    };
    let filter = query.get("filter").cloned().unwrap_or(Value::Null);
    let groups = groups(&group_by, &filter);
    let filter_key = canonical_json(&filter);
    let mut rows = Vec::new();
    let mut at = start;
    while at < end {
        let next = at.checked_add_signed(step).map_or(end, |n| n.min(end));
        let (from_s, to_s) = (rfc3339_utc(&at), rfc3339_utc(&next));
        for group in &groups {
            let group_key = canonical_json(&Value::Object(group.clone()));
            let seed = stable_u64(&["job", &from_s, &to_s, &group_key, &filter_key]);
            rows.push(json!({
                "conversationId": format!("{seed:016x}"),
                "conversationStart": from_s,
                "interval": format!("{from_s}/{to_s}"),
                "group": group,
                "metrics": [{ "metric": "tHandle", "stats": stats("tHandle", seed) }],
            }));
        }
        at = next;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_per_bucket_and_group() {
        let q = json!({"interval": "2024-01-01T00:00:00Z/2024-01-01T06:00:00Z", "granularity": "PT1H",
                       "groupBy": ["queueId"]});
        let rows = rows_for(&q).unwrap();
        assert_eq!(rows.len(), 6 * 3);
        assert_eq!(rows[0]["conversationStart"], "2024-01-01T00:00:00.000Z");
        assert_eq!(rows_for(&q).unwrap(), rows, "deterministic");
        let whole = json!({"interval": "2024-01-01T00:00:00Z/2024-01-01T06:00:00Z"});
        assert_eq!(rows_for(&whole).unwrap().len(), 1);
        assert!(rows_for(&json!({"granularity": "PT1H"})).is_err());
    }
}
