package io.cxcache.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import com.google.protobuf.util.JsonFormat;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestMethodOrder;
import org.junit.jupiter.api.condition.EnabledIfEnvironmentVariable;

/**
 * Live tests against a running cxcache + genesys-emulator (clients/run-tests.sh starts both and
 * exports CXCACHE_ADDR / CXCACHE_EMULATOR_URL).
 */
@EnabledIfEnvironmentVariable(named = "CXCACHE_ADDR", matches = ".+")
@TestMethodOrder(MethodOrderer.MethodName.class)
class LiveCacheTest {
  /** Each client suite uses its own queue so "first Get is UPSTREAM" holds on a shared server. */
  private static final int SUITE_QUEUE_INDEX = 2;

  private static CacheClient client;
  private static List<String> ids;
  private static final HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
  private static String emulator;

  private static String queue(int offset) {
    return ids.get((SUITE_QUEUE_INDEX + offset) % ids.size());
  }

  private static String admin(String method, String path, String json) throws Exception {
    HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(emulator + path)).timeout(Duration.ofSeconds(10));
    b = json == null ? b.method(method, HttpRequest.BodyPublishers.noBody())
        : b.header("content-type", "application/json").method(method, HttpRequest.BodyPublishers.ofString(json));
    HttpResponse<String> res = http.send(b.build(), HttpResponse.BodyHandlers.ofString());
    assertTrue(res.statusCode() / 100 == 2, method + " " + path + " -> " + res.statusCode());
    return res.body();
  }

  private static void clearFaults() throws Exception {
    admin("DELETE", "/admin/faults", null);
  }

  private static long queueGets() throws Exception {
    Struct.Builder s = Struct.newBuilder();
    JsonFormat.parser().merge(admin("GET", "/admin/counters", null), s);
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

  @BeforeAll
  static void connect() throws Exception {
    String url = System.getenv("CXCACHE_EMULATOR_URL");
    assertNotNull(url, "CXCACHE_EMULATOR_URL must be set with CXCACHE_ADDR");
    emulator = url.replaceAll("/$", "");
    client = CacheClient.builder().target(System.getenv("CXCACHE_ADDR")).defaultTimeout(Duration.ofSeconds(10)).build();
    clearFaults();
    ids = new ArrayList<>();
    for (Value e : client.get(GetQuery.of("routing.queues")).value().getStructValue()
        .getFieldsOrThrow("entities").getListValue().getValuesList()) {
      ids.add(e.getStructValue().getFieldsOrThrow("id").getStringValue());
    }
    assertFalse(ids.isEmpty(), "routing.queues returned no entities");
  }

  @AfterAll
  static void close() {
    if (client != null) {
      client.close();
    }
  }

  @Test
  void a_firstGetIsUpstreamThenCached() throws Exception {
    // Purged first, so the first Get is a miss even on a reused server.
    client.invalidate(InvalidateQuery.create().tags("queue:" + queue(0)).reason("java client test"));
    long before = queueGets();
    CacheResult first = client.get("routing.queue", queue(0));
    CacheResult second = client.get("routing.queue", queue(0));
    assertEquals(1, queueGets() - before);
    assertEquals(Source.UPSTREAM, first.source());
    assertTrue(second.source().isCached(), second.source().name());
    assertEquals(first.key(), second.key());
    assertEquals(first.json(), second.json());
    assertEquals(queue(0), first.value().getStructValue().getFieldsOrThrow("id").getStringValue());
    assertTrue(!second.ttlRemaining().isNegative() && !second.ttlRemaining().isZero());
  }

  @Test
  void b_forceRefreshGoesUpstream() throws Exception {
    client.get("routing.queue", queue(0));
    long before = queueGets();
    CacheResult r = client.get(GetQuery.of("routing.queue").id(queue(0)).forceRefresh(true));
    assertEquals(1, queueGets() - before);
    assertTrue(r.source() == Source.UPSTREAM || r.source() == Source.REVALIDATED, r.source().name());
  }

  @Test
  void c_variantSummaryAndAsync() {
    CompletableFuture<CacheResult> full = client.getAsync(GetQuery.of("routing.queue").id(queue(0)));
    CompletableFuture<CacheResult> summary =
        client.getAsync(GetQuery.of("routing.queue").id(queue(0)).variant("summary"));
    Map<String, Value> s = summary.join().value().getStructValue().getFieldsMap();
    Map<String, Value> f = full.join().value().getStructValue().getFieldsMap();
    assertNotEquals(full.join().key(), summary.join().key());
    assertFalse(s.isEmpty());
    assertTrue(f.keySet().containsAll(s.keySet()), "summary fields " + s.keySet() + " not in " + f.keySet());
  }

  @Test
  void d_unknownKindIsInvalidArgumentOnKind() {
    CacheException.InvalidArgument e =
        assertThrows(CacheException.InvalidArgument.class, () -> client.get(GetQuery.of("no.such.kind")));
    assertTrue(e.fieldViolations().stream().anyMatch(v -> v.field().equals("kind")), e.fieldViolations().toString());
  }

  @Test
  void e_missingIdIsInvalidArgumentOnId() {
    CacheException.InvalidArgument e =
        assertThrows(CacheException.InvalidArgument.class, () -> client.get(GetQuery.of("routing.queue")));
    assertTrue(e.fieldViolations().stream().anyMatch(v -> v.field().equals("id")), e.fieldViolations().toString());
  }

  @Test
  void f_unknownQueueIsNotFound() {
    assertThrows(CacheException.NotFound.class, () -> client.get("routing.queue", UUID.randomUUID().toString()));
  }

  @Test
  void g_upstream429IsResourceExhaustedWithRetryInfo() throws Exception {
    // The server waits out a Retry-After that ends inside the caller's deadline (and retries),
    // so make the upstream's Retry-After outlast this call's deadline.
    admin("POST", "/admin/faults",
        "{\"path_prefix\":\"/api/v2/routing/queues\",\"status\":429,\"retry_after_secs\":3,\"count\":1}");
    Duration retry;
    try {
      CacheException.ResourceExhausted e = assertThrows(CacheException.ResourceExhausted.class,
          () -> client.get(GetQuery.of("routing.queue").id(UUID.randomUUID().toString()).timeout(Duration.ofSeconds(1))));
      retry = e.retryDelay().orElseThrow(() -> new AssertionError("no RetryInfo: " + e));
      assertTrue(!retry.isNegative() && !retry.isZero() && retry.compareTo(Duration.ofSeconds(10)) <= 0, retry.toString());
    } finally {
      clearFaults();
    }
    Thread.sleep(Math.min(retry.toMillis(), 3000) + 100); // let the upstream token rest out
  }

  @Test
  void h_upstreamLatencyBeyondDeadline() throws Exception {
    admin("POST", "/admin/faults", "{\"path_prefix\":\"/api/v2/routing/queues\",\"latency_ms\":1500,\"count\":1}");
    try {
      long t0 = System.nanoTime();
      assertThrows(CacheException.DeadlineExceeded.class, () -> client.get(
          GetQuery.of("routing.queue").id(UUID.randomUUID().toString()).timeout(Duration.ofMillis(300))));
      assertTrue(System.nanoTime() - t0 < 1_200_000_000L);
    } finally {
      clearFaults();
      Thread.sleep(1500); // let the slow upstream call finish so later counter checks are exact
    }
  }

  @Test
  void i_invalidateKeyThenUpstream() {
    String id = queue(3);
    String key = client.get("routing.queue", id).key();
    assertTrue(client.get("routing.queue", id).source().isCached());
    assertTrue(client.invalidate(InvalidateQuery.create().keys(key).reason("java client test")) >= 1);
    assertEquals(Source.UPSTREAM, client.get("routing.queue", id).source());
  }

  @Test
  void j_invalidateByTag() {
    String id = queue(6);
    CacheResult r = client.get("routing.queue", id);
    assertFalse(r.tags().isEmpty(), "routing.queue entries should carry tags");
    assertTrue(client.invalidate(InvalidateQuery.create().tags(r.tags().get(0)).reason("java tag test")) >= 1);
    assertEquals(Source.UPSTREAM, client.get("routing.queue", id).source());
  }

  @Test
  void k_watchKeyReceivesInvalidated() {
    String key = client.get("routing.queue", queue(0)).key();
    try (WatchStream s = client.watch(WatchQuery.create().keys(key).timeout(Duration.ofSeconds(15)))) {
      assertTrue(s.awaitReady(Duration.ofSeconds(10)), "Watch did not start");
      assertTrue(client.invalidate(InvalidateQuery.create().keys(key).reason("java watch test")) >= 1);
      List<WatchEvent> got = new ArrayList<>();
      WatchEvent inval = null;
      long deadline = System.nanoTime() + 10_000_000_000L;
      while (inval == null && System.nanoTime() < deadline) {
        WatchEvent ev = s.poll(Duration.ofMillis(500));
        if (ev != null) {
          got.add(ev);
          if (ev.type() == EventType.INVALIDATED) {
            inval = ev;
          }
        } else if (s.isFinished()) {
          break;
        }
      }
      assertNotNull(inval, "no INVALIDATED event, got " + got);
      assertEquals(key, inval.key());
      assertEquals("routing.queue", inval.kind());
      assertEquals("java watch test", inval.reason());
      assertEquals(1L, got.get(0).sequence());
      assertNotNull(inval.time());
    }
  }

  /** The fields of a platform queue this test reads; the rest is ignored. */
  record Queue(String id, String name) {}

  @Test
  void l_valueMapsATypedQueue() {
    CacheResult r = client.get("routing.queue", queue(0));
    Queue q = r.value(Queue.class);
    assertEquals(queue(0), q.id());
    assertNotNull(q.name());
    Map<String, Object> m = r.value(new com.fasterxml.jackson.core.type.TypeReference<Map<String, Object>>() {});
    assertEquals(queue(0), m.get("id"));
  }

  @Test
  void m_repeatedGetsComeFromTheCacheTiers() {
    String id = queue(9);
    client.invalidate(InvalidateQuery.create().tags("queue:" + id).reason("java tiers test"));
    List<Source> sources = new ArrayList<>();
    for (int i = 0; i < 3; i++) {
      sources.add(client.get("routing.queue", id).source());
    }
    System.out.println("java live: sources of three Gets after a purge: " + sources);
    assertEquals(Source.UPSTREAM, sources.get(0));
    assertTrue(sources.get(1).isCached() && sources.get(2).isCached(), sources.toString());
  }

  @Test
  void n_notFoundExposesTheUpstreamErrorWhenSent() {
    CacheException.NotFound e = assertThrows(CacheException.NotFound.class,
        () -> client.get("routing.queue", UUID.randomUUID().toString()));
    // the server forwards the platform's error as ErrorInfo(domain cxcache.upstream) when it can
    e.upstreamError().ifPresent(u -> assertEquals(404, u.httpStatus(), u.toString()));
    System.out.println("java live: NotFound upstreamError=" + e.upstreamError() + " message=" + e.getMessage());
  }
}
