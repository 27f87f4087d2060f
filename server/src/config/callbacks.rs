//! Change callbacks: HTTP endpoints that receive cache events as signed POSTs
//! (see `crate::callbacks`), for systems that cannot hold a Watch stream.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Secret;

/// One endpoint (`[[callbacks]]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CallbackSettings {
    /// Names the endpoint in metrics, logs, payloads and its Redis keys:
    /// 1-64 of `a-z 0-9 - _`, unique.
    pub name: String,
    /// Where events are POSTed: `https://…`, or `http://` to a loopback
    /// address (or anywhere with `insecure_http`).
    pub url: String,
    /// Signs every POST (HMAC-SHA256, see README "Change callbacks"); at
    /// least 16 bytes.
    pub secret: Secret,
    /// Allow plain `http://` to a non-loopback host (the signature still
    /// protects integrity; the keys travel in the clear).
    pub insecure_http: bool,
    /// What the endpoint hears, as a Watch filter: exact keys, key
    /// prefixes, kinds, tags. At least one must be given.
    pub keys: Vec<String>,
    pub prefixes: Vec<String>,
    pub kinds: Vec<String>,
    pub tags: Vec<String>,
    /// Only INVALIDATED events (no UPDATED): what a CDN purge hook wants.
    pub invalidated_only: bool,
    /// Most events per POST.
    pub max_batch: usize,
    /// How long a first event waits for others to share its POST.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Events kept for the endpoint while it is down or slow; past this the
    /// oldest are dropped, counted, and the endpoint gets a RESYNC event.
    pub backlog: usize,
    /// One POST's deadline.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries back off from `retry_min`, doubling, to `retry_max`
    /// (jittered; a `Retry-After` up to `retry_max` is honoured).
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// The delivery lease: one instance of the fleet delivers; when it
    /// dies, another takes over within about this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the deliverer looks for events when it was not woken
    /// (events are normally announced on the bus at once).
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        CallbackSettings {
            name: String::new(),
            url: String::new(),
            secret: Secret::default(),
            insecure_http: false,
            keys: Vec::new(),
            prefixes: Vec::new(),
            kinds: Vec::new(),
            tags: Vec::new(),
            invalidated_only: false,
            max_batch: 100,
            linger: Duration::from_millis(20),
            backlog: 10_000,
            timeout: Duration::from_secs(5),
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            lease_ttl: Duration::from_secs(10),
            poll: Duration::from_secs(1),
        }
    }
}

/// Most events a backlog may keep (memory: about 0.5 KiB each in Redis).
pub const MAX_BACKLOG: usize = 1_000_000;
/// Most events per POST.
pub const MAX_BATCH: usize = 10_000;

impl CallbackSettings {
    /// Every problem with `callbacks[i]`, each naming the field.
    pub fn problems(&self, i: usize) -> Vec<String> {
        let at = format!("callbacks[{i}]");
        let mut p = Vec::new();
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            p.push(format!("{at}.name {:?}: 1-64 of a-z 0-9 - _", self.name));
        }
        match url::Url::parse(&self.url) {
            Err(_) => p.push(format!("{at}.url {:?} is not a URL", self.url)),
            Ok(u) => {
                let loopback = match u.host() {
                    Some(url::Host::Ipv4(a)) => a.is_loopback(),
                    Some(url::Host::Ipv6(a)) => a.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                };
                match u.scheme() {
                    "https" => {}
                    "http" if loopback || self.insecure_http => {}
                    "http" => p.push(format!(
                        "{at}.url: http:// to a non-loopback host sends keys in the clear; use https:// or set \
                         {at}.insecure_http = true"
                    )),
                    other => p.push(format!("{at}.url: scheme {other:?}, expected https or http")),
                }
            }
        }
        if self.secret.expose().len() < 16 {
            p.push(format!("{at}.secret: at least 16 bytes (it signs every POST)"));
        }
        if self.keys.is_empty() && self.prefixes.is_empty() && self.kinds.is_empty() && self.tags.is_empty() {
            p.push(format!("{at}: name at least one of keys, prefixes, kinds or tags"));
        }
        if !(1..=MAX_BATCH).contains(&self.max_batch) {
            p.push(format!("{at}.max_batch: 1-{MAX_BATCH}"));
        }
        if !(1..=MAX_BACKLOG).contains(&self.backlog) {
            p.push(format!("{at}.backlog: 1-{MAX_BACKLOG}"));
        }
        if self.timeout.is_zero() || self.retry_min.is_zero() || self.retry_max < self.retry_min {
            p.push(format!("{at}: timeout and retry_min must be positive, retry_max at least retry_min"));
        }
        if self.lease_ttl < Duration::from_millis(300) || self.poll.is_zero() {
            p.push(format!("{at}: lease_ttl at least 300ms, poll positive"));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> CallbackSettings {
        CallbackSettings {
            name: "cdn".into(),
            url: "https://cdn.example/hook".into(),
            secret: Secret::new("0123456789abcdef"),
            kinds: vec!["routing.queue".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_endpoint_has_no_problems() {
        assert!(valid().problems(0).is_empty(), "{:?}", valid().problems(0));
        let local = CallbackSettings { url: "http://127.0.0.1:9/x".into(), ..valid() };
        assert!(local.problems(0).is_empty());
    }

    #[test]
    fn each_problem_names_its_field() {
        let bad = CallbackSettings {
            name: "CDN!".into(),
            url: "http://cdn.example/hook".into(),
            secret: Secret::new("short"),
            kinds: vec![],
            backlog: 0,
            ..valid()
        };
        let p = bad.problems(3).join("\n");
        for field in [
            "callbacks[3].name",
            "callbacks[3].url",
            "callbacks[3].secret",
            "callbacks[3]: name at least",
            "callbacks[3].backlog",
        ] {
            assert!(p.contains(field), "{field} not named in:\n{p}");
        }
        let insecure =
            CallbackSettings { url: "http://cdn.example/hook".into(), insecure_http: true, ..valid() };
        assert!(insecure.problems(0).is_empty());
    }
}
