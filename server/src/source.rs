//! Where a served value came from: one enum shared by the read path, the
//! edges (proto `Source`, the data-action header) and the metrics labels.

/// Where a served value came from (mirrors `cxcache.v1.Source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    L1,
    Store,
    Revalidated,
    Upstream,
    Stale,
    Coalesced,
}

impl Source {
    /// Every source, in a fixed order (index with [`Source::index`]).
    pub const ALL: [Source; 6] =
        [Source::L1, Source::Store, Source::Revalidated, Source::Upstream, Source::Stale, Source::Coalesced];

    /// Position in [`Source::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric label (`l1`, `store`, …); the data-action door sends the
    /// upper-case form.
    pub fn label(self) -> &'static str {
        match self {
            Source::L1 => "l1",
            Source::Store => "store",
            Source::Revalidated => "revalidated",
            Source::Upstream => "upstream",
            Source::Stale => "stale",
            Source::Coalesced => "coalesced",
        }
    }

    /// The upper-case name (`L1`, `STORE`, …), as in the proto enum.
    pub fn name(self) -> &'static str {
        match self {
            Source::L1 => "L1",
            Source::Store => "STORE",
            Source::Revalidated => "REVALIDATED",
            Source::Upstream => "UPSTREAM",
            Source::Stale => "STALE",
            Source::Coalesced => "COALESCED",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_the_order_of_all() {
        for (i, s) in Source::ALL.iter().enumerate() {
            assert_eq!(s.index(), i, "{s:?}");
            assert_eq!(s.label().to_uppercase(), s.name());
        }
    }
}
