package io.cxcache.client;

import com.github.benmanes.caffeine.cache.Cache;
import com.github.benmanes.caffeine.cache.Caffeine;
import com.github.benmanes.caffeine.cache.Expiry;
import com.github.benmanes.caffeine.cache.RemovalCause;
import io.cxcache.v1.GetRequest;
import io.cxcache.v1.WatchRequest;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.LongAdder;
import java.util.function.Function;

/**
 * The client's near cache: Get replies held in a byte-bounded Caffeine cache, keyed by the request
 * (kind, id, variant, params, body_json, value_format) and indexed by the server key, kept coherent
 * by one Watch stream. See {@link NearCacheOptions} and the README ("Near cache") for the rules.
 */
final class NearCache implements AutoCloseable {
  /** Recent events kept for the race rule. */
  static final int LOG_SIZE = 4096;
  /** Per-entry bytes counted besides the value and the request key. */
  static final int ENTRY_OVERHEAD = 128;
  private static final long RETRY_OPEN_NANOS = TimeUnit.MILLISECONDS.toNanos(500);

  /** A filled reply. */
  record Entry(CacheResult result, long fillNanos, long ttlNanos, long ageNanos, int weight) {
    String key() {
      return result.key();
    }
  }

  /** What a Get saw when it was sent: the race rule compares it with what happened since. */
  record Ticket(long counter, boolean up) {}

  /** One invalidation event in the log: which keys it covers. */
  private record Logged(long seq, String key, String prefix, String tag, boolean all) {
    boolean covers(CacheResult r) {
      if (all) {
        return true;
      }
      if (!key.isEmpty()) {
        return key.equals(r.key());
      }
      if (!prefix.isEmpty()) {
        return r.key().startsWith(prefix);
      }
      return !tag.isEmpty() && r.tags().contains(tag);
    }
  }

  private final NearCacheOptions options;
  private final long maxStalenessNanos;
  private final Function<WatchCore.Sink, WatchCore> opener;
  private final Cache<GetRequest, Entry> cache;
  private final Map<String, Set<GetRequest>> byKey = new ConcurrentHashMap<>();
  private final Set<String> kinds;

  private final Object lock = new Object();
  // guarded by lock
  private final ArrayDeque<Logged> log = new ArrayDeque<>();
  private long logFloor;
  private long barrier;
  private volatile WatchCore core;
  private boolean closed;
  private boolean firstOfCall = true;
  private long reopenAt;

  private volatile long counter;
  private volatile boolean up;
  private volatile long lastHeartbeat;
  private volatile boolean everHeartbeat;
  private final CountDownLatch firstHeartbeat = new CountDownLatch(1);

  private final LongAdder hits = new LongAdder();
  private final LongAdder misses = new LongAdder();
  private final LongAdder evictions = new LongAdder();
  private final LongAdder flushes = new LongAdder();
  private final LongAdder rejected = new LongAdder();
  private final LongAdder invalidations = new LongAdder();
  private final LongAdder events = new LongAdder();
  private final LongAdder resumes = new LongAdder();
  private boolean resuming;

  NearCache(NearCacheOptions options, Function<WatchCore.Sink, WatchCore> opener) {
    this.options = options;
    this.maxStalenessNanos = options.maxStaleness().toNanos();
    this.opener = opener;
    this.kinds = Set.copyOf(options.kinds());
    this.cache = Caffeine.newBuilder()
        .maximumWeight(options.maxBytes())
        .weigher((GetRequest k, Entry e) -> e.weight())
        .expireAfter(new Expiry<GetRequest, Entry>() {
          @Override
          public long expireAfterCreate(GetRequest key, Entry value, long currentTime) {
            return value.ttlNanos();
          }

          @Override
          public long expireAfterUpdate(GetRequest key, Entry value, long currentTime, long currentDuration) {
            return value.ttlNanos();
          }

          @Override
          public long expireAfterRead(GetRequest key, Entry value, long currentTime, long currentDuration) {
            return currentDuration;
          }
        })
        .executor(Runnable::run)
        .removalListener((GetRequest k, Entry e, RemovalCause cause) -> {
          if (cause == RemovalCause.SIZE) {
            evictions.increment();
          }
        })
        .build();
  }

  /** The Watch request of the near cache's stream. */
  static WatchRequest watchRequest(NearCacheOptions options) {
    WatchRequest.Builder b = WatchRequest.newBuilder()
        .setInvalidatedOnly(options.invalidatedOnly())
        .setHeartbeatInterval(Durations.toProto(options.heartbeatInterval()));
    if (options.kinds().isEmpty()) {
      b.addPrefixes("");
    } else {
      b.addAllKinds(options.kinds());
    }
    return b.build();
  }

  /** True when Gets of this kind are near-cached. */
  boolean applies(String kind) {
    return kinds.isEmpty() || kinds.contains(kind);
  }

  /** The request identity: the request without its freshness controls. */
  static GetRequest identity(GetRequest request) {
    return request.hasFreshness() ? request.toBuilder().clearFreshness().build() : request;
  }

  boolean healthy(long now) {
    return everHeartbeat && now - lastHeartbeat < maxStalenessNanos;
  }

  /**
   * Opens the Watch stream if it is not open; the first time, waits up to {@code wait} for its
   * first heartbeat so that the first reply can already be kept.
   */
  void ensureStream(Duration wait) {
    if (core != null) {
      return;
    }
    WatchCore started = null;
    synchronized (lock) {
      if (!closed && core == null && System.nanoTime() >= reopenAt) {
        firstOfCall = true;
        started = opener.apply(new Sink());
        core = started;
      }
    }
    if (started == null) {
      return;
    }
    started.start();
    if (!everHeartbeat && wait != null && !wait.isNegative() && !wait.isZero()) {
      try {
        firstHeartbeat.await(wait.toNanos(), TimeUnit.NANOSECONDS);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
    }
  }

  /** How long the first Get may wait for the stream. */
  Duration startWait(Duration callTimeout) {
    Duration w = options.startWait();
    return callTimeout != null && callTimeout.compareTo(w) < 0 ? callTimeout.dividedBy(2) : w;
  }

  /** A near hit for {@code request}, or null (the Get then goes to the server). */
  CacheResult lookup(GetRequest identity, Duration maxAge) {
    long now = System.nanoTime();
    if (healthy(now)) {
      Entry e = cache.getIfPresent(identity);
      if (e != null) {
        long elapsed = now - e.fillNanos();
        long age = e.ageNanos() + elapsed;
        boolean fresh = elapsed < e.ttlNanos();
        boolean young = maxAge == null || maxAge.isZero() || age <= maxAge.toNanos();
        if (fresh && young) {
          hits.increment();
          CacheResult r = e.result();
          return new CacheResult(r.raw(), Source.NEAR, r.key(), Duration.ofNanos(age),
              Duration.ofNanos(e.ttlNanos() - elapsed), r.tags());
        }
      }
    }
    misses.increment();
    return null;
  }

  Ticket ticket() {
    return new Ticket(counter, up);
  }

  /** Keep {@code result} for {@code identity} unless the race rule says otherwise. */
  void fill(Ticket ticket, GetRequest identity, CacheResult result) {
    if (result.source() == Source.STALE || result.key().isEmpty() || result.ttlRemaining().isZero()
        || result.ttlRemaining().isNegative()) {
      return;
    }
    long now = System.nanoTime();
    long ttl = result.ttlRemaining().toNanos();
    long weight = (long) result.raw().size() + identity.getSerializedSize() + result.key().length() * 2L
        + ENTRY_OVERHEAD;
    for (String t : result.tags()) {
      weight += t.length() * 2L + 16;
    }
    if (weight > options.maxBytes() || weight > Integer.MAX_VALUE) {
      return;
    }
    Entry entry = new Entry(result, now, ttl, result.age().toNanos(), (int) weight);
    synchronized (lock) {
      if (closed || !ticket.up() || !up || ticket.counter() < barrier || ticket.counter() < logFloor) {
        rejected.increment();
        return;
      }
      for (var it = log.descendingIterator(); it.hasNext(); ) {
        Logged l = it.next();
        if (l.seq() <= ticket.counter()) {
          break;
        }
        if (l.covers(result)) {
          rejected.increment();
          return;
        }
      }
      byKey.computeIfAbsent(result.key(), k -> ConcurrentHashMap.newKeySet()).add(identity);
      cache.put(identity, entry);
      if (byKey.size() > 2 * cache.estimatedSize() + 1024) {
        pruneIndex();
      }
    }
  }

  /** Drop index references to entries no longer held; with the lock held. */
  private void pruneIndex() {
    byKey.entrySet().removeIf(en -> {
      en.getValue().removeIf(rk -> {
        Entry e = cache.policy().getIfPresentQuietly(rk);
        return e == null || !e.key().equals(en.getKey());
      });
      return en.getValue().isEmpty();
    });
  }

  /** Records an event in the log and drops what it covers; with the lock held. */
  private void apply(String key, String prefix, String tag) {
    long seq = ++counter;
    boolean all = key.isEmpty() && prefix.isEmpty() && tag.isEmpty();
    if (all) {
      flushLocked();
      return;
    }
    log.addLast(new Logged(seq, key, prefix, tag, false));
    while (log.size() > LOG_SIZE) {
      logFloor = log.removeFirst().seq();
    }
    if (!key.isEmpty()) {
      Set<GetRequest> rks = byKey.remove(key);
      if (rks != null) {
        for (GetRequest rk : rks) {
          if (cache.asMap().remove(rk) != null) {
            invalidations.increment();
          }
        }
      }
    } else {
      Logged l = new Logged(seq, "", prefix, tag, false);
      cache.asMap().entrySet().removeIf(en -> {
        boolean hit = l.covers(en.getValue().result());
        if (hit) {
          invalidations.increment();
        }
        return hit;
      });
    }
  }

  private void flushLocked() {
    long seq = ++counter;
    barrier = seq + 1; // tickets taken before now are refused
    counter = seq + 1;
    cache.invalidateAll();
    byKey.clear();
    flushes.increment();
  }

  /** A reconnect boundary: replies sent before it are refused; nothing is dropped. */
  private void barrierLocked() {
    long seq = ++counter;
    barrier = seq;
  }

  /** This client's own Invalidate: drop what it names at once. */
  void invalidated(List<String> keys, List<String> prefixes, List<String> tags) {
    synchronized (lock) {
      for (String k : keys) {
        apply(k, "", "");
      }
      for (String p : prefixes) {
        if (p.isEmpty()) {
          flushLocked();
        } else {
          apply("", p, "");
        }
      }
      for (String t : tags) {
        apply("", "", t);
      }
    }
  }

  /** Handles the near cache's Watch stream. */
  private final class Sink implements WatchCore.Sink {
    @Override
    public void ready() {}

    @Override
    public void event(WatchEvent ev, boolean synthetic) {
      synchronized (lock) {
        if (closed) {
          return;
        }
        boolean first = firstOfCall;
        firstOfCall = false;
        if (first && resuming && ev.type() != EventType.RESET && ev.type() != EventType.LAGGED) {
          resumes.increment();
        }
        if (first) {
          resuming = false;
        }
        switch (ev.type()) {
          case HEARTBEAT -> {
            if (first) {
              barrierLocked();
            }
            up = true;
          }
          case RESET, LAGGED -> {
            flushLocked();
            up = true;
          }
          case INVALIDATED, UPDATED -> {
            if (first) {
              barrierLocked();
            }
            up = true;
            apply(ev.key(), ev.prefix(), ev.tag());
            events.increment();
          }
          default -> {
            return;
          }
        }
      }
      if (ev.type() == EventType.HEARTBEAT) {
        lastHeartbeat = System.nanoTime();
        everHeartbeat = true;
        firstHeartbeat.countDown();
      }
    }

    @Override
    public void lost(CacheException cause) {
      synchronized (lock) {
        up = false;
        firstOfCall = true;
        resuming = true;
        barrierLocked();
      }
    }

    @Override
    public void end() {
      down();
    }

    @Override
    public void error(CacheException error) {
      down();
    }

    /** The stream ended for good: flush; the next Get opens a new one after a pause. */
    private void down() {
      synchronized (lock) {
        up = false;
        core = null;
        if (!closed) {
          flushLocked();
          reopenAt = System.nanoTime() + RETRY_OPEN_NANOS;
        }
      }
    }
  }

  NearCacheStats stats() {
    cache.cleanUp();
    long weight = cache.policy().eviction().map(ev -> ev.weightedSize().orElse(0L)).orElse(0L);
    return new NearCacheStats(hits.sum(), misses.sum(), evictions.sum(), flushes.sum(), rejected.sum(),
        resumes.sum(), events.sum(), invalidations.sum(), cache.estimatedSize(), weight, healthy(System.nanoTime()));
  }

  @Override
  public void close() {
    WatchCore c;
    synchronized (lock) {
      closed = true;
      up = false;
      c = core;
      core = null;
      cache.invalidateAll();
      byKey.clear();
    }
    if (c != null) {
      c.cancel();
    }
  }
}
