package io.cxcache.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Any;
import com.google.protobuf.ByteString;
import com.google.rpc.Code;
import com.google.rpc.RetryInfo;
import io.cxcache.v1.CacheGrpc;
import io.cxcache.v1.GetRequest;
import io.cxcache.v1.GetResponse;
import io.cxcache.v1.InvalidateRequest;
import io.cxcache.v1.InvalidateResponse;
import io.cxcache.v1.WatchRequest;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.inprocess.InProcessChannelBuilder;
import io.grpc.inprocess.InProcessServerBuilder;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.StreamObserver;
import io.opentelemetry.api.trace.Span;
import io.opentelemetry.api.trace.SpanContext;
import io.opentelemetry.api.trace.TraceFlags;
import io.opentelemetry.api.trace.TraceState;
import io.opentelemetry.context.Scope;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * Retries (RetryInfo, bounds, opt-out), wait-for-ready, watch reconnection, credentials, trace
 * propagation and transport choice, against an in-process fake server.
 */
class ResilienceTest {
  private static Server server;
  private static ManagedChannel channel;
  private static final Map<String, AtomicInteger> CALLS = new ConcurrentHashMap<>();
  private static final AtomicReference<Metadata> LAST_HEADERS = new AtomicReference<>();

  /** "fail:CODE:N:DELAYMS:NAME" fails N times with CODE (+RetryInfo DELAYMS if > 0), then answers. */
  static final class FlakyCache extends CacheGrpc.CacheImplBase {
    private static void fail(StreamObserver<?> obs, Code code, long delayMs) {
      com.google.rpc.Status.Builder s =
          com.google.rpc.Status.newBuilder().setCode(code.getNumber()).setMessage("flaky " + code);
      if (delayMs > 0) {
        s.addDetails(Any.pack(RetryInfo.newBuilder().setRetryDelay(
            com.google.protobuf.Duration.newBuilder().setSeconds(delayMs / 1000)
                .setNanos((int) (delayMs % 1000) * 1_000_000)).build()));
      }
      obs.onError(StatusProto.toStatusRuntimeException(s.build()));
    }

    @Override
    public void get(GetRequest r, StreamObserver<GetResponse> obs) {
      String[] p = r.getKind().split(":");
      int n = CALLS.computeIfAbsent(r.getKind(), k -> new AtomicInteger()).incrementAndGet();
      if (p[0].equals("fail") && n <= Integer.parseInt(p[2])) {
        fail(obs, Code.valueOf(p[1]), Long.parseLong(p[3]));
        return;
      }
      obs.onNext(GetResponse.newBuilder().setValue(ByteString.copyFromUtf8("{\"attempt\":" + n + "}"))
          .setSource(io.cxcache.v1.Source.SOURCE_STORE).setKey("k").build());
      obs.onCompleted();
    }

    @Override
    public void invalidate(InvalidateRequest r, StreamObserver<InvalidateResponse> obs) {
      int n = CALLS.computeIfAbsent("invalidate:" + r.getReason(), k -> new AtomicInteger()).incrementAndGet();
      if (n == 1) {
        fail(obs, Code.UNAVAILABLE, 0);
        return;
      }
      obs.onNext(InvalidateResponse.newBuilder().setPurged(n).build());
      obs.onCompleted();
    }

    /**
     * prefix "drop:NAME": each subscription sends one event with its attempt number as key; the
     * first ends with UNAVAILABLE, later ones stay open. prefix "refuse:N:NAME": the first N
     * subscriptions fail with UNAVAILABLE before their headers.
     */
    @Override
    public void watch(WatchRequest r, StreamObserver<io.cxcache.v1.WatchEvent> obs) {
      String prefix = r.getPrefixes(0);
      int n = CALLS.computeIfAbsent(prefix, k -> new AtomicInteger()).incrementAndGet();
      String[] p = prefix.split(":");
      if (p[0].equals("refuse") && n <= Integer.parseInt(p[1])) {
        fail(obs, Code.UNAVAILABLE, 0);
        return;
      }
      obs.onNext(io.cxcache.v1.WatchEvent.newBuilder().setType(io.cxcache.v1.WatchEvent.Type.TYPE_INVALIDATED)
          .setKey("attempt-" + n).setSequence(1).build());
      if (p[0].equals("drop") && n == 1) {
        fail(obs, Code.UNAVAILABLE, 0);
      }
      if (p[0].equals("end") && n == 1) {
        obs.onCompleted(); // what cxcache does to its watches when it shuts down
      }
      // otherwise stays open until cancelled
    }
  }

  @BeforeAll
  static void start() throws Exception {
    String name = InProcessServerBuilder.generateName();
    ServerInterceptor capture = new ServerInterceptor() {
      @Override
      public <Q, R> ServerCall.Listener<Q> interceptCall(
          ServerCall<Q, R> call, Metadata headers, ServerCallHandler<Q, R> next) {
        LAST_HEADERS.set(headers);
        return next.startCall(call, headers);
      }
    };
    server = InProcessServerBuilder.forName(name)
        .addService(ServerInterceptors.intercept(new FlakyCache(), capture)).build().start();
    channel = InProcessChannelBuilder.forName(name).build();
  }

  @AfterAll
  static void stop() throws Exception {
    channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    server.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
  }

  @BeforeEach
  void reset() {
    CALLS.clear();
    LAST_HEADERS.set(null);
  }

  private static int calls(String key) {
    AtomicInteger n = CALLS.get(key);
    return n == null ? 0 : n.get();
  }

  /** Backoff of ~1 ms, so any longer wait comes from the server's RetryInfo. */
  private static final RetryPolicy FAST = RetryPolicy.defaults().withInitialBackoff(Duration.ofMillis(1))
      .withMaxBackoff(Duration.ofMillis(2));

  private static CacheClient client(RetryPolicy policy) {
    return CacheClient.builder().channel(channel).defaultTimeout(Duration.ofSeconds(5)).retryPolicy(policy).build();
  }

  @Test
  void retriesUnavailableHonouringRetryInfo() {
    try (CacheClient c = client(FAST)) {
      long t0 = System.nanoTime();
      CacheResult r = c.get(GetQuery.of("fail:UNAVAILABLE:2:300:a"));
      long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
      assertEquals(3, calls("fail:UNAVAILABLE:2:300:a"));
      assertEquals("{\"attempt\":3}", r.json());
      assertTrue(ms >= 600, "waited the server's 2 x 300 ms, took " + ms + " ms");
      assertTrue(ms < 3000, "took " + ms + " ms");
    }
  }

  @Test
  void retriesResourceExhaustedAndUsesItsOwnBackoffWithoutRetryInfo() {
    try (CacheClient c = client(FAST)) {
      long t0 = System.nanoTime();
      assertEquals(Source.STORE, c.get(GetQuery.of("fail:RESOURCE_EXHAUSTED:1:0:b")).source());
      assertEquals(2, calls("fail:RESOURCE_EXHAUSTED:1:0:b"));
      assertTrue(System.nanoTime() - t0 < TimeUnit.MILLISECONDS.toNanos(250));
    }
  }

  @Test
  void defaultPolicyRetriesToo() {
    try (CacheClient c = CacheClient.builder().channel(channel).build()) {
      assertEquals("{\"attempt\":2}", c.get(GetQuery.of("fail:UNAVAILABLE:1:0:default")).json());
    }
  }

  @Test
  void retryInfoLongerThanTheDeadlineFailsAtOnce() {
    try (CacheClient c = client(FAST)) {
      long t0 = System.nanoTime();
      CacheException.Unavailable e = assertThrows(CacheException.Unavailable.class,
          () -> c.get(GetQuery.of("fail:UNAVAILABLE:5:2000:c").timeout(Duration.ofMillis(500))));
      assertEquals(Duration.ofSeconds(2), e.retryDelay().orElseThrow());
      assertEquals(1, calls("fail:UNAVAILABLE:5:2000:c"));
      assertTrue(System.nanoTime() - t0 < TimeUnit.MILLISECONDS.toNanos(400));
    }
  }

  @Test
  void attemptsAreBounded() {
    try (CacheClient c = client(FAST.withMaxAttempts(3))) {
      assertThrows(CacheException.Unavailable.class, () -> c.get(GetQuery.of("fail:UNAVAILABLE:99:0:d")));
      assertEquals(3, calls("fail:UNAVAILABLE:99:0:d"));
    }
  }

  @Test
  void elapsedTimeIsBounded() {
    try (CacheClient c = client(FAST.withMaxAttempts(50).withMaxElapsed(Duration.ofMillis(250)))) {
      long t0 = System.nanoTime();
      assertThrows(CacheException.Unavailable.class, () -> c.get(GetQuery.of("fail:UNAVAILABLE:99:100:e")));
      assertTrue(calls("fail:UNAVAILABLE:99:100:e") <= 3);
      assertTrue(System.nanoTime() - t0 < TimeUnit.MILLISECONDS.toNanos(1000));
    }
  }

  @Test
  void retriesCanBeTurnedOff() {
    try (CacheClient c = client(RetryPolicy.disabled())) {
      assertThrows(CacheException.Unavailable.class, () -> c.get(GetQuery.of("fail:UNAVAILABLE:1:0:f")));
      assertEquals(1, calls("fail:UNAVAILABLE:1:0:f"));
    }
  }

  @Test
  void otherCodesAreNotRetried() {
    try (CacheClient c = client(FAST)) {
      assertThrows(CacheException.NotFound.class, () -> c.get(GetQuery.of("fail:NOT_FOUND:1:0:g")));
      assertEquals(1, calls("fail:NOT_FOUND:1:0:g"));
    }
  }

  @Test
  void asyncCallsAndInvalidateRetry() {
    try (CacheClient c = client(FAST)) {
      assertEquals("{\"attempt\":3}", c.getAsync(GetQuery.of("fail:UNAVAILABLE:2:50:h")).join().json());
      assertEquals(2L, c.invalidate(InvalidateQuery.create().keys("x").reason("sync")));
      assertEquals(2L, c.invalidateAsync(InvalidateQuery.create().keys("x").reason("async")).join());
    }
  }

  @Test
  void backoffGrowsIsCappedAndHonoursTheServerDelay() {
    RetryPolicy p = RetryPolicy.defaults().withJitter(0);
    assertEquals(Duration.ofMillis(100), p.backoff(1, null));
    assertEquals(Duration.ofMillis(400), p.backoff(3, null));
    assertEquals(Duration.ofSeconds(5), p.backoff(20, null));
    assertEquals(Duration.ofSeconds(7), p.backoff(1, Duration.ofSeconds(7)));
    RetryPolicy j = RetryPolicy.defaults().withJitter(0.5);
    for (int i = 0; i < 50; i++) {
      Duration d = j.backoff(2, null);
      assertTrue(d.compareTo(Duration.ofMillis(100)) >= 0 && d.compareTo(Duration.ofMillis(200)) <= 0, d.toString());
    }
    assertThrows(IllegalArgumentException.class, () -> RetryPolicy.defaults().withMaxAttempts(0));
    assertTrue(RetryPolicy.disabled().isDisabled());
  }

  @Test
  void waitForReadyWaitsForTheChannelInsteadOfFailing() {
    ManagedChannel nowhere = InProcessChannelBuilder.forName("no-server-" + System.nanoTime()).build();
    try (CacheClient fast = CacheClient.builder().channel(nowhere).retryPolicy(RetryPolicy.disabled()).build();
         CacheClient patient = CacheClient.builder().channel(nowhere).retryPolicy(RetryPolicy.disabled())
             .waitForReady(true).build()) {
      assertThrows(CacheException.Unavailable.class, () -> fast.get(GetQuery.of("x").timeout(Duration.ofSeconds(2))));
      long t0 = System.nanoTime();
      assertThrows(CacheException.DeadlineExceeded.class,
          () -> patient.get(GetQuery.of("x").timeout(Duration.ofMillis(300))));
      assertTrue(System.nanoTime() - t0 >= TimeUnit.MILLISECONDS.toNanos(250));
    } finally {
      nowhere.shutdownNow();
    }
  }

  private static final RetryPolicy FAST_RECONNECT =
      RetryPolicy.watchDefaults().withInitialBackoff(Duration.ofMillis(5)).withMaxBackoff(Duration.ofMillis(20));

  @Test
  void watchReconnectsAndReportsTheGap() {
    try (CacheClient c = client(FAST);
         WatchStream s = c.watch(WatchQuery.create().prefixes("drop:a").reconnect(FAST_RECONNECT))) {
      assertTrue(s.awaitReady(Duration.ofSeconds(5)));
      WatchEvent first = s.poll(Duration.ofSeconds(5));
      assertEquals("attempt-1", first.key());
      WatchEvent gap = s.poll(Duration.ofSeconds(5));
      assertEquals(EventType.LAGGED, gap.type());
      assertEquals(WatchEvent.RESUBSCRIBED, gap.reason());
      assertEquals(0, gap.sequence());
      assertTrue(gap.isResubscribed());
      assertTrue(gap.needsResync());
      assertEquals("attempt-2", s.poll(Duration.ofSeconds(5)).key());
      assertFalse(s.hasNext(Duration.ofMillis(50)));
      assertFalse(s.isFinished());
      s.cancel();
      assertFalse(s.hasNext());
      assertTrue(s.isFinished());
    }
  }

  @Test
  void watchEndedByTheServerIsResubscribedToo() {
    try (CacheClient c = client(FAST);
         WatchStream s = c.watch(WatchQuery.create().prefixes("end:a").reconnect(FAST_RECONNECT))) {
      assertEquals("attempt-1", s.next().key());
      assertTrue(s.next().isResubscribed());
      assertEquals("attempt-2", s.next().key());
    }
    try (CacheClient c = client(FAST);
         WatchStream s = c.watch(WatchQuery.create().prefixes("end:b").reconnect(RetryPolicy.disabled()))) {
      assertEquals("attempt-1", s.next().key());
      assertFalse(s.hasNext()); // without reconnection the server's end is the end of the iteration
      assertTrue(s.isFinished());
    }
  }

  @Test
  void watchRetriesTheFirstSubscriptionWithoutAGapEvent() {
    try (CacheClient c = client(FAST);
         WatchStream s = c.watch(WatchQuery.create().prefixes("refuse:2:b").reconnect(FAST_RECONNECT))) {
      assertTrue(s.awaitReady(Duration.ofSeconds(5)));
      assertEquals("attempt-3", s.poll(Duration.ofSeconds(5)).key());
      assertNull(s.poll(Duration.ofMillis(50)));
    }
  }

  @Test
  void watchReconnectCanBeTurnedOff() {
    try (CacheClient c = client(FAST);
         WatchStream s = c.watch(WatchQuery.create().prefixes("drop:c").reconnect(RetryPolicy.disabled()))) {
      assertEquals("attempt-1", s.next().key());
      assertThrows(CacheException.Unavailable.class, s::hasNext);
      assertTrue(s.isFinished());
      assertEquals(1, calls("drop:c"));
    }
  }

  @Test
  void watchGivesUpAfterItsAttempts() {
    try (CacheClient c = client(FAST);
         WatchStream s = c.watch(WatchQuery.create().prefixes("refuse:99:d").reconnect(FAST_RECONNECT.withMaxAttempts(3)))) {
      assertThrows(CacheException.Unavailable.class, () -> s.hasNext(Duration.ofSeconds(5)));
      assertEquals(3, calls("refuse:99:d"));
    }
  }

  @Test
  void observerWatchReconnectsToo() throws Exception {
    List<WatchEvent> events = new ArrayList<>();
    CountDownLatch three = new CountDownLatch(3);
    CountDownLatch done = new CountDownLatch(1);
    StreamObserver<WatchEvent> obs = new StreamObserver<>() {
      @Override public void onNext(WatchEvent value) { synchronized (events) { events.add(value); } three.countDown(); }
      @Override public void onError(Throwable t) { done.countDown(); }
      @Override public void onCompleted() { done.countDown(); }
    };
    try (CacheClient c = CacheClient.builder().channel(channel).watchReconnect(FAST_RECONNECT).build()) {
      WatchSubscription sub = c.watch(WatchQuery.create().prefixes("drop:e"), obs);
      assertTrue(three.await(5, TimeUnit.SECONDS));
      sub.cancel();
      assertTrue(done.await(5, TimeUnit.SECONDS));
    }
    synchronized (events) {
      assertEquals(List.of("attempt-1", "", "attempt-2"), events.stream().map(WatchEvent::key).toList());
      assertTrue(events.get(1).isResubscribed());
    }
  }

  @Test
  void cancelDuringReconnectBackoffEndsTheStream() {
    RetryPolicy slow = RetryPolicy.watchDefaults().withInitialBackoff(Duration.ofSeconds(30)).withJitter(0);
    try (CacheClient c = client(FAST);
         WatchStream s = c.watch(WatchQuery.create().prefixes("drop:f").reconnect(slow))) {
      assertEquals("attempt-1", s.next().key());
      assertFalse(s.hasNext(Duration.ofMillis(100))); // waiting out the 30 s backoff
      long t0 = System.nanoTime();
      s.cancel();
      assertFalse(s.hasNext());
      assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(2));
    }
  }

  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
  private static final Metadata.Key<String> TRACEPARENT =
      Metadata.Key.of("traceparent", Metadata.ASCII_STRING_MARSHALLER);

  @Test
  void bearerTokenAndApiKeyGoInAuthorization() {
    int[] n = {0};
    try (CacheClient c = CacheClient.builder().channel(channel).bearerToken(() -> "tok" + (++n[0])).build()) {
      c.get(GetQuery.of("ok"));
      assertEquals("Bearer tok1", LAST_HEADERS.get().get(AUTHORIZATION));
      c.get(GetQuery.of("ok"));
      assertEquals("Bearer tok2", LAST_HEADERS.get().get(AUTHORIZATION));
    }
    try (CacheClient c = CacheClient.builder().channel(channel).apiKey("k-123").header("x-team", "java").build()) {
      c.get(GetQuery.of("ok"));
      assertEquals("Bearer k-123", LAST_HEADERS.get().get(AUTHORIZATION), "cxcache reads API keys as Bearer");
      assertEquals("java", LAST_HEADERS.get().get(Metadata.Key.of("x-team", Metadata.ASCII_STRING_MARSHALLER)));
    }
    try (CacheClient c = CacheClient.builder().channel(channel).retryPolicy(RetryPolicy.disabled())
        .bearerToken(() -> { throw new IllegalStateException("vault down"); }).build()) {
      assertThrows(CacheException.Unauthenticated.class, () -> c.get(GetQuery.of("ok")));
    }
  }

  @Test
  void traceContextIsPropagatedAsTraceparent() {
    String traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    String spanId = "00f067aa0ba902b7";
    Span span = Span.wrap(SpanContext.create(traceId, spanId, TraceFlags.getSampled(), TraceState.getDefault()));
    try (CacheClient c = CacheClient.builder().channel(channel).build()) {
      c.get(GetQuery.of("ok"));
      assertNull(LAST_HEADERS.get().get(TRACEPARENT), "no span, no traceparent");
      try (Scope ignored = span.makeCurrent()) {
        c.get(GetQuery.of("ok"));
        assertEquals("00-" + traceId + "-" + spanId + "-01", LAST_HEADERS.get().get(TRACEPARENT));
        c.getAsync(GetQuery.of("ok")).join();
        assertEquals("00-" + traceId + "-" + spanId + "-01", LAST_HEADERS.get().get(TRACEPARENT));
      }
    }
    try (CacheClient c = CacheClient.builder().channel(channel).traceContextPropagation(false).build();
         Scope ignored = span.makeCurrent()) {
      c.get(GetQuery.of("ok"));
      assertNull(LAST_HEADERS.get().get(TRACEPARENT));
    }
  }

  @Test
  void loopbackTargetsArePlaintextOthersTls() {
    for (String t : List.of("127.0.0.1:50051", "localhost:50051", "LOCALHOST", "[::1]:50051", "::1",
        "dns:///127.0.0.1:50051", "dns:///localhost:1", "127.1.2.3:9", "unix:/tmp/cx.sock")) {
      assertTrue(CacheClient.isLoopback(t), t);
    }
    for (String t : List.of("cache.example.com:443", "10.0.0.1:50051", "[2001:db8::1]:50051",
        "dns:///cache.internal:50051", "localhost.example.com:1", "128.0.0.1:1")) {
      assertFalse(CacheClient.isLoopback(t), t);
    }
    assertTrue(CacheClient.builder().usesPlaintext("127.0.0.1:1"));
    assertFalse(CacheClient.builder().usesPlaintext("cache.example.com:443"));
    assertTrue(CacheClient.builder().plaintext().usesPlaintext("cache.example.com:443"));
    assertFalse(CacheClient.builder().tls().usesPlaintext("127.0.0.1:1"));
    assertFalse(CacheClient.builder().caFile(Path.of("ca.pem")).usesPlaintext("localhost:1"));
    assertInstanceOf(io.grpc.TlsChannelCredentials.class,
        CacheClient.builder().channelCredentials("cache.example.com:443"));
    assertInstanceOf(io.grpc.InsecureChannelCredentials.class,
        CacheClient.builder().channelCredentials("localhost:1"));
  }

  @Test
  void tlsOptionsBuildAChannelAndMissingFilesFailEarly() {
    try (CacheClient c = CacheClient.builder().target("cache.example.com:443").bearerToken("t").build()) {
      assertTrue(c != null); // TLS channel with the system CAs, connects lazily
    }
    assertThrows(java.io.UncheckedIOException.class, () -> CacheClient.builder().target("cache.example.com:443")
        .caFile(Path.of("/nonexistent/ca.pem")).build());
    assertThrows(java.io.UncheckedIOException.class, () -> CacheClient.builder().target("cache.example.com:443")
        .clientCertificate(Path.of("/nonexistent/c.pem"), Path.of("/nonexistent/k.pem")).build());
  }
}
