//! `POST /api/v2/analytics/conversations/aggregates/query`: synchronous
//! aggregates whose numbers are a pure function of the query's meaning: the
//! same instants (whatever offset they are written in), granularity, groups,
//! filter and metrics always give the same numbers, whatever the key order.

use axum::body::Bytes;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::{json, Map, Value};

use crate::canonical::{canonical_json, stable_u64};
use crate::error::ApiError;
use crate::extract::json_object;
use crate::ids::{queue_id, user_id};
use crate::state::SharedState;
use crate::timefmt::rfc3339_utc;

const MAX_BUCKETS: i64 = 1000;
const MAX_GROUPS: usize = 100;

pub(super) fn router() -> Router<SharedState> {
    Router::new().route("/api/v2/analytics/conversations/aggregates/query", post(aggregates))
}

async fn aggregates(body: Bytes) -> Result<Json<Value>, ApiError> {
    let query = json_object(&body)?;
    Ok(Json(AggregateQuery::parse(&query)?.answer()))
}

/// A `[start, end)` time range.
type Span = (DateTime<Utc>, DateTime<Utc>);

/// A validated aggregate query.
#[derive(Debug, Clone)]
struct AggregateQuery {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    granularity: Option<ChronoDuration>,
    group_by: Vec<String>,
    filter: Value,
    metrics: Vec<String>,
}

fn string_list(v: Option<&Value>, field: &str) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::bad_request(format!("'{field}' must be an array of strings"));
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().filter(|s| !s.is_empty()).map(str::to_string).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

impl AggregateQuery {
    fn parse(q: &Value) -> Result<Self, ApiError> {
        let interval = q
            .get("interval")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("'interval' is required (ISO-8601 start/end)"))?;
        let (start, end) = parse_interval(interval)?;
        let granularity = match q.get("granularity") {
            None | Some(Value::Null) => None,
            Some(Value::String(g)) => Some(
                parse_iso_duration(g)
                    .ok_or_else(|| ApiError::bad_request(format!("Unsupported granularity '{g}'")))?,
            ),
            Some(_) => return Err(ApiError::bad_request("'granularity' must be an ISO-8601 duration")),
        };
        let filter = match q.get("filter") {
            None | Some(Value::Null) => Value::Null,
            Some(f @ Value::Object(_)) => f.clone(),
            Some(_) => return Err(ApiError::bad_request("'filter' must be an object")),
        };
        let metrics = string_list(q.get("metrics"), "metrics")?;
        if metrics.is_empty() {
            return Err(ApiError::bad_request("'metrics' must list at least one metric"));
        }
        let query = Self {
            start,
            end,
            granularity,
            group_by: string_list(q.get("groupBy"), "groupBy")?,
            filter,
            metrics,
        };
        query.buckets()?;
        Ok(query)
    }

    /// The data intervals: one per granularity step, or the whole interval.
    fn buckets(&self) -> Result<Vec<Span>, ApiError> {
        let Some(step) = self.granularity else {
            return Ok(vec![(self.start, self.end)]);
        };
        let span = (self.end - self.start).num_milliseconds();
        let step_ms = step.num_milliseconds().max(1);
        if span.saturating_add(step_ms - 1) / step_ms > MAX_BUCKETS {
            return Err(ApiError::bad_request(format!(
                "The interval holds more than {MAX_BUCKETS} granularity steps"
            )));
        }
        let mut out = Vec::new();
        let mut at = self.start;
        while at < self.end {
            let next = at.checked_add_signed(step).map_or(self.end, |n| n.min(self.end));
            out.push((at, next));
            at = next;
        }
        Ok(out)
    }

    fn answer(&self) -> Value {
        let buckets = self.buckets().unwrap_or_default();
        let filter = canonical_json(&self.filter);
        let results: Vec<Value> = groups(&self.group_by, &self.filter)
            .into_iter()
            .map(|group| {
                let group_key = canonical_json(&Value::Object(group.clone()));
                let data: Vec<Value> = buckets
                    .iter()
                    .map(|(from, to)| {
                        let (from_s, to_s) = (rfc3339_utc(from), rfc3339_utc(to));
                        let metrics: Vec<Value> = self
                            .metrics
                            .iter()
                            .map(|m| {
                                let seed = stable_u64(&["aggregate", m, &from_s, &to_s, &group_key, &filter]);
                                json!({ "metric": m, "stats": stats(m, seed) })
                            })
                            .collect();
                        json!({ "interval": format!("{from_s}/{to_s}"), "metrics": metrics })
                    })
                    .collect();
                json!({ "group": group, "data": data })
            })
            .collect();
        json!({ "results": results })
    }
}

/// Stats shaped like the platform's: `t*` timings carry count/sum/min/max,
/// `o*` observations and `n*` counts carry a count.
pub(super) fn stats(metric: &str, seed: u64) -> Value {
    if metric.starts_with('t') {
        let count = 1 + seed % 50;
        let avg = 30_000 + (seed >> 16) % 270_000;
        json!({
            "count": count,
            "sum": avg * count,
            "max": avg + (seed >> 40) % 60_000,
            "min": avg - (seed >> 48) % 30_000,
        })
    } else if metric.starts_with('o') {
        json!({ "count": seed % 20 })
    } else {
        json!({ "count": seed % 200 })
    }
}

/// Every combination of group values (capped at [`MAX_GROUPS`]); one empty
/// group without `groupBy`.
pub(super) fn groups(group_by: &[String], filter: &Value) -> Vec<Map<String, Value>> {
    let mut out = vec![Map::new()];
    for dim in group_by {
        let values = dimension_values(dim, filter);
        out = out
            .iter()
            .flat_map(|g| {
                values.iter().map(move |v| {
                    let mut g = g.clone();
                    g.insert(dim.clone(), v.clone());
                    g
                })
            })
            .take(MAX_GROUPS)
            .collect();
    }
    out
}

/// Values a dimension takes: those the filter names, else a seeded default set.
fn dimension_values(dim: &str, filter: &Value) -> Vec<Value> {
    let mut named = Vec::new();
    collect_filter_values(filter, dim, &mut named);
    if !named.is_empty() {
        return named;
    }
    let values: Vec<String> = match dim {
        "queueId" => (0..3).map(queue_id).collect(),
        "userId" => (0..3).map(user_id).collect(),
        "mediaType" => ["voice", "chat", "email"].map(String::from).to_vec(),
        "direction" => ["inbound", "outbound"].map(String::from).to_vec(),
        other => vec![format!("{other}-1"), format!("{other}-2")],
    };
    values.into_iter().map(Value::String).collect()
}

fn collect_filter_values(v: &Value, dim: &str, out: &mut Vec<Value>) {
    match v {
        Value::Object(map) => {
            if map.get("dimension").and_then(Value::as_str) == Some(dim) {
                if let Some(value @ Value::String(_)) = map.get("value") {
                    if !out.contains(value) {
                        out.push(value.clone());
                    }
                }
            }
            map.values().for_each(|child| collect_filter_values(child, dim, out));
        }
        Value::Array(items) => items.iter().for_each(|child| collect_filter_values(child, dim, out)),
        _ => {}
    }
}

/// `start/end` or `start/duration`, RFC 3339 instants; end must be after start.
pub(super) fn parse_interval(s: &str) -> Result<Span, ApiError> {
    let bad = || ApiError::bad_request(format!("Invalid interval '{s}' (expected ISO-8601 start/end)"));
    let (a, b) = s.split_once('/').ok_or_else(bad)?;
    let start = DateTime::parse_from_rfc3339(a.trim()).map_err(|_| bad())?.with_timezone(&Utc);
    let b = b.trim();
    let end = if b.starts_with('P') {
        start.checked_add_signed(parse_iso_duration(b).ok_or_else(bad)?).ok_or_else(bad)?
    } else {
        DateTime::parse_from_rfc3339(b).map_err(|_| bad())?.with_timezone(&Utc)
    };
    if end <= start {
        return Err(ApiError::bad_request(format!("Interval '{s}' ends before it starts")));
    }
    Ok((start, end))
}

/// Positive ISO-8601 durations made of weeks, days, hours, minutes and whole
/// seconds (`P1W`, `P1D`, `PT1H`, `P1DT12H`, `PT30M`); years and months are not
/// supported.
pub(super) fn parse_iso_duration(s: &str) -> Option<ChronoDuration> {
    let rest = s.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return None,
        None => (rest, None),
    };
    if date.is_empty() && time.is_none() {
        return None;
    }
    let mut secs = components(date, &[('W', 604_800), ('D', 86_400)])?;
    if let Some(t) = time {
        secs = secs.checked_add(components(t, &[('H', 3_600), ('M', 60), ('S', 1)])?)?;
    }
    (secs > 0).then(|| ChronoDuration::try_seconds(secs)).flatten()
}

/// Sums `<digits><unit>` parts whose units appear in `units` order.
fn components(s: &str, units: &[(char, i64)]) -> Option<i64> {
    let mut total: i64 = 0;
    let mut digits = String::new();
    let mut next_unit = 0;
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let offset = units.get(next_unit..)?.iter().position(|(u, _)| *u == c)?;
        let (_, factor) = units[next_unit + offset];
        let n: i64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(factor)?)?;
        digits.clear();
        next_unit += offset + 1;
    }
    digits.is_empty().then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &str) -> Result<Value, ApiError> {
        Ok(AggregateQuery::parse(&serde_json::from_str(body).unwrap())?.answer())
    }

    #[test]
    fn durations() {
        assert_eq!(parse_iso_duration("PT1H"), Some(ChronoDuration::hours(1)));
        assert_eq!(parse_iso_duration("P1DT2H"), Some(ChronoDuration::hours(26)));
        assert_eq!(parse_iso_duration("P1W"), Some(ChronoDuration::days(7)));
        for bad in ["P", "PT", "P1M", "PT1X", "PT1", "1H", "PT0S", "PT1M1H"] {
            assert_eq!(parse_iso_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn same_meaning_same_numbers() {
        let a = answer(
            r#"{"interval":"2024-01-01T00:00:00Z/2024-01-01T03:00:00Z","granularity":"PT1H",
                "metrics":["nOffered","tHandle"],"groupBy":["queueId"]}"#,
        )
        .unwrap();
        let b = answer(
            r#"{"groupBy":["queueId"],"metrics":["nOffered","tHandle"],"granularity":"PT1H",
                "interval":"2024-01-01T02:00:00.000+02:00/PT3H"}"#,
        )
        .unwrap();
        assert_eq!(a, b);
        let results = a["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(results[0]["data"].as_array().unwrap().len(), 3);
        assert_eq!(results[0]["data"][0]["interval"], "2024-01-01T00:00:00.000Z/2024-01-01T01:00:00.000Z");
        let c = answer(r#"{"interval":"2024-01-02T00:00:00Z/2024-01-02T03:00:00Z","granularity":"PT1H","metrics":["nOffered","tHandle"],"groupBy":["queueId"]}"#).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn filter_values_become_groups() {
        let a = answer(
            r#"{"interval":"2024-01-01T00:00:00Z/2024-01-02T00:00:00Z","metrics":["nOffered"],"groupBy":["queueId"],
                "filter":{"type":"or","predicates":[{"dimension":"queueId","value":"q1"},{"dimension":"queueId","value":"q2"}]}}"#,
        )
        .unwrap();
        let groups: Vec<&Value> =
            a["results"].as_array().unwrap().iter().map(|r| &r["group"]["queueId"]).collect();
        assert_eq!(groups, ["q1", "q2"]);
    }

    #[test]
    fn rejects_bad_queries() {
        for bad in [
            r#"{"metrics":["nOffered"]}"#,
            r#"{"interval":"yesterday","metrics":["nOffered"]}"#,
            r#"{"interval":"2024-01-02T00:00:00Z/2024-01-01T00:00:00Z","metrics":["nOffered"]}"#,
            r#"{"interval":"2024-01-01T00:00:00Z/2024-01-02T00:00:00Z","metrics":[]}"#,
            r#"{"interval":"2024-01-01T00:00:00Z/2024-01-02T00:00:00Z","metrics":[1]}"#,
            r#"{"interval":"2024-01-01T00:00:00Z/2024-02-01T00:00:00Z","granularity":"PT1M","metrics":["nOffered"]}"#,
            r#"{"interval":"2024-01-01T00:00:00Z/2024-01-02T00:00:00Z","granularity":"P1M","metrics":["nOffered"]}"#,
        ] {
            assert!(answer(bad).is_err(), "{bad}");
        }
    }
}
