//! What a purge may name: checked before anything is read or purged, so
//! bad input changes nothing.

use super::Purge;
use crate::error::{Error, FieldViolation, Result};
use crate::keys::Key;

/// Most keys one Invalidate call may name directly.
pub const MAX_NAMED: usize = 1000;
/// Prefixes or tags one call may name (each can match many keys).
pub const MAX_PATTERNS: usize = 100;
/// Longest tag.
pub const MAX_TAG_LEN: usize = 256;
/// Longest key or prefix (a logical key is env + kind + id + variant + hash).
pub const MAX_KEY_LEN: usize = 512;
/// Longest `reason`: it is copied into the audit line and every bus event.
pub const MAX_REASON_LEN: usize = 1024;

/// Checks `p` against the namespace `env`.
pub fn validate(env: &str, p: &Purge) -> Result<()> {
    let mut bad = Vec::new();
    if p.keys.is_empty() && p.prefixes.is_empty() && p.tags.is_empty() {
        bad.push(FieldViolation::new("keys", "name at least one key, prefix or tag"));
    }
    if p.keys.len() > MAX_NAMED {
        bad.push(FieldViolation::new("keys", format!("at most {MAX_NAMED} keys per call")));
    }
    if p.prefixes.len() > MAX_PATTERNS {
        bad.push(FieldViolation::new("prefixes", format!("at most {MAX_PATTERNS} prefixes per call")));
    }
    if p.tags.len() > MAX_PATTERNS {
        bad.push(FieldViolation::new("tags", format!("at most {MAX_PATTERNS} tags per call")));
    }
    if p.reason.len() > MAX_REASON_LEN {
        bad.push(FieldViolation::new("reason", format!("at most {MAX_REASON_LEN} bytes")));
    }
    let ns = format!("{env}:");
    for (i, key) in p.keys.iter().enumerate() {
        if key.len() > MAX_KEY_LEN {
            bad.push(FieldViolation::new(format!("keys[{i}]"), format!("at most {MAX_KEY_LEN} bytes")));
            continue;
        }
        match Key::parse(key) {
            None => {
                bad.push(FieldViolation::new(format!("keys[{i}]"), "not a cxcache key ({env}:{kind}:{id}…)"))
            }
            Some(k) if k.env != env => bad.push(FieldViolation::new(
                format!("keys[{i}]"),
                format!("not in this server's namespace {ns:?}"),
            )),
            Some(_) => {}
        }
    }
    for (i, prefix) in p.prefixes.iter().enumerate() {
        // A prefix must at least name a kind: `prod:` alone would purge
        // the whole namespace, which is a deployment, not a purge.
        if prefix.len() > MAX_KEY_LEN {
            bad.push(FieldViolation::new(format!("prefixes[{i}]"), format!("at most {MAX_KEY_LEN} bytes")));
        } else if !prefix.starts_with(&ns) || prefix.len() <= ns.len() {
            bad.push(FieldViolation::new(
                format!("prefixes[{i}]"),
                format!("must start with {ns:?} and name at least part of a kind"),
            ));
        }
    }
    for (i, tag) in p.tags.iter().enumerate() {
        if tag.is_empty()
            || tag.len() > MAX_TAG_LEN
            || tag.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            bad.push(FieldViolation::new(format!("tags[{i}]"), "1-256 characters, no spaces"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(p: Purge) -> Vec<String> {
        match validate("prod", &p) {
            Ok(()) => vec![],
            Err(Error::InvalidArgument(v)) => v.into_iter().map(|v| v.field).collect(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn purges_name_something_in_this_namespace() {
        assert_eq!(fields(Purge::default()), ["keys"]);
        let p = |keys: &[&str], prefixes: &[&str], tags: &[&str]| Purge {
            keys: keys.iter().map(|s| s.to_string()).collect(),
            prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert!(fields(p(&["prod:routing.queue:q1:full"], &["prod:routing."], &["queue:q1"])).is_empty());
        assert_eq!(fields(p(&["dev:routing.queue:q1:full"], &[], &[])), ["keys[0]"]);
        assert_eq!(fields(p(&["prod:routing"], &[], &[])), ["keys[0]"]);
        assert_eq!(fields(p(&[], &["prod:"], &[])), ["prefixes[0]"]);
        assert_eq!(fields(p(&[], &["dev:routing"], &[])), ["prefixes[0]"]);
        assert_eq!(fields(p(&[], &[], &["a tag"])), ["tags[0]"]);
        let long_key = format!("prod:routing.queue:{}", "q".repeat(MAX_KEY_LEN));
        assert_eq!(fields(p(&[&long_key], &[], &[])), ["keys[0]"]);
        assert_eq!(fields(p(&[], &[&long_key], &[])), ["prefixes[0]"]);
        let chatty = Purge { reason: "x".repeat(MAX_REASON_LEN + 1), ..p(&[], &[], &["queue:q1"]) };
        assert_eq!(fields(chatty), ["reason"], "a 4 MB reason would be copied into every bus event");
        let many: Vec<String> = (0..=MAX_NAMED).map(|i| format!("prod:k:{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(fields(p(&refs, &[], &[])), ["keys"]);
    }
}
