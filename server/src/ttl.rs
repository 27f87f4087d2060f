//! TTL policy: how long a stored value counts as fresh, per resource class.
//!
//! - config objects (queues, users, skills): minutes (default 300 s);
//! - real-time state (routing status): under a minute (default 30 s);
//! - analytics queries: a fraction (default 0.95) of the query's granularity,
//!   or of its interval when it has none, so a PT1H query lives about 3400 s;
//! - every TTL is shortened by a random jitter so keys written together do
//!   not expire together.

use std::time::Duration;

use chrono::DateTime;
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
        if let Some(ttl) = kind.ttl {
            return ttl;
        }
        let s = &self.settings;
        match kind.ttl_class {
            TtlClass::Config => s.config,
            TtlClass::Realtime => s.realtime,
            TtlClass::Static => s.r#static,
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
        let hourly = json!({"interval": "2023-10-01T00:00:00Z/2023-10-02T00:00:00Z", "granularity": "PT1H"});
        assert_eq!(p.base_ttl(analytics, Some(&hourly)), Duration::from_secs(3420));
        let no_granularity = json!({"interval": "2023-10-01T00:00:00Z/2023-10-01T00:30:00Z"});
        assert_eq!(p.base_ttl(analytics, Some(&no_granularity)), Duration::from_secs(1710));
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
