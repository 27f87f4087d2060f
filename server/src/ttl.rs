//! TTL policy: how long a stored value counts as fresh, per resource class.
//!
//! - config objects (queues, users, skills): minutes (default 300 s);
//! - real-time state (routing status): under a minute (default 30 s);
//! - analytics queries: a fraction (default 0.95) of the query's granularity,
//!   or of its interval when it has none, so a PT1H query lives about 3400 s;
//! - closed analytics intervals: a query whose interval ended more than
//!   `analytics_settle` ago (default 1 h, the platform's late data) no longer
//!   changes, so it gets its own long class, `analytics_closed` (default
//!   24 h), instead of the granularity rule: dashboards and WFM rollups over
//!   past days stop spending quota on data that cannot change;
//! - every TTL is shortened by a random jitter so keys written together do
//!   not expire together.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::Value;

use crate::catalog::{Kind, TtlClass};
use crate::config::TtlSettings;

#[derive(Debug, Clone)]
pub struct TtlPolicy {
    settings: TtlSettings,
}

impl TtlPolicy {
    pub fn new(settings: TtlSettings) -> Self {
        TtlPolicy { settings }
    }

    /// Freshness lifetime for a value of `kind`, before jitter.
    pub fn base_ttl(&self, kind: &Kind, body: Option<&Value>) -> Duration {
        self.base_ttl_at(kind, body, Utc::now())
    }

    /// [`TtlPolicy::base_ttl`] on the clock `now`.
    pub fn base_ttl_at(&self, kind: &Kind, body: Option<&Value>, now: DateTime<Utc>) -> Duration {
        if let Some(ttl) = kind.ttl {
            return ttl;
        }
        let s = &self.settings;
        match kind.ttl_class {
            TtlClass::Config => s.config,
            TtlClass::Realtime => s.realtime,
            TtlClass::Static => s.r#static,
            TtlClass::Analytics if self.closed(body, now) => s.analytics_closed,
            TtlClass::Analytics => {
                let span = body.and_then(analytics_span).unwrap_or(s.analytics_max);
                span.mul_f64(s.analytics_fraction).clamp(s.analytics_min, s.analytics_max)
            }
        }
    }

    /// Freshness lifetime with jitter applied (never longer than the base).
    pub fn ttl(&self, kind: &Kind, body: Option<&Value>) -> Duration {
        let base = self.base_ttl(kind, body);
        let cut = rand::thread_rng().gen_range(0.0..=self.settings.jitter.max(0.0));
        base.mul_f64(1.0 - cut).max(Duration::from_millis(1))
    }
}

impl TtlPolicy {
    /// Whether an analytics query's interval ended more than the settle
    /// time before `now`.
    fn closed(&self, body: Option<&Value>, now: DateTime<Utc>) -> bool {
        let s = &self.settings;
        if s.analytics_closed.is_zero() {
            return false;
        }
        let Some(end) = body.and_then(interval_end) else { return false };
        chrono::Duration::from_std(s.analytics_settle).is_ok_and(|settle| end + settle < now)
    }
}

/// The end of an analytics query's `start/end` interval.
fn interval_end(body: &Value) -> Option<DateTime<Utc>> {
    let (_, end) = body.get("interval")?.as_str()?.split_once('/')?;
    Some(DateTime::parse_from_rfc3339(end).ok()?.with_timezone(&Utc))
}

/// The time span that an analytics query's result covers per bucket: its
/// `granularity`, else the length of its `interval`.
fn analytics_span(body: &Value) -> Option<Duration> {
    if let Some(g) = body.get("granularity").and_then(Value::as_str) {
        if let Some(d) = iso8601_duration(g) {
            return Some(d);
        }
    }
    let interval = body.get("interval")?.as_str()?;
    let (start, end) = interval.split_once('/')?;
    let start = DateTime::parse_from_rfc3339(start).ok()?;
    let end = DateTime::parse_from_rfc3339(end).ok()?;
    (end - start).to_std().ok()
}

/// Parses the ISO-8601 durations Genesys uses (`PT15M`, `PT1H`, `P1D`, `P7DT12H`).
/// Months and years are refused: their length is not fixed.
pub fn iso8601_duration(s: &str) -> Option<Duration> {
    let rest = s.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut secs = 0u64;
    let mut any = false;
    for (part, units) in [
        (date, &[('W', 604_800u64), ('D', 86_400)][..]),
        (time.unwrap_or(""), &[('H', 3600), ('M', 60), ('S', 1)][..]),
    ] {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() {
                num.push(c);
            } else {
                let unit = units.iter().find(|(u, _)| *u == c)?.1;
                secs = secs.checked_add(num.parse::<u64>().ok()?.checked_mul(unit)?)?;
                num.clear();
                any = true;
            }
        }
        if !num.is_empty() {
            return None;
        }
    }
    if time == Some("") {
        return None;
    }
    any.then(|| Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn policy() -> TtlPolicy {
        TtlPolicy::new(TtlSettings::default())
    }

    #[test]
    fn durations_parse() {
        assert_eq!(iso8601_duration("PT1H"), Some(Duration::from_secs(3600)));
        assert_eq!(iso8601_duration("PT15M"), Some(Duration::from_secs(900)));
        assert_eq!(iso8601_duration("P1DT2H"), Some(Duration::from_secs(93_600)));
        assert_eq!(iso8601_duration("P1M"), None);
        assert_eq!(iso8601_duration("PT"), None);
        assert_eq!(iso8601_duration("1H"), None);
    }

    #[test]
    fn classes_get_their_ttls() {
        let catalog = Catalog::with_presets(&BTreeMap::new()).unwrap();
        let p = policy();
        assert_eq!(p.base_ttl(catalog.get("routing.queue").unwrap(), None), Duration::from_secs(300));
        assert!(p.base_ttl(catalog.get("user.routing_status").unwrap(), None) < Duration::from_secs(60));
        let analytics = catalog.get("analytics.conversations.aggregates").unwrap();
        // While the intervals are open (or just ended): the granularity rule.
        let during = DateTime::parse_from_rfc3339("2023-10-01T00:20:00Z").unwrap().with_timezone(&Utc);
        let hourly = json!({"interval": "2023-10-01T00:00:00Z/2023-10-02T00:00:00Z", "granularity": "PT1H"});
        assert_eq!(p.base_ttl_at(analytics, Some(&hourly), during), Duration::from_secs(3420));
        let no_granularity = json!({"interval": "2023-10-01T00:00:00Z/2023-10-01T00:30:00Z"});
        assert_eq!(p.base_ttl_at(analytics, Some(&no_granularity), during), Duration::from_secs(1710));
    }

    /// 2024-03-10T12:00:00Z, a fixed clock.
    fn noon() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-03-10T12:00:00Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_query_over_yesterday_gets_the_closed_interval_ttl() {
        let catalog = Catalog::with_presets(&BTreeMap::new()).unwrap();
        let analytics = catalog.get("analytics.conversations.aggregates").unwrap();
        let p = policy();
        let yesterday =
            json!({"interval": "2024-03-09T00:00:00Z/2024-03-10T00:00:00Z", "granularity": "PT1H"});
        assert_eq!(p.base_ttl_at(analytics, Some(&yesterday), noon()), Duration::from_secs(24 * 3600));
        // An offset is read as the instant it names (ended 10:30Z: settled).
        let offset = json!({"interval": "2024-03-10T08:00:00+02:00/2024-03-10T12:30:00+02:00"});
        assert_eq!(p.base_ttl_at(analytics, Some(&offset), noon()), Duration::from_secs(24 * 3600));
        // The class is configurable, and 0 turns it off.
        let week = TtlPolicy::new(TtlSettings {
            analytics_closed: Duration::from_secs(7 * 86_400),
            ..Default::default()
        });
        assert_eq!(week.base_ttl_at(analytics, Some(&yesterday), noon()), Duration::from_secs(7 * 86_400));
        let off = TtlPolicy::new(TtlSettings { analytics_closed: Duration::ZERO, ..Default::default() });
        assert_eq!(off.base_ttl_at(analytics, Some(&yesterday), noon()), Duration::from_secs(3420));
    }

    #[test]
    fn a_query_ending_now_or_within_the_settle_time_keeps_the_granularity_rule() {
        let catalog = Catalog::with_presets(&BTreeMap::new()).unwrap();
        let analytics = catalog.get("analytics.conversations.aggregates").unwrap();
        let p = policy();
        let ending_now =
            json!({"interval": "2024-03-10T00:00:00Z/2024-03-10T12:00:00Z", "granularity": "PT1H"});
        assert_eq!(p.base_ttl_at(analytics, Some(&ending_now), noon()), Duration::from_secs(3420));
        // Ended 30 min ago: late data may still arrive (settle 1 h).
        let settling =
            json!({"interval": "2024-03-10T10:00:00Z/2024-03-10T11:30:00Z", "granularity": "PT15M"});
        assert_eq!(p.base_ttl_at(analytics, Some(&settling), noon()), Duration::from_secs(855));
        let future = json!({"interval": "2024-03-10T00:00:00Z/2024-03-11T00:00:00Z", "granularity": "PT1H"});
        assert_eq!(p.base_ttl_at(analytics, Some(&future), noon()), Duration::from_secs(3420));
        // Other classes are untouched by intervals.
        let queue = catalog.get("routing.queue").unwrap();
        assert_eq!(p.base_ttl_at(queue, Some(&ending_now), noon()), Duration::from_secs(300));
    }

    #[test]
    fn jitter_only_shortens() {
        let catalog = Catalog::with_presets(&BTreeMap::new()).unwrap();
        let kind = catalog.get("routing.queue").unwrap();
        let p = policy();
        let ttls: Vec<_> = (0..200).map(|_| p.ttl(kind, None)).collect();
        assert!(ttls.iter().all(|t| *t <= Duration::from_secs(300) && *t >= Duration::from_secs(285)));
        assert!(ttls.iter().any(|t| *t != ttls[0]), "jitter should vary");
    }
}
