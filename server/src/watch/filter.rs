//! What a Watch subscriber asked to hear about.

use std::sync::Arc;

use crate::bus::{Event, EventKind};
use crate::catalog::Catalog;
use crate::error::{Error, FieldViolation, Result};
use crate::keys;
use crate::proto::v1::WatchRequest;

#[derive(Debug, Clone, Default)]
pub struct Filter {
    keys: Vec<String>,
    prefixes: Vec<String>,
    kinds: Vec<String>,
    tags: Vec<String>,
    /// No UPDATED events (`WatchRequest.invalidated_only`).
    invalidated_only: bool,
    /// Resolves a key's tags (from its kind and id) for tag filters.
    catalog: Option<Arc<Catalog>>,
}

impl Filter {
    pub fn from_request(req: &WatchRequest, catalog: Arc<Catalog>) -> Result<Filter> {
        if req.keys.is_empty() && req.prefixes.is_empty() && req.kinds.is_empty() && req.tags.is_empty() {
            return Err(Error::InvalidArgument(vec![FieldViolation::new(
                "keys",
                "name at least one key, prefix, kind or tag to watch",
            )]));
        }
        Ok(Filter {
            keys: req.keys.clone(),
            prefixes: req.prefixes.clone(),
            kinds: req.kinds.clone(),
            tags: req.tags.clone(),
            invalidated_only: req.invalidated_only,
            catalog: Some(catalog),
        })
    }

    /// A filter from configured parts (change callbacks), validated there.
    pub fn from_parts(
        keys: Vec<String>,
        prefixes: Vec<String>,
        kinds: Vec<String>,
        tags: Vec<String>,
        invalidated_only: bool,
        catalog: Arc<Catalog>,
    ) -> Filter {
        Filter { keys, prefixes, kinds, tags, invalidated_only, catalog: Some(catalog) }
    }

    /// The keys of `event` this filter wants (none: the event is not for it).
    pub fn select<'e>(&self, event: &'e Event) -> Vec<&'e String> {
        if !self.wants(event) {
            return Vec::new();
        }
        event.keys.iter().filter(|k| self.matches(k)).collect()
    }

    /// Whether events of this kind are wanted at all.
    pub fn wants(&self, event: &Event) -> bool {
        !(self.invalidated_only && event.kind == EventKind::Updated)
    }

    pub fn matches(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k == key)
            || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
            || keys::kind_of(key).is_some_and(|kind| self.kinds.iter().any(|k| k == kind))
            || (!self.tags.is_empty() && self.key_tags(key).iter().any(|t| self.tags.contains(t)))
    }

    /// The tags a key's entry carries: its kind's tag templates with the id.
    fn key_tags(&self, key: &str) -> Vec<String> {
        let (Some(catalog), Some(key)) = (&self.catalog, keys::Key::parse(key)) else { return Vec::new() };
        catalog.get(key.kind).map(|k| k.tags_for(key.id)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_keys_prefixes_and_kinds() {
        let catalog = Arc::new(Catalog::with_presets(&Default::default()).unwrap());
        let f = Filter {
            keys: vec!["p:user:1:full".into()],
            prefixes: vec!["p:routing.queue:".into()],
            kinds: vec!["routing.skill".into()],
            tags: vec!["user-routing-status:7".into()],
            invalidated_only: false,
            catalog: Some(catalog),
        };
        assert!(f.matches("p:user:1:full"));
        assert!(!f.matches("p:user:2:full"));
        assert!(f.matches("p:routing.queue:9:summary"));
        assert!(f.matches("p:routing.skill:3:full"));
        assert!(!f.matches("p:routing.queues:_:full"));
        assert!(f.matches("p:user.routing_status:7:full"));
        assert!(!f.matches("p:user.routing_status:8:full"));
    }

    #[test]
    fn invalidated_only_drops_updates() {
        let f = Filter { invalidated_only: true, prefixes: vec![String::new()], ..Default::default() };
        let mut e = Event::updated("p:user:1:full", "o");
        assert!(!f.wants(&e));
        e.kind = EventKind::Invalidated;
        assert!(f.wants(&e));
        assert!(Filter::default().wants(&Event::updated("k", "o")));
    }
}
