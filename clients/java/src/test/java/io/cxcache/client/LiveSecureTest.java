package io.cxcache.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.time.Duration;
import java.util.UUID;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.condition.EnabledIfEnvironmentVariable;

/**
 * TLS and caller credentials against the secure instances of scripts/live-server.sh --secure
 * (clients/run-tests.sh starts them): API-key callers over TLS, mutual TLS, scopes.
 */
@EnabledIfEnvironmentVariable(named = "CXCACHE_ADDR", matches = ".+")
class LiveSecureTest {
  static String env(String name) {
    String v = System.getenv(name);
    assertTrue(v != null && !v.isEmpty(), name + " must be set with CXCACHE_ADDR (live-server.sh start --secure)");
    return v;
  }

  private static CacheClient.Builder tls(String addrVar) {
    return CacheClient.builder().target(env(addrVar)).caFile(Path.of(env("CXCACHE_TLS_CA")))
        .defaultTimeout(Duration.ofSeconds(10)).retryPolicy(RetryPolicy.disabled());
  }

  private static String anyQueueId(CacheClient c) {
    return c.get(GetQuery.of("routing.queues")).value().getStructValue().getFieldsOrThrow("entities")
        .getListValue().getValues(0).getStructValue().getFieldsOrThrow("id").getStringValue();
  }

  @Test
  void tlsWithApiKeyGetsInvalidatesAndWatches() {
    try (CacheClient c = tls("CXCACHE_TLS_ADDR").apiKey(env("CXCACHE_API_KEY")).build()) {
      String id = anyQueueId(c);
      CacheResult r = c.get("routing.queue", id);
      assertEquals(id, r.value().getStructValue().getFieldsOrThrow("id").getStringValue());
      try (WatchStream w = c.watch(WatchQuery.create().keys(r.key()).timeout(Duration.ofSeconds(20)))) {
        assertTrue(w.awaitReady(Duration.ofSeconds(10)), "Watch over TLS was not accepted");
        assertTrue(c.invalidate(InvalidateQuery.create().keys(r.key()).reason("java tls test")) >= 0);
        WatchEvent got = null;
        long deadline = System.nanoTime() + Duration.ofSeconds(10).toNanos();
        while (got == null && System.nanoTime() < deadline && !w.isFinished()) {
          WatchEvent ev = w.poll(Duration.ofMillis(500));
          if (ev != null && ev.type() == EventType.INVALIDATED) {
            got = ev;
          }
        }
        assertNotNull(got, "no INVALIDATED event over TLS");
        assertEquals(r.key(), got.key());
      }
    }
  }

  @Test
  void nearCacheStreamOverTlsCarriesTheKey() {
    // the routing caller may Watch routing.* only: its near cache's stream (prefix "") is
    // accepted and filtered to those kinds, and heartbeats make near hits possible
    try (CacheClient c = tls("CXCACHE_TLS_ADDR").bearerToken(env("CXCACHE_ROUTING_KEY"))
        .nearCache(NearCacheOptions.maxBytes(1 << 20)).build()) {
      String id = anyQueueId(c);
      LiveNearCacheTest.warm(c, id);
      c.get("routing.queue", id);
      assertEquals(Source.NEAR, c.get("routing.queue", id).source(), String.valueOf(c.nearCacheStats()));
      assertTrue(c.nearCacheStats().streamHealthy());
    }
  }

  @Test
  void noKeyIsUnauthenticated() {
    try (CacheClient c = tls("CXCACHE_TLS_ADDR").build()) {
      CacheException.Unauthenticated e = assertThrows(CacheException.Unauthenticated.class,
          () -> c.get(GetQuery.of("routing.queues")));
      System.out.println("java live: no key -> " + e.getMessage());
      try (WatchStream w = c.watch(WatchQuery.create().kinds("routing.queue"))) {
        assertThrows(CacheException.Unauthenticated.class, () -> w.awaitReady(Duration.ofSeconds(10)));
      }
    }
  }

  @Test
  void wrongKeyIsUnauthenticated() {
    try (CacheClient c = tls("CXCACHE_TLS_ADDR").bearerToken("not-a-key-" + UUID.randomUUID()).build()) {
      assertThrows(CacheException.Unauthenticated.class, () -> c.get(GetQuery.of("routing.queues")));
    }
  }

  @Test
  void routingKeyGettingUserIsPermissionDeniedNamingTheScope() {
    try (CacheClient c = tls("CXCACHE_TLS_ADDR").bearerToken(env("CXCACHE_ROUTING_KEY")).build()) {
      assertFalse(c.get(GetQuery.of("routing.queues")).json().isEmpty(), "routing.* is in its scope");
      CacheException.PermissionDenied e = assertThrows(CacheException.PermissionDenied.class,
          () -> c.get("user", UUID.randomUUID().toString()));
      System.out.println("java live: routing key Get user -> " + e.getMessage());
      assertTrue(e.statusMessage().contains("scope get") && e.statusMessage().contains("user"), e.statusMessage());
      assertTrue(e.statusMessage().contains("routing"), "names the caller: " + e.statusMessage());
    }
  }

  @Test
  void routingKeyPurgingDevUserIsPermissionDenied() {
    try (CacheClient c = tls("CXCACHE_TLS_ADDR").bearerToken(env("CXCACHE_ROUTING_KEY")).build()) {
      CacheException.PermissionDenied e = assertThrows(CacheException.PermissionDenied.class,
          () -> c.invalidate(InvalidateQuery.create().prefixes("dev:user").reason("java scope test")));
      System.out.println("java live: routing key purge dev:user -> " + e.getMessage());
      assertTrue(e.statusMessage().contains("dev:user"), e.statusMessage());
      // its own namespace is allowed
      c.invalidate(InvalidateQuery.create().prefixes("dev:routing.queue:").reason("java scope test"));
    }
  }

  @Test
  void mutualTlsWithACertificateNeedsNoKey() {
    try (CacheClient c = tls("CXCACHE_MTLS_ADDR")
        .clientCertificate(Path.of(env("CXCACHE_TLS_CLIENT_CERT")), Path.of(env("CXCACHE_TLS_CLIENT_KEY"))).build()) {
      String id = anyQueueId(c);
      assertEquals(id, c.get("routing.queue", id).value().getStructValue().getFieldsOrThrow("id").getStringValue());
      try (WatchStream w = c.watch(WatchQuery.create().kinds("routing.queue"))) {
        assertTrue(w.awaitReady(Duration.ofSeconds(10)), "Watch over mutual TLS was not accepted");
      }
    }
  }

  @Test
  void mutualTlsWithoutACertificateFails() {
    try (CacheClient c = tls("CXCACHE_MTLS_ADDR").build()) {
      CacheException e = assertThrows(CacheException.class, () -> c.get(GetQuery.of("routing.queues")));
      System.out.println("java live: mTLS without certificate -> " + e.getClass().getSimpleName() + ": " + e.getMessage());
      assertTrue(e instanceof CacheException.Unavailable || e instanceof CacheException.Unauthenticated, e.toString());
    }
  }

  @Test
  void plaintextAgainstTheTlsPortFailsClearly() {
    try (CacheClient c = CacheClient.builder().target(env("CXCACHE_TLS_ADDR")).plaintext()
        .bearerToken(env("CXCACHE_API_KEY")).defaultTimeout(Duration.ofSeconds(10))
        .retryPolicy(RetryPolicy.disabled()).build()) {
      CacheException e = assertThrows(CacheException.class, () -> c.get(GetQuery.of("routing.queues")));
      System.out.println("java live: plaintext to the TLS port -> " + e.getMessage());
      assertTrue(e.getMessage().contains("answered with TLS"), "the error should point at TLS: " + e.getMessage());
      try (WatchStream w = c.watch(WatchQuery.create().kinds("routing.queue").reconnect(RetryPolicy.disabled()))) {
        CacheException we = assertThrows(CacheException.class, () -> w.awaitReady(Duration.ofSeconds(10)));
        assertTrue(we.getMessage().contains("answered with TLS"), we.getMessage());
      }
    }
  }
}
