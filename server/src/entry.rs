//! The stored form of a cached value: the canonical JSON plus what is
//! needed to judge and revalidate it. Encoded with prost so the format can
//! grow fields without breaking entries already in Redis.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use crate::error::{Error, Result};

#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    /// Canonical JSON bytes served to clients.
    #[prost(bytes = "bytes", tag = "1")]
    pub value: Bytes,
    /// When the value was fetched upstream (unix ms).
    #[prost(int64, tag = "2")]
    pub stored_at_ms: i64,
    /// Until when the value is fresh (unix ms); after that it may only be
    /// served stale.
    #[prost(int64, tag = "3")]
    pub fresh_until_ms: i64,
    /// Tags for purge-by-tag.
    #[prost(string, repeated, tag = "4")]
    pub tags: Vec<String>,
    /// Upstream validators for conditional revalidation.
    #[prost(string, tag = "5")]
    pub etag: String,
    #[prost(string, tag = "6")]
    pub last_modified: String,
    /// How long the upstream fetch took (ms): probabilistic early refresh
    /// starts refreshing earlier for values that are slow to fetch.
    #[prost(int64, tag = "7")]
    pub fetch_ms: i64,
    /// The upstream answered 404: a remembered absence (no value).
    #[prost(bool, tag = "8")]
    pub not_found: bool,
}

pub use crate::clock::now_ms;

impl Entry {
    pub fn new(value: Bytes, ttl: Duration, tags: Vec<String>) -> Self {
        let now = now_ms();
        Entry {
            value,
            stored_at_ms: now,
            fresh_until_ms: now + ttl.as_millis() as i64,
            tags,
            etag: String::new(),
            last_modified: String::new(),
            fetch_ms: 0,
            not_found: false,
        }
    }

    /// A remembered 404, fresh for `ttl`.
    pub fn not_found(ttl: Duration, tags: Vec<String>) -> Self {
        Entry { not_found: true, ..Entry::new(Bytes::new(), ttl, tags) }
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(self.encode_to_vec())
    }

    pub fn decode_from(bytes: Bytes) -> Result<Self> {
        <Entry as Message>::decode(bytes).map_err(|e| Error::Store(format!("corrupt entry: {e}")))
    }

    pub fn is_fresh(&self, now_ms: i64) -> bool {
        now_ms < self.fresh_until_ms
    }

    pub fn age(&self, now_ms: i64) -> Duration {
        Duration::from_millis((now_ms - self.stored_at_ms).max(0) as u64)
    }

    /// How far past its freshness the value is (zero while fresh).
    pub fn staleness(&self, now_ms: i64) -> Duration {
        Duration::from_millis((now_ms - self.fresh_until_ms).max(0) as u64)
    }

    pub fn ttl_remaining(&self, now_ms: i64) -> Duration {
        Duration::from_millis((self.fresh_until_ms - now_ms).max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_freshness() {
        let e = Entry::new(Bytes::from_static(b"{}"), Duration::from_secs(10), vec!["queue:1".into()]);
        let d = Entry::decode_from(e.encode()).unwrap();
        assert_eq!(d, e);
        assert!(d.is_fresh(d.stored_at_ms + 9_999));
        assert!(!d.is_fresh(d.stored_at_ms + 10_000));
        assert_eq!(d.ttl_remaining(d.stored_at_ms + 4_000), Duration::from_secs(6));
        assert!(Entry::decode_from(Bytes::from_static(b"\xff\xff\xff")).is_err());
    }
}
