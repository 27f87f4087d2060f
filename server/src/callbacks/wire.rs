//! What an endpoint receives: the JSON body and its signature. This is a
//! public contract (README "Change callbacks"); change it only additively.
//!
//! ```text
//! POST <url>
//! content-type: application/json
//! x-cxcache-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//!
//! {"endpoint":"cdn","events":[
//!   {"id":"1764612345678-0","type":"INVALIDATED","keys":["prod:routing.queue:42:full"],
//!    "tag":"queue:42","reason":"purge","at_ms":1764612345678},
//!   {"id":"resync-1764612399000-3","type":"RESYNC","dropped":120}]}
//! ```
//!
//! Event ids increase and are stable across retries: an endpoint dedupes by
//! them (delivery is at least once). A RESYNC event says events were lost
//! (the backlog was full, `dropped` of them; null when unknown, as after
//! events the outbox could not take): re-read whatever the endpoint mirrors.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::bus::{Event, EventKind};
use crate::store::{Cursor, Logged};

/// The request header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-cxcache-signature";

/// One event as written to the outbox (the id is added at delivery).
#[derive(Debug, Serialize)]
pub struct WireEvent<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub keys: Vec<&'a String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<&'a str>,
    pub reason: &'a str,
    pub at_ms: i64,
}

impl<'a> WireEvent<'a> {
    /// `event` narrowed to `keys` (those an endpoint's filter selected).
    pub fn new(event: &'a Event, keys: Vec<&'a String>) -> WireEvent<'a> {
        WireEvent {
            kind: match event.kind {
                EventKind::Invalidated => "INVALIDATED",
                EventKind::Updated => "UPDATED",
            },
            keys,
            prefix: event.prefix.as_deref(),
            tag: event.tag.as_deref(),
            reason: &event.reason,
            at_ms: event.at_ms,
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("plain data serializes"))
    }
}

/// How many events were lost between `after` and the first of `batch`:
/// None for none, Some(None) when unknown (the log was reset).
pub fn lost(after: &Cursor, batch: &[Logged]) -> Option<Option<u64>> {
    let first = batch.first()?;
    match first.n.checked_sub(after.n + 1) {
        Some(0) => None,
        Some(n) => Some(Some(n)),
        None => Some(None),
    }
}

/// The body of one POST: `batch` after `after`, a RESYNC first when events
/// were lost in between.
pub fn body(endpoint: &str, after: &Cursor, batch: &[Logged]) -> Bytes {
    let mut events: Vec<serde_json::Value> = Vec::with_capacity(batch.len() + 1);
    if let (Some(dropped), Some(first)) = (lost(after, batch), batch.first()) {
        events.push(serde_json::json!({
            "id": format!("resync-{}", first.id),
            "type": "RESYNC",
            "dropped": dropped,
        }));
    }
    for e in batch {
        let mut value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&e.payload).unwrap_or_default();
        value.insert("id".into(), e.id.clone().into());
        events.push(value.into());
    }
    let body = serde_json::json!({ "endpoint": endpoint, "events": events });
    Bytes::from(serde_json::to_vec(&body).expect("plain data serializes"))
}

/// The signature header's value for `body` sent at `unix_s`.
pub fn signature(secret: &[u8], unix_s: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(unix_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={unix_s},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(id: &str, n: u64) -> Logged {
        Logged { id: id.into(), n, payload: Bytes::from_static(br#"{"type":"INVALIDATED","keys":["k"]}"#) }
    }

    /// A known vector, so receivers in other languages can check theirs:
    /// HMAC-SHA256("0123456789abcdef", "1700000000.{}").
    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        let sig = signature(b"0123456789abcdef", 1_700_000_000, b"{}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef").unwrap();
        mac.update(b"1700000000.{}");
        assert_eq!(sig, format!("t=1700000000,v1={}", hex::encode(mac.finalize().into_bytes())));
        assert_ne!(sig, signature(b"0123456789abcdeX", 1_700_000_000, b"{}"));
        assert_ne!(sig, signature(b"0123456789abcdef", 1_700_000_001, b"{}"));
    }

    #[test]
    fn events_carry_their_log_id_and_a_gap_leads_with_resync() {
        let after = Cursor { id: "1-0".into(), n: 4 };
        let one: serde_json::Value =
            serde_json::from_slice(&body("cdn", &after, &[logged("9-0", 5)])).unwrap();
        assert_eq!(one["endpoint"], "cdn");
        assert_eq!(one["events"].as_array().unwrap().len(), 1);
        assert_eq!(one["events"][0]["id"], "9-0");
        assert_eq!(one["events"][0]["type"], "INVALIDATED");

        let gap: serde_json::Value =
            serde_json::from_slice(&body("cdn", &after, &[logged("9-0", 8), logged("9-1", 9)])).unwrap();
        assert_eq!(gap["events"][0]["type"], "RESYNC");
        assert_eq!(gap["events"][0]["dropped"], 3);
        assert_eq!(gap["events"][0]["id"], "resync-9-0");
        assert_eq!(gap["events"][1]["id"], "9-0");
        // A log that started over (its count below the cursor): lost, count unknown.
        let reset: serde_json::Value =
            serde_json::from_slice(&body("cdn", &after, &[logged("9-0", 1)])).unwrap();
        assert_eq!(reset["events"][0]["type"], "RESYNC");
        assert!(reset["events"][0]["dropped"].is_null());
        // The very first delivery starts at ordinal 1: nothing lost.
        assert_eq!(lost(&Cursor::default(), &[logged("1-0", 1)]), None);
    }
}
