package io.cxcache.client;

/**
 * Counters of a client's near cache ({@link CacheClient#nearCacheStats()}).
 *
 * @param hits Gets answered from the near cache ({@link Source#NEAR})
 * @param misses near-cacheable Gets that went to the server
 * @param evictions entries evicted by the byte bound
 * @param flushes times the whole near cache was dropped (RESET, LAGGED, a stream that failed for
 *     good, an event or purge of this client naming no key, prefix or tag, or the prefix "")
 * @param rejectedFills replies not kept because an event, flush or reconnect happened while they
 *     were in flight (the race rule)
 * @param resumes lost streams resumed after their last position without a RESET (nothing flushed)
 * @param events INVALIDATED / UPDATED events received on the near cache's Watch stream
 * @param invalidations entries dropped by events or this client's Invalidate
 * @param entries entries held now
 * @param weightBytes bytes held now (values plus per-entry overhead)
 * @param streamHealthy whether near entries may be served now (a HEARTBEAT arrived less than
 *     max staleness ago)
 */
public record NearCacheStats(
    long hits, long misses, long evictions, long flushes, long rejectedFills, long resumes, long events, long invalidations,
    long entries, long weightBytes, boolean streamHealthy) {}
