//! What a caller may do: each check answers PERMISSION_DENIED naming the
//! scope that refused (and what was asked), or Ok.

use super::Caller;
use crate::error::Error;

/// Glob match: `*` matches any run of characters (none included).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

fn any(patterns: &[String], text: &str) -> bool {
    patterns.iter().any(|p| glob(p, text))
}

fn denied(caller: &Caller, scope: &str, what: &str) -> Error {
    Error::Forbidden { caller: caller.name().to_string(), scope: scope.to_string(), what: what.to_string() }
}

/// A Get's parts that scopes govern.
#[derive(Debug, Clone, Copy, Default)]
pub struct GetAsk<'a> {
    pub kind: &'a str,
    pub force_refresh: bool,
    pub max_age: bool,
}

impl Caller {
    /// A Get of `ask.kind`, with its freshness controls.
    pub fn check_get(&self, ask: GetAsk<'_>) -> Result<(), Error> {
        let Some(s) = &self.scopes else { return Ok(()) };
        if !any(&s.get, ask.kind) {
            return Err(denied(self, "get", &format!("kind {}", ask.kind)));
        }
        if ask.force_refresh && !s.force_refresh {
            return Err(denied(self, "force_refresh", "freshness.force_refresh"));
        }
        if ask.max_age && !s.max_age {
            return Err(denied(self, "max_age", "freshness.max_age"));
        }
        Ok(())
    }

    /// An Invalidate: every key and prefix inside the caller's prefixes,
    /// every tag matching its tag patterns.
    pub fn check_invalidate(
        &self,
        keys: &[String],
        prefixes: &[String],
        tags: &[String],
    ) -> Result<(), Error> {
        let Some(s) = &self.scopes else { return Ok(()) };
        let inside = |k: &str| s.invalidate_prefixes.iter().any(|p| k.starts_with(p.as_str()));
        if let Some(k) = keys.iter().find(|k| !inside(k)) {
            return Err(denied(self, "invalidate_prefixes", &format!("key {k}")));
        }
        if let Some(p) = prefixes.iter().find(|p| !inside(p)) {
            return Err(denied(self, "invalidate_prefixes", &format!("prefix {p}")));
        }
        if let Some(t) = tags.iter().find(|t| !any(&s.invalidate_tags, t)) {
            return Err(denied(self, "invalidate_tags", &format!("tag {t}")));
        }
        Ok(())
    }

    /// A Watch naming `kinds` (and keys of `key_kinds`) explicitly.
    /// Prefix and tag watches are allowed; their events are filtered by
    /// [`Caller::may_watch_kind`].
    pub fn check_watch<'a>(
        &self,
        kinds: impl IntoIterator<Item = &'a str>,
        key_kinds: impl IntoIterator<Item = Option<&'a str>>,
    ) -> Result<(), Error> {
        let Some(s) = &self.scopes else { return Ok(()) };
        if s.watch.is_empty() {
            return Err(denied(self, "watch", "any Watch"));
        }
        if let Some(k) = kinds.into_iter().find(|k| !any(&s.watch, k)) {
            return Err(denied(self, "watch", &format!("kind {k}")));
        }
        for k in key_kinds {
            match k {
                Some(k) if any(&s.watch, k) => {}
                Some(k) => return Err(denied(self, "watch", &format!("kind {k}"))),
                None => return Err(denied(self, "watch", "a key of no known kind")),
            }
        }
        Ok(())
    }

    /// Whether events of `kind` may reach this caller's Watch streams.
    pub fn may_watch_kind(&self, kind: &str) -> bool {
        self.scopes.as_ref().is_none_or(|s| any(&s.watch, kind))
    }

    /// Whether Watch events need filtering by kind for this caller.
    pub fn watches_everything(&self) -> bool {
        self.scopes.as_ref().is_none_or(|s| s.watch.iter().any(|p| p == "*"))
    }

    /// Executing `kind` (entity `id`) through the HTTP data-action door:
    /// a pattern matches the kind, or `kind:id` (so
    /// `integrations.action.execute:custom_-_1234` allows one action).
    pub fn check_data_action(&self, kind: &str, id: &str) -> Result<(), Error> {
        let Some(s) = &self.scopes else { return Ok(()) };
        if any(&s.data_actions, kind) || (!id.is_empty() && any(&s.data_actions, &format!("{kind}:{id}"))) {
            Ok(())
        } else if id.is_empty() {
            Err(denied(self, "data_actions", &format!("data action {kind}")))
        } else {
            Err(denied(self, "data_actions", &format!("data action {kind}:{id}")))
        }
    }
}
