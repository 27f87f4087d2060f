package io.cxcache.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import com.google.protobuf.util.JsonFormat;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestMethodOrder;
import org.junit.jupiter.api.condition.EnabledIfEnvironmentVariable;

/**
 * The near cache against a real cxcache + emulator: hits, purges by another client, a killed and
 * restarted server, a resumed stream, and a racing checker with a second process.
 */
@EnabledIfEnvironmentVariable(named = "CXCACHE_ADDR", matches = ".+")
@TestMethodOrder(MethodOrderer.MethodName.class)
class LiveNearCacheTest {
  /** Queues of the shared instance used here (LiveCacheTest uses offsets from 2). */
  private static final int QUEUE_INDEX = 14;
  private static final HttpClient HTTP = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
  private static String addr;
  private static String emulator;
  private static List<String> ids;
  private static CacheClient plain;

  static String admin(String base, String method, String path, String json) throws Exception {
    HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(base + path)).timeout(Duration.ofSeconds(10));
    b = json == null ? b.method(method, HttpRequest.BodyPublishers.noBody())
        : b.header("content-type", "application/json").method(method, HttpRequest.BodyPublishers.ofString(json));
    HttpResponse<String> res = HTTP.send(b.build(), HttpResponse.BodyHandlers.ofString());
    assertTrue(res.statusCode() / 100 == 2, method + " " + path + " -> " + res.statusCode() + " " + res.body());
    return res.body();
  }

  static long queueGets(String base) throws Exception {
    Struct.Builder s = Struct.newBuilder();
    JsonFormat.parser().merge(admin(base, "GET", "/admin/counters", null), s);
    Value byRoute = s.getFieldsMap().get("by_route");
    long n = 0;
    if (byRoute != null) {
      for (Map.Entry<String, Value> e : byRoute.getStructValue().getFieldsMap().entrySet()) {
        if (e.getKey().startsWith("GET /api/v2/routing/queues/")) {
          n += (long) e.getValue().getNumberValue();
        }
      }
    }
    return n;
  }

  static List<String> queueIds(CacheClient c) {
    List<String> out = new ArrayList<>();
    for (Value e : c.get(GetQuery.of("routing.queues")).value().getStructValue().getFieldsOrThrow("entities")
        .getListValue().getValuesList()) {
      out.add(e.getStructValue().getFieldsOrThrow("id").getStringValue());
    }
    return out;
  }

  private static String queue(int offset) {
    return ids.get((QUEUE_INDEX + offset) % ids.size());
  }

  static void await(String what, Duration max, BooleanSupplier cond) throws InterruptedException {
    long deadline = System.nanoTime() + max.toNanos();
    while (!cond.getAsBoolean()) {
      assertTrue(System.nanoTime() < deadline, "timed out after " + max + " waiting for " + what);
      Thread.sleep(1);
    }
  }

  /**
   * Gets {@code id} through {@code c} until the server answers it from its cache tiers: a Get that
   * makes the server fetch and store also makes it publish UPDATED for the key, which (by the race
   * rule) keeps the near cache from holding that very reply.
   */
  static void warm(CacheClient c, String id) {
    for (int i = 0; i < 3 && !c.get("routing.queue", id).source().isCached(); i++) {
      // fetched upstream: ask again
    }
  }

  /** Gets {@code id} until the near cache serves it (bounded): a refill after a refetch. */
  static void awaitNear(CacheClient c, String id) throws InterruptedException {
    await("a near hit of " + id, Duration.ofSeconds(10), () -> c.get("routing.queue", id).source() == Source.NEAR);
  }

  static CacheClient nearClient(String target, Duration maxStaleness) {
    return CacheClient.builder().target(target).defaultTimeout(Duration.ofSeconds(10))
        .nearCache(NearCacheOptions.maxBytes(16 << 20).maxStaleness(maxStaleness)).build();
  }

  @BeforeAll
  static void connect() throws Exception {
    addr = System.getenv("CXCACHE_ADDR");
    String url = System.getenv("CXCACHE_EMULATOR_URL");
    assertNotNull(url, "CXCACHE_EMULATOR_URL must be set with CXCACHE_ADDR");
    emulator = url.replaceAll("/$", "");
    plain = CacheClient.builder().target(addr).defaultTimeout(Duration.ofSeconds(10)).build();
    ids = queueIds(plain);
  }

  @AfterAll
  static void close() {
    if (plain != null) {
      plain.close();
    }
  }

  @Test
  void a_nearHitAfterTheFirstGet() throws Exception {
    warm(plain, queue(0));
    try (CacheClient c = nearClient(addr, Duration.ofSeconds(1))) {
      CacheResult first = c.get("routing.queue", queue(0));
      long before = queueGets(emulator);
      CacheResult second = c.get("routing.queue", queue(0));
      assertEquals(Source.NEAR, second.source(), "stats " + c.nearCacheStats());
      assertEquals(first.json(), second.json());
      assertEquals(before, queueGets(emulator), "a near hit calls nobody");
      assertTrue(c.nearCacheStats().streamHealthy());
    }
  }

  @Test
  void b_aPurgeByAnotherClientIsAppliedWithinTheWatchDelay() throws Exception {
    warm(plain, queue(1));
    try (CacheClient c = nearClient(addr, Duration.ofSeconds(1))) {
      CacheResult r = c.get("routing.queue", queue(1));
      assertEquals(Source.NEAR, c.get("routing.queue", queue(1)).source());
      long events = c.nearCacheStats().invalidations();
      plain.invalidate(InvalidateQuery.create().keys(r.key()).reason("java near test"));
      long acked = System.nanoTime();
      await("the INVALIDATED event", Duration.ofSeconds(5), () -> c.nearCacheStats().invalidations() > events);
      Duration delay = LiveProcesses.since(acked);
      System.out.println("java live near: purge by another client applied " + delay.toNanos() / 1000 + " us after its Invalidate returned");
      assertNotEquals(Source.NEAR, c.get("routing.queue", queue(1)).source());
      awaitNear(c, queue(1)); // refilled once the refetch's own UPDATED event has passed
    }
  }

  @Test
  void c_aKilledServerFlushesAndServesNoNearHitPastMaxStaleness() throws Exception {
    Path logs = LiveProcesses.tempDir("kill");
    Duration maxStaleness = Duration.ofMillis(400);
    LiveProcesses.Started emu = LiveProcesses.emulator(logs);
    LiveProcesses.Started cx = null;
    try {
      String emuUrl = emu.line().group(1);
      cx = LiveProcesses.cxcache(emuUrl, logs.resolve("cxcache-1.log"));
      try (TcpProxy proxy = new TcpProxy(LiveProcesses.port(cx.line().group(1)));
          CacheClient c = CacheClient.builder().target(proxy.address()).retryPolicy(RetryPolicy.disabled())
              .defaultTimeout(Duration.ofSeconds(2))
              .nearCache(NearCacheOptions.maxBytes(1 << 20).maxStaleness(maxStaleness)).build()) {
        String id = queueIds(c).get(0);
        awaitNear(c, id);
        cx.kill();
        long killed = System.nanoTime();
        long lastNear = 0;
        int nearHits = 0;
        int failed = 0;
        while (System.nanoTime() - killed < maxStaleness.toNanos() * 3) {
          // The near cache decides after this moment (a clock read after
          // the Get would add the Get's own time to what is bounded).
          long asked = System.nanoTime();
          try {
            CacheResult r = c.get(GetQuery.of("routing.queue").id(id).timeout(Duration.ofMillis(200)));
            if (r.source() == Source.NEAR) {
              lastNear = asked;
              nearHits++;
            }
          } catch (CacheException e) {
            failed++;
          }
          Thread.sleep(5);
        }
        Duration lastNearAfterKill = Duration.ofNanos(lastNear == 0 ? 0 : lastNear - killed);
        System.out.println("java live near: server SIGKILLed; " + nearHits + " near hits, the last "
            + lastNearAfterKill.toMillis() + " ms after the kill (max staleness " + maxStaleness.toMillis()
            + " ms), then " + failed + " Gets failed");
        assertTrue(lastNearAfterKill.compareTo(maxStaleness) <= 0, "near hit " + lastNearAfterKill + " after the kill");
        assertTrue(failed > 0, "Gets after max staleness went to the (dead) server");
        // Near hits right after the kill are allowed, not required: when the
        // stream's end is seen first the near cache flushes at once (safer).
        long flushes = c.nearCacheStats().flushes();
        cx = LiveProcesses.cxcache(emuUrl, logs.resolve("cxcache-2.log"));
        proxy.target(LiveProcesses.port(cx.line().group(1)));
        long restarted = System.nanoTime();
        await("flush after the restart (RESET)", Duration.ofSeconds(10), () -> c.nearCacheStats().flushes() > flushes);
        await("healthy again", Duration.ofSeconds(10), () -> c.nearCacheStats().streamHealthy());
        System.out.println("java live near: restarted; flushed and healthy " + LiveProcesses.since(restarted).toMillis()
            + " ms after the new instance listened; " + c.nearCacheStats());
        assertEquals(0, c.nearCacheStats().entries());
        assertNotEquals(Source.NEAR, c.get("routing.queue", id).source());
        awaitNear(c, id); // the new instance's store is empty: its first Get is fetched and stored
      }
    } finally {
      if (cx != null) {
        cx.stop();
      }
      emu.stop();
    }
  }

  @Test
  void d_aResumedStreamReplaysMissedEventsWithoutAFlush() throws Exception {
    try (TcpProxy proxy = new TcpProxy(LiveProcesses.port(addr));
        CacheClient c = nearClient(proxy.address(), Duration.ofSeconds(1))) {
      warm(plain, queue(2));
      warm(plain, queue(3));
      CacheResult r = c.get("routing.queue", queue(2));
      c.get("routing.queue", queue(3));
      assertEquals(Source.NEAR, c.get("routing.queue", queue(2)).source());
      NearCacheStats before = c.nearCacheStats();
      proxy.pause(true);
      proxy.cut();
      plain.invalidate(InvalidateQuery.create().keys(r.key()).reason("java resume test"));
      proxy.pause(false);
      long resumed = System.nanoTime();
      await("the missed event replayed", Duration.ofSeconds(10), () -> c.nearCacheStats().invalidations() > before.invalidations());
      NearCacheStats after = c.nearCacheStats();
      System.out.println("java live near: resumed and replayed " + LiveProcesses.since(resumed).toMillis()
          + " ms after the gap closed; " + after);
      assertEquals(before.flushes(), after.flushes(), "no flush on a successful resume");
      assertTrue(after.resumes() > before.resumes(), after.toString());
      assertNotEquals(Source.NEAR, c.get("routing.queue", queue(2)).source());
      assertEquals(Source.NEAR, c.get("routing.queue", queue(3)).source(), "the other entry survived the gap");
    }
  }

  @Test
  void e_racingChecker() throws Exception {
    int rounds = Integer.parseInt(System.getenv().getOrDefault("NEAR_RACE_ROUNDS", "100"));
    Duration maxStaleness = Duration.ofSeconds(1);
    String id = queue(4);
    String path = "/api/v2/routing/queues/" + id;
    Process other = LiveProcesses.invalidator(addr);
    try (CacheClient c = nearClient(addr, maxStaleness);
        BufferedReader fromOther = new BufferedReader(new InputStreamReader(other.getInputStream(), StandardCharsets.UTF_8));
        Writer toOther = new OutputStreamWriter(other.getOutputStream(), StandardCharsets.UTF_8)) {
      assertEquals("ready", fromOther.readLine());
      String key = c.get("routing.queue", id).key();
      WatchStream events = plain.watch(WatchQuery.create().keys(key).invalidatedOnly(true));
      assertTrue(events.awaitReady(Duration.ofSeconds(10)));
      java.util.concurrent.BlockingQueue<Long> arrivals = new java.util.concurrent.LinkedBlockingQueue<>();
      Thread reader = new Thread(() -> {
        try {
          while (events.hasNext()) {
            WatchEvent ev = events.next();
            if (ev.type() == EventType.INVALIDATED && "java race checker".equals(ev.reason())) {
              arrivals.add(System.nanoTime());
            }
          }
        } catch (CacheException e) {
          // closed
        }
      }, "race-watch");
      reader.setDaemon(true);
      reader.start();
      long[] phase = new long[6];
      long worstEventAfterAck = 0;
      long eventsBeforeAck = 0;
      long worstNearStaleNanos = 0;
      int nearStaleReads = 0;
      int lateNearStaleReads = 0;
      int serverStaleReads = 0;
      int nearReads = 0;
      long t0 = System.nanoTime();
      for (int round = 1; round <= rounds; round++) {
        String name = "java-race-" + round + "-" + t0;
        long p0 = System.nanoTime();
        c.invalidate(InvalidateQuery.create().keys(key).reason("java race round"));
        long p1 = System.nanoTime();
        admin(emulator, "POST", "/admin/faults", "{\"path_prefix\":\"" + path + "\",\"hold\":true,\"count\":1}");
        CompletableFuture<CacheResult> inflight = c.getAsync(GetQuery.of("routing.queue").id(id));
        long heldBy = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
        while (!admin(emulator, "GET", "/admin/held", null).matches(".*\"held\"\\s*:\\s*[1-9].*")
            && System.nanoTime() < heldBy && !inflight.isDone()) {
          Thread.sleep(1);
        }
        long p2 = System.nanoTime();
        admin(emulator, "PATCH", "/admin/queues/" + id, "{\"name\":\"" + name + "\"}");
        long p3 = System.nanoTime();
        toOther.write(key + "\n");
        toOther.flush();
        String ack = fromOther.readLine();
        long acked = System.nanoTime();
        assertTrue(ack != null && ack.startsWith("ok"), "the other process's Invalidate: " + ack);
        admin(emulator, "POST", "/admin/release", null);
        admin(emulator, "DELETE", "/admin/faults", null);
        inflight.get(10, TimeUnit.SECONDS);
        long p4 = System.nanoTime();
        // the Watch delay: when the other process's INVALIDATED reached a watcher, relative to its ack
        Long eventAt = arrivals.poll(5, TimeUnit.SECONDS);
        assertNotNull(eventAt, "no INVALIDATED event for round " + round);
        if (eventAt - acked <= 0) {
          eventsBeforeAck++;
        }
        worstEventAfterAck = Math.max(worstEventAfterAck, eventAt - acked);
        long p5 = System.nanoTime();
        for (int i = 0; i < 5; i++) {
          CacheResult r = c.get("routing.queue", id);
          long at = System.nanoTime();
          boolean stale = !r.json().contains(name);
          if (r.source() == Source.NEAR) {
            nearReads++;
          }
          if (stale && r.source() == Source.NEAR) {
            nearStaleReads++;
            worstNearStaleNanos = Math.max(worstNearStaleNanos, at - acked);
            if (at - acked > maxStaleness.toNanos()) {
              lateNearStaleReads++;
            }
          } else if (stale) {
            serverStaleReads++;
          }
        }
        long p6 = System.nanoTime();
        phase[0] += p1 - p0;
        phase[1] += p2 - p1;
        phase[2] += p3 - p2;
        phase[3] += p4 - p3;
        phase[4] += p5 - p4;
        phase[5] += p6 - p5;
      }
      events.close();
      System.out.printf("java live near: racing checker phases, mean ms per round: own invalidate %.1f, hold + Get"
          + " in flight %.1f, PATCH %.1f, other process's Invalidate + release + reply %.1f, event wait %.1f,"
          + " 5 reads %.1f; the INVALIDATED reached a watcher at most %.3f ms after the ack (%d of %d rounds"
          + " before the ack was read)%n", phase[0] / 1e6 / rounds, phase[1] / 1e6 / rounds, phase[2] / 1e6 / rounds,
          phase[3] / 1e6 / rounds, phase[4] / 1e6 / rounds, phase[5] / 1e6 / rounds, worstEventAfterAck / 1e6,
          eventsBeforeAck, rounds);
      toOther.write("\n");
      toOther.flush();
      NearCacheStats s = c.nearCacheStats();
      System.out.printf("java live near: racing checker %d rounds in %d ms: %d near reads, %d near reads of a value"
          + " older than the last acknowledged Invalidate (worst %.3f ms after it; %d past max staleness %d ms),"
          + " %d stale server reads; rejected fills %d; %s%n", rounds, LiveProcesses.since(t0).toMillis(), nearReads,
          nearStaleReads, worstNearStaleNanos / 1e6, lateNearStaleReads, maxStaleness.toMillis(), serverStaleReads,
          s.rejectedFills(), s);
      assertEquals(0, lateNearStaleReads, "near reads of a purged value past max staleness");
      assertEquals(0, serverStaleReads, "server reads of a purged value after the Invalidate returned");
      assertTrue(nearReads > 0, "the near cache served nothing: " + s);
    } finally {
      admin(emulator, "POST", "/admin/release", null);
      admin(emulator, "DELETE", "/admin/faults", null);
      other.destroy();
      other.waitFor(10, TimeUnit.SECONDS);
    }
  }
}
