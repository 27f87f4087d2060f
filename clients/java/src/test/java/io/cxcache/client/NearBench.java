package io.cxcache.client;

import java.time.Duration;
import java.util.Arrays;
import java.util.List;

/**
 * Near cache benchmark (loadtest/near-java.sh runs it): the same client code Gets one key in a
 * loop, once with the near cache off (every Get is a server L1 hit) and once with it on (near hits),
 * in one run. Prints Gets/s and per-Get latency (mean, p50, p99, max) for both and their ratio.
 *
 * <p>Args: ADDR [SECONDS_PER_MODE (default 3)] [THREADS (default 1)].
 */
public final class NearBench {
  private NearBench() {}

  record Result(String mode, long gets, double seconds, long[] latencies, int n, long nearHits, long notNear) {
    double perSecond() {
      return gets / seconds;
    }

    double pct(double p) {
      return latencies[Math.min(n - 1, (int) Math.floor(p * n))] / 1000.0;
    }

    double mean() {
      long sum = 0;
      for (int i = 0; i < n; i++) {
        sum += latencies[i];
      }
      return sum / 1000.0 / n;
    }
  }

  static Result run(String mode, CacheClient c, String id, Duration d, int threads) throws Exception {
    int cap = 4_000_000 / threads;
    long[][] lat = new long[threads][cap];
    int[] counts = new int[threads];
    long[] total = new long[threads];
    long[] near = new long[threads];
    long[] notNear = new long[threads];
    GetQuery q = GetQuery.of("routing.queue").id(id);
    // warm up (JIT, connection, fill)
    long warm = System.nanoTime() + 500_000_000L;
    while (System.nanoTime() < warm) {
      c.get(q);
    }
    Thread[] ts = new Thread[threads];
    long start = System.nanoTime();
    long end = start + d.toNanos();
    for (int t = 0; t < threads; t++) {
      int ti = t;
      ts[t] = new Thread(() -> {
        long now = System.nanoTime();
        while (now < end) {
          CacheResult r = c.get(q);
          long after = System.nanoTime();
          if (counts[ti] < cap) {
            lat[ti][counts[ti]++] = after - now;
          }
          total[ti]++;
          if (r.source() == Source.NEAR) {
            near[ti]++;
          } else {
            notNear[ti]++;
          }
          now = after;
        }
      });
      ts[t].start();
    }
    for (Thread t : ts) {
      t.join();
    }
    double secs = (System.nanoTime() - start) / 1e9;
    int n = Arrays.stream(counts).sum();
    long[] all = new long[n];
    int off = 0;
    for (int t = 0; t < threads; t++) {
      System.arraycopy(lat[t], 0, all, off, counts[t]);
      off += counts[t];
    }
    Arrays.sort(all);
    return new Result(mode, Arrays.stream(total).sum(), secs, all, n, Arrays.stream(near).sum(),
        Arrays.stream(notNear).sum());
  }

  public static void main(String[] args) throws Exception {
    String addr = args[0];
    Duration d = Duration.ofSeconds(args.length > 1 ? Long.parseLong(args[1]) : 3);
    int threads = args.length > 2 ? Integer.parseInt(args[2]) : 1;
    String id;
    try (CacheClient c = CacheClient.builder().target(addr).defaultTimeout(Duration.ofSeconds(10)).build()) {
      id = LiveNearCacheTest.queueIds(c).get(0);
      Result server = run("near cache off (server L1 hit)", c, id, d, threads);
      try (CacheClient n = CacheClient.builder().target(addr).defaultTimeout(Duration.ofSeconds(10))
          .nearCache(NearCacheOptions.maxBytes(64 << 20)).build()) {
        Result nearR = run("near cache on (near hit)", n, id, d, threads);
        System.out.printf("near-java: %d thread(s), %d s per mode, key routing.queue/%s at %s%n", threads,
            d.toSeconds(), id, addr);
        System.out.println("| mode | Gets | Gets/s | mean us | p50 us | p99 us | max us | NEAR / other |");
        System.out.println("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (Result r : List.of(server, nearR)) {
          System.out.printf("| %s | %d | %.0f | %.2f | %.2f | %.2f | %.0f | %d / %d |%n", r.mode(), r.gets(),
              r.perSecond(), r.mean(), r.pct(0.5), r.pct(0.99), r.latencies()[r.n() - 1] / 1000.0, r.nearHits(),
              r.notNear());
        }
        System.out.printf("near-java: ratio near/server: %.0fx Gets/s, %.0fx mean latency, %.0fx p50 latency%n",
            nearR.perSecond() / server.perSecond(), server.mean() / nearR.mean(), server.pct(0.5) / nearR.pct(0.5));
        System.out.println("near-java: near stats " + n.nearCacheStats());
      }
    }
  }
}
