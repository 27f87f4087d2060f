package io.cxcache.client;

import java.time.Duration;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;

/**
 * Options of the client's near cache ({@link CacheClient.Builder#nearCache(NearCacheOptions)}): an
 * in-process, byte-bounded copy of Get replies kept coherent by one Watch stream per client.
 * {@code NearCacheOptions.maxBytes(64 << 20).kinds("routing.queue").maxStaleness(Duration.ofMillis(500))}.
 */
public final class NearCacheOptions {
  private final long maxBytes;
  private List<String> kinds = List.of();
  private Duration maxStaleness = Duration.ofSeconds(1);
  private boolean invalidatedOnly;
  private Duration startWait = Duration.ofSeconds(2);

  private NearCacheOptions(long maxBytes) {
    if (maxBytes <= 0) {
      throw new IllegalArgumentException("maxBytes must be positive");
    }
    this.maxBytes = maxBytes;
  }

  /** A near cache holding at most {@code maxBytes} (value bytes plus a per-entry key overhead). */
  public static NearCacheOptions maxBytes(long maxBytes) {
    return new NearCacheOptions(maxBytes);
  }

  /** Only these kinds are near-cached (default: every kind). The Watch then names these kinds. */
  public NearCacheOptions kinds(String... kinds) {
    this.kinds = List.copyOf(Arrays.asList(kinds));
    return this;
  }

  /**
   * How long after the last HEARTBEAT from the server near entries may still be served (default
   * 1 s): the bound on how long a purged value can outlive its Invalidate here. Heartbeats are
   * asked every {@code maxStaleness / 4} (at least 100 ms).
   */
  public NearCacheOptions maxStaleness(Duration maxStaleness) {
    Objects.requireNonNull(maxStaleness, "maxStaleness");
    if (maxStaleness.isNegative() || maxStaleness.isZero()) {
      throw new IllegalArgumentException("maxStaleness must be positive");
    }
    this.maxStaleness = maxStaleness;
    return this;
  }

  /**
   * Watch INVALIDATED events only (default false: an UPDATED event — another instance stored a
   * newer value — also drops the entry).
   */
  public NearCacheOptions invalidatedOnly(boolean invalidatedOnly) {
    this.invalidatedOnly = invalidatedOnly;
    return this;
  }

  /**
   * How long the first near-cacheable Get waits for the Watch stream's first heartbeat before it
   * goes on without it (default 2 s, bounded by the Get's own timeout). Until the stream is up,
   * replies are not kept.
   */
  public NearCacheOptions startWait(Duration startWait) {
    this.startWait = Objects.requireNonNull(startWait, "startWait");
    return this;
  }

  long maxBytes() {
    return maxBytes;
  }

  List<String> kinds() {
    return kinds;
  }

  Duration maxStaleness() {
    return maxStaleness;
  }

  boolean invalidatedOnly() {
    return invalidatedOnly;
  }

  Duration startWait() {
    return startWait;
  }

  Duration heartbeatInterval() {
    Duration quarter = maxStaleness.dividedBy(4);
    Duration min = Duration.ofMillis(100);
    return quarter.compareTo(min) < 0 ? min : quarter;
  }
}
