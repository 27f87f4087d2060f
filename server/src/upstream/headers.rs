//! What the upstream says about its own quota, read from every response.
//!
//! Genesys sends `inin-ratelimit-count` / `-allowed` / `-reset` (no
//! "remaining": it is allowed − count); other APIs send `X-RateLimit-*` or
//! `RateLimit-*`. A 429 carries `Retry-After` (seconds, or an HTTP date).

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// The quota state one response reported; every field is optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    /// Calls made in the current window (`inin-ratelimit-count`).
    pub count: Option<u32>,
    /// Calls left in the current window.
    pub remaining: Option<u32>,
    /// The budget per window.
    pub allowed: Option<u32>,
    /// Time until the window resets.
    pub reset: Option<Duration>,
    /// `Retry-After`.
    pub retry_after: Option<Duration>,
}

fn number(headers: &HeaderMap, names: &[&str]) -> Option<u64> {
    names.iter().find_map(|n| {
        let raw = headers.get(*n)?.to_str().ok()?.trim();
        // `RateLimit-Remaining` may carry a list ("10, 100;w=60"): take the first.
        raw.split([',', ';']).next()?.trim().parse::<f64>().ok().filter(|v| *v >= 0.0).map(|v| v as u64)
    })
}

/// Reads the rate-limit headers of one response.
pub fn parse(headers: &HeaderMap) -> RateHeaders {
    let allowed = number(headers, &["inin-ratelimit-allowed", "x-ratelimit-limit", "ratelimit-limit"]);
    let count = number(headers, &["inin-ratelimit-count"]);
    let remaining = match (allowed, count) {
        (Some(a), Some(c)) => Some(a.saturating_sub(c)),
        _ => number(headers, &["x-ratelimit-remaining", "ratelimit-remaining"]),
    };
    let reset = number(headers, &["inin-ratelimit-reset", "x-ratelimit-reset", "ratelimit-reset"]).map(|v| {
        // Some APIs send an epoch timestamp rather than a delay.
        if v > 1_000_000_000 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            Duration::from_secs(v.saturating_sub(now))
        } else {
            Duration::from_secs(v)
        }
    });
    RateHeaders {
        count: count.map(|v| v.min(u32::MAX as u64) as u32),
        remaining: remaining.map(|v| v.min(u32::MAX as u64) as u32),
        allowed: allowed.map(|v| v.min(u32::MAX as u64) as u32),
        reset,
        retry_after: retry_after(headers),
    }
}

/// `Retry-After` as a delay: whole seconds, or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = raw.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn genesys_headers() {
        let h = headers(&[
            ("inin-ratelimit-count", "290"),
            ("inin-ratelimit-allowed", "300"),
            ("inin-ratelimit-reset", "61"),
        ]);
        let r = parse(&h);
        assert_eq!(r.remaining, Some(10));
        assert_eq!(r.count, Some(290));
        assert_eq!(r.allowed, Some(300));
        assert_eq!(r.reset, Some(Duration::from_secs(61)));
        assert_eq!(r.retry_after, None);
    }

    #[test]
    fn generic_headers_and_retry_after() {
        let r = parse(&headers(&[("x-ratelimit-remaining", "3"), ("retry-after", "2")]));
        assert_eq!(r.remaining, Some(3));
        assert_eq!(r.retry_after, Some(Duration::from_secs(2)));
        let r = parse(&headers(&[("ratelimit-remaining", "5, 100;w=60")]));
        assert_eq!(r.remaining, Some(5));
        assert_eq!(parse(&headers(&[("retry-after", "soon")])).retry_after, None);
        let past = parse(&headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]));
        assert_eq!(past.retry_after, Some(Duration::ZERO));
        assert_eq!(parse(&HeaderMap::new()), RateHeaders::default());
    }
}
