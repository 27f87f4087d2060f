package io.cxcache.client;

import java.time.Duration;
import java.util.Objects;
import java.util.concurrent.ThreadLocalRandom;

/**
 * When and how long to wait before trying a failed call again. Immutable; derive variants with the
 * {@code with...} methods: {@code RetryPolicy.defaults().withMaxAttempts(6)}.
 *
 * <p>Get and Invalidate calls that fail with UNAVAILABLE or RESOURCE_EXHAUSTED are retried (both
 * calls are idempotent). The n-th retry waits {@code min(maxBackoff, initialBackoff *
 * multiplier^(n-1))}, reduced by a random fraction of at most {@code jitter}; when the server sent a
 * {@code google.rpc.RetryInfo} the wait is at least its {@code retry_delay}. A retry happens only
 * while attempts are left, the total time since the first attempt stays within {@code maxElapsed},
 * and the wait ends before the call's deadline (every attempt shares the one deadline of the call);
 * otherwise the last error is thrown at once.
 *
 * <p>The same policy (per outage, counting consecutive failed subscriptions) drives Watch
 * reconnection; see {@link WatchQuery#reconnect(RetryPolicy)}.
 */
public final class RetryPolicy {
  private static final RetryPolicy DEFAULTS =
      new RetryPolicy(4, Duration.ofMillis(100), Duration.ofSeconds(5), 2.0, 0.2, Duration.ofSeconds(30));
  private static final RetryPolicy DISABLED =
      new RetryPolicy(1, Duration.ZERO, Duration.ZERO, 1.0, 0.0, Duration.ZERO);
  private static final RetryPolicy WATCH_DEFAULTS =
      new RetryPolicy(Integer.MAX_VALUE, Duration.ofMillis(200), Duration.ofSeconds(10), 2.0, 0.2,
          Duration.ofMinutes(5));

  private final int maxAttempts;
  private final Duration initialBackoff;
  private final Duration maxBackoff;
  private final double multiplier;
  private final double jitter;
  private final Duration maxElapsed;

  private RetryPolicy(int maxAttempts, Duration initialBackoff, Duration maxBackoff, double multiplier,
      double jitter, Duration maxElapsed) {
    if (maxAttempts < 1) {
      throw new IllegalArgumentException("maxAttempts must be at least 1");
    }
    if (multiplier < 1.0) {
      throw new IllegalArgumentException("multiplier must be at least 1");
    }
    if (jitter < 0.0 || jitter > 1.0) {
      throw new IllegalArgumentException("jitter must be within [0, 1]");
    }
    this.maxAttempts = maxAttempts;
    this.initialBackoff = requireNonNegative(initialBackoff, "initialBackoff");
    this.maxBackoff = requireNonNegative(maxBackoff, "maxBackoff");
    this.multiplier = multiplier;
    this.jitter = jitter;
    this.maxElapsed = requireNonNegative(maxElapsed, "maxElapsed");
  }

  private static Duration requireNonNegative(Duration d, String name) {
    Objects.requireNonNull(d, name);
    if (d.isNegative()) {
      throw new IllegalArgumentException(name + " must not be negative");
    }
    return d;
  }

  /**
   * The client default: 4 attempts, backoff 100 ms doubling up to 5 s, jitter 0.2, at most 30 s in
   * all (and never past the call's deadline).
   */
  public static RetryPolicy defaults() {
    return DEFAULTS;
  }

  /** No retries: every call is tried once. */
  public static RetryPolicy disabled() {
    return DISABLED;
  }

  /**
   * The Watch default: reconnect without an attempt limit, backoff 200 ms doubling up to 10 s,
   * jitter 0.2, giving up when one outage lasts longer than 5 minutes.
   */
  public static RetryPolicy watchDefaults() {
    return WATCH_DEFAULTS;
  }

  /** Attempts in all, the first included (1 disables retries). */
  public RetryPolicy withMaxAttempts(int maxAttempts) {
    return new RetryPolicy(maxAttempts, initialBackoff, maxBackoff, multiplier, jitter, maxElapsed);
  }

  /** Wait before the first retry. */
  public RetryPolicy withInitialBackoff(Duration initialBackoff) {
    return new RetryPolicy(maxAttempts, initialBackoff, maxBackoff, multiplier, jitter, maxElapsed);
  }

  /** Upper bound of the computed backoff (a server's RetryInfo may ask for longer). */
  public RetryPolicy withMaxBackoff(Duration maxBackoff) {
    return new RetryPolicy(maxAttempts, initialBackoff, maxBackoff, multiplier, jitter, maxElapsed);
  }

  /** Growth factor of the backoff per retry (at least 1). */
  public RetryPolicy withMultiplier(double multiplier) {
    return new RetryPolicy(maxAttempts, initialBackoff, maxBackoff, multiplier, jitter, maxElapsed);
  }

  /** Largest random fraction taken off each backoff, in [0, 1] (0: no jitter). */
  public RetryPolicy withJitter(double jitter) {
    return new RetryPolicy(maxAttempts, initialBackoff, maxBackoff, multiplier, jitter, maxElapsed);
  }

  /** Bound on the time from the first attempt to the start of the last retry. */
  public RetryPolicy withMaxElapsed(Duration maxElapsed) {
    return new RetryPolicy(maxAttempts, initialBackoff, maxBackoff, multiplier, jitter, maxElapsed);
  }

  public int maxAttempts() {
    return maxAttempts;
  }

  public Duration initialBackoff() {
    return initialBackoff;
  }

  public Duration maxBackoff() {
    return maxBackoff;
  }

  public double multiplier() {
    return multiplier;
  }

  public double jitter() {
    return jitter;
  }

  public Duration maxElapsed() {
    return maxElapsed;
  }

  /** True when this policy allows no retry at all. */
  public boolean isDisabled() {
    return maxAttempts <= 1;
  }

  /**
   * The wait before retry number {@code retry} (1 for the first retry).
   *
   * @param retry 1-based retry number
   * @param serverDelay the server's RetryInfo delay, or null
   * @return the wait, never shorter than {@code serverDelay}
   */
  public Duration backoff(int retry, Duration serverDelay) {
    double base = initialBackoff.toNanos() * Math.pow(multiplier, Math.max(0, retry - 1));
    double capped = Math.min(base, (double) maxBackoff.toNanos());
    double jittered = capped * (1.0 - jitter * ThreadLocalRandom.current().nextDouble());
    Duration d = Duration.ofNanos((long) jittered);
    if (serverDelay != null && serverDelay.compareTo(d) > 0) {
      d = serverDelay;
    }
    return d;
  }

  @Override
  public String toString() {
    return "RetryPolicy{maxAttempts=" + maxAttempts + ", initialBackoff=" + initialBackoff
        + ", maxBackoff=" + maxBackoff + ", multiplier=" + multiplier + ", jitter=" + jitter
        + ", maxElapsed=" + maxElapsed + '}';
  }
}
