//! One structured line per purge (target `cxcache::audit`): with JSON logs
//! every field is a top-level field of the line; lists are JSON arrays
//! encoded as strings.

use super::Purge;

pub fn purge(p: &Purge, matched: usize, purged: u64) {
    let list = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
    tracing::info!(
        target: "cxcache::audit",
        audit = "purge",
        actor = %p.actor,
        reason = %p.reason,
        event_id = p.event_id.as_deref().unwrap_or(""),
        keys = %list(&p.keys),
        prefixes = %list(&p.prefixes),
        tags = %list(&p.tags),
        matched,
        purged,
        "purge"
    );
}
