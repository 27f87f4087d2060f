package io.cxcache.client;

/** Where a Get reply's value came from ({@code cxcache.v1.Source} without the prefix). */
public enum Source {
  UNSPECIFIED,
  L1,
  STORE,
  UPSTREAM,
  STALE,
  COALESCED,
  REVALIDATED,
  /**
   * Served by this client's own near cache ({@link CacheClient.Builder#nearCache(NearCacheOptions)})
   * without a call; client-side only, the server never answers it.
   */
  NEAR;

  static Source fromProto(io.cxcache.v1.Source s) {
    switch (s) {
      case SOURCE_L1: return L1;
      case SOURCE_STORE: return STORE;
      case SOURCE_UPSTREAM: return UPSTREAM;
      case SOURCE_STALE: return STALE;
      case SOURCE_COALESCED: return COALESCED;
      case SOURCE_REVALIDATED: return REVALIDATED;
      default: return UNSPECIFIED;
    }
  }

  /** True for the cache tiers (L1, the shared store, and the client's near cache). */
  public boolean isCached() {
    return this == L1 || this == STORE || this == NEAR;
  }
}
