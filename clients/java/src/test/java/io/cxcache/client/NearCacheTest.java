package io.cxcache.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.ByteString;
import io.cxcache.v1.CacheGrpc;
import io.cxcache.v1.GetRequest;
import io.cxcache.v1.GetResponse;
import io.cxcache.v1.InvalidateRequest;
import io.cxcache.v1.InvalidateResponse;
import io.cxcache.v1.WatchRequest;
import io.grpc.ManagedChannel;
import io.grpc.Server;
import io.grpc.Status;
import io.grpc.inprocess.InProcessChannelBuilder;
import io.grpc.inprocess.InProcessServerBuilder;
import io.grpc.stub.ServerCallStreamObserver;
import io.grpc.stub.StreamObserver;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.BooleanSupplier;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** The near cache against an in-process fake server whose Watch stream the test drives. */
class NearCacheTest {
  /** A fake cxcache: Gets answer a versioned value per key; Watch streams are held for the test. */
  static final class Fake extends CacheGrpc.CacheImplBase {
    final AtomicInteger gets = new AtomicInteger();
    final Map<String, AtomicInteger> versions = new ConcurrentHashMap<>();
    final List<WatchRequest> watches = new CopyOnWriteArrayList<>();
    final List<ServerCallStreamObserver<io.cxcache.v1.WatchEvent>> streams = new CopyOnWriteArrayList<>();
    final AtomicInteger cancelled = new AtomicInteger();
    final AtomicLong position = new AtomicLong();
    volatile boolean heartbeatFirst = true;
    volatile boolean refuseWatch;
    final AtomicInteger watchCalls = new AtomicInteger();
    /** Periodic heartbeats (every 20 ms) to the newest stream while true. */
    volatile boolean beating = true;
    final java.util.concurrent.ScheduledExecutorService beat =
        java.util.concurrent.Executors.newSingleThreadScheduledExecutor();

    Fake() {
      beat.scheduleAtFixedRate(() -> {
        if (beating && !streams.isEmpty()) {
          try {
            send(ev(io.cxcache.v1.WatchEvent.Type.TYPE_HEARTBEAT, ""));
          } catch (RuntimeException e) {
            // stream gone
          }
        }
      }, 20, 20, TimeUnit.MILLISECONDS);
    }
    volatile CountDownLatch hold;
    volatile CountDownLatch held = new CountDownLatch(1);
    volatile io.cxcache.v1.Source source = io.cxcache.v1.Source.SOURCE_L1;
    volatile Duration ttl = Duration.ofSeconds(60);
    volatile Duration age = Duration.ZERO;
    /** Events replayed to a stream that resumes after a position this fake knows. */
    final List<io.cxcache.v1.WatchEvent> replay = new CopyOnWriteArrayList<>();

    static String keyOf(GetRequest r) {
      return "dev:" + r.getKind() + ":" + r.getId() + (r.getVariant().isEmpty() ? "" : "@" + r.getVariant());
    }

    @Override
    public void get(GetRequest r, StreamObserver<GetResponse> obs) {
      gets.incrementAndGet();
      String key = keyOf(r);
      int v = versions.computeIfAbsent(key, k -> new AtomicInteger(1)).get();
      CountDownLatch h = hold;
      if (h != null) {
        held.countDown();
        try {
          h.await(10, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
        }
      }
      obs.onNext(GetResponse.newBuilder()
          .setValue(ByteString.copyFromUtf8("{\"id\":\"" + r.getId() + "\",\"v\":" + v + "}"))
          .setSource(source).setKey(key).addTags("queue:" + r.getId())
          .setAge(Durations.toProto(age)).setTtlRemaining(Durations.toProto(ttl)).build());
      obs.onCompleted();
    }

    @Override
    public void invalidate(InvalidateRequest r, StreamObserver<InvalidateResponse> obs) {
      obs.onNext(InvalidateResponse.newBuilder().setPurged(r.getKeysCount()).build());
      obs.onCompleted();
    }

    @Override
    public synchronized void watch(WatchRequest r, StreamObserver<io.cxcache.v1.WatchEvent> obs) {
      watchCalls.incrementAndGet();
      if (refuseWatch) {
        obs.onError(Status.UNAVAILABLE.withDescription("refused by the test").asRuntimeException());
        return;
      }
      ServerCallStreamObserver<io.cxcache.v1.WatchEvent> s = (ServerCallStreamObserver<io.cxcache.v1.WatchEvent>) obs;
      s.setOnCancelHandler(cancelled::incrementAndGet);
      watches.add(r);
      streams.add(s);
      if (!r.getResumeAfter().isEmpty()) {
        if (r.getResumeAfter().startsWith("p")) {
          for (io.cxcache.v1.WatchEvent e : replay) {
            s.onNext(e);
          }
        } else {
          s.onNext(ev(io.cxcache.v1.WatchEvent.Type.TYPE_RESET, ""));
        }
      }
      if (heartbeatFirst) {
        s.onNext(ev(io.cxcache.v1.WatchEvent.Type.TYPE_HEARTBEAT, ""));
      }
    }

    io.cxcache.v1.WatchEvent ev(io.cxcache.v1.WatchEvent.Type type, String key) {
      long p = position.incrementAndGet();
      return io.cxcache.v1.WatchEvent.newBuilder().setType(type).setKey(key)
          .setPosition("p" + p).setSequence(p).build();
    }

    ServerCallStreamObserver<io.cxcache.v1.WatchEvent> stream() {
      return streams.get(streams.size() - 1);
    }

    synchronized void send(io.cxcache.v1.WatchEvent e) {
      stream().onNext(e);
    }

    synchronized void fail(Status status) {
      stream().onError(status.asRuntimeException());
    }

    synchronized void end() {
      stream().onCompleted();
    }
  }

  private Fake fake;
  private Server server;
  private ManagedChannel channel;
  private final List<CacheClient> clients = new CopyOnWriteArrayList<>();

  @BeforeEach
  void start() throws Exception {
    fake = new Fake();
    String name = InProcessServerBuilder.generateName();
    server = InProcessServerBuilder.forName(name).addService(fake).build().start();
    channel = InProcessChannelBuilder.forName(name).build();
  }

  @AfterEach
  void stop() throws Exception {
    fake.beat.shutdownNow();
    for (CacheClient c : clients) {
      c.close();
    }
    channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    server.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
  }

  private CacheClient client(NearCacheOptions near) {
    CacheClient c = CacheClient.builder().channel(channel).defaultTimeout(Duration.ofSeconds(5)).nearCache(near).build();
    clients.add(c);
    return c;
  }

  private CacheClient client() {
    return client(NearCacheOptions.maxBytes(1 << 20));
  }

  /** Waits (bounded) until the condition holds. */
  private static void await(String what, BooleanSupplier cond) throws InterruptedException {
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
    while (!cond.getAsBoolean()) {
      assertTrue(System.nanoTime() < deadline, "timed out waiting for " + what);
      Thread.sleep(2);
    }
  }

  private static final io.cxcache.v1.WatchEvent.Type INV = io.cxcache.v1.WatchEvent.Type.TYPE_INVALIDATED;
  private static final io.cxcache.v1.WatchEvent.Type HB = io.cxcache.v1.WatchEvent.Type.TYPE_HEARTBEAT;

  @Test
  void secondGetIsANearHitWithoutACall() {
    CacheClient c = client();
    CacheResult first = c.get("routing.queue", "q1");
    CacheResult second = c.get("routing.queue", "q1");
    assertEquals(Source.L1, first.source());
    assertEquals(Source.NEAR, second.source());
    assertTrue(second.source().isCached());
    assertEquals(first.json(), second.json());
    assertEquals(first.key(), second.key());
    assertEquals(first.tags(), second.tags());
    assertEquals(1, fake.gets.get());
    NearCacheStats s = c.nearCacheStats();
    assertEquals(1, s.hits());
    assertEquals(1, s.misses());
    assertEquals(1, s.entries());
    assertTrue(s.weightBytes() > first.raw().size(), s.toString());
    assertTrue(s.streamHealthy());
  }

  @Test
  void oneWatchForAllKindsWithHeartbeatsAtAQuarterOfMaxStaleness() {
    CacheClient c = client(NearCacheOptions.maxBytes(1 << 20).maxStaleness(Duration.ofMillis(800)));
    c.get("routing.queue", "q1");
    c.get("user", "u1");
    c.get("user", "u1");
    assertEquals(1, fake.watches.size());
    WatchRequest w = fake.watches.get(0);
    assertEquals(List.of(""), w.getPrefixesList());
    assertFalse(w.getInvalidatedOnly());
    assertEquals(Duration.ofMillis(200), Durations.toJava(w.getHeartbeatInterval()));
    assertTrue(w.getResumeAfter().isEmpty());
  }

  @Test
  void configuredKindsOnlyAndInvalidatedOnlyOption() {
    CacheClient c = client(NearCacheOptions.maxBytes(1 << 20).kinds("routing.queue").invalidatedOnly(true)
        .maxStaleness(Duration.ofMillis(200)));
    c.get("user", "u1");
    assertEquals(0, fake.watches.size(), "a kind not near-cached opens no stream");
    assertEquals(Source.L1, c.get("user", "u1").source());
    c.get("routing.queue", "q1");
    assertEquals(Source.NEAR, c.get("routing.queue", "q1").source());
    WatchRequest w = fake.watches.get(0);
    assertEquals(List.of("routing.queue"), w.getKindsList());
    assertTrue(w.getPrefixesList().isEmpty());
    assertTrue(w.getInvalidatedOnly());
    assertEquals(Duration.ofMillis(100), Durations.toJava(w.getHeartbeatInterval()), "clamped to 100 ms");
  }

  @Test
  void anEventForTheServerKeyDropsEveryRequestMappingToIt() throws Exception {
    CacheClient c = client();
    CacheResult r = c.get("routing.queue", "q1");
    c.get(GetQuery.of("routing.queue").id("q1").maxAge(Duration.ofSeconds(30))); // same identity
    c.get("routing.queue", "q2");
    assertEquals(Source.NEAR, c.get("routing.queue", "q1").source());
    fake.versions.get(r.key()).incrementAndGet();
    fake.send(fake.ev(INV, r.key()));
    await("entry dropped", () -> c.nearCacheStats().invalidations() == 1);
    CacheResult after = c.get("routing.queue", "q1");
    assertNotEquals(Source.NEAR, after.source());
    assertTrue(after.json().contains("\"v\":2"), after.json());
    assertEquals(Source.NEAR, c.get("routing.queue", "q2").source(), "other keys stay");
    assertEquals(Source.NEAR, c.get("routing.queue", "q1").source(), "refilled");
  }

  @Test
  void updatedPrefixAndTagEventsDropToo() throws Exception {
    CacheClient c = client();
    c.get("routing.queue", "q1");
    c.get("routing.queue", "q2");
    c.get("user", "u1");
    fake.send(fake.ev(io.cxcache.v1.WatchEvent.Type.TYPE_UPDATED, "dev:routing.queue:q1"));
    await("updated", () -> c.nearCacheStats().entries() == 2);
    fake.send(io.cxcache.v1.WatchEvent.newBuilder().setType(INV).setTag("queue:q2").setPosition("p99").build());
    await("tag", () -> c.nearCacheStats().entries() == 1);
    fake.send(io.cxcache.v1.WatchEvent.newBuilder().setType(INV).setPrefix("dev:user:").setPosition("p100").build());
    await("prefix", () -> c.nearCacheStats().entries() == 0);
    assertEquals(0, c.nearCacheStats().flushes());
  }

  @Test
  void noNearHitOnceMaxStalenessPassedWithoutAHeartbeat() throws Exception {
    CacheClient c = client(NearCacheOptions.maxBytes(1 << 20).maxStaleness(Duration.ofMillis(150)));
    c.get("routing.queue", "q1");
    fake.beating = false;
    long filled = System.nanoTime();
    assertEquals(Source.NEAR, c.get("routing.queue", "q1").source());
    await("not healthy", () -> !c.nearCacheStats().streamHealthy());
    assertTrue(System.nanoTime() - filled >= TimeUnit.MILLISECONDS.toNanos(140));
    assertNotEquals(Source.NEAR, c.get("routing.queue", "q1").source());
    fake.beating = true;
    await("healthy again", () -> c.nearCacheStats().streamHealthy());
    assertEquals(Source.NEAR, c.get("routing.queue", "q1").source(), "the entry itself was kept");
  }

  @Test
  void aReplyRacingAnEventIsNotKept() throws Exception {
    CacheClient c = client();
    c.get("routing.queue", "q0"); // opens the stream
    fake.hold = new CountDownLatch(1);
    Future<CacheResult> inflight = c.getAsync(GetQuery.of("routing.queue").id("q1"));
    assertTrue(fake.held.await(5, TimeUnit.SECONDS));
    fake.send(fake.ev(INV, "dev:routing.queue:q1"));
    await("event applied", () -> c.nearCacheStats().events() == 1);
    fake.hold.countDown();
    fake.hold = null;
    assertEquals(Source.L1, inflight.get(5, TimeUnit.SECONDS).source());
    assertEquals(1, c.nearCacheStats().rejectedFills());
    assertNotEquals(Source.NEAR, c.get("routing.queue", "q1").source());
    assertEquals(Source.NEAR, c.get("routing.queue", "q1").source());
  }

  @Test
  void ownInvalidateWhileAGetIsInFlightRefusesItsReply() throws Exception {
    CacheClient c = client();
    c.get("routing.queue", "q0");
    fake.hold = new CountDownLatch(1);
    Future<CacheResult> inflight = c.getAsync(GetQuery.of("routing.queue").id("q1"));
    assertTrue(fake.held.await(5, TimeUnit.SECONDS));
    c.invalidate(InvalidateQuery.create().keys("dev:routing.queue:q1"));
    fake.hold.countDown();
    fake.hold = null;
    inflight.get(5, TimeUnit.SECONDS);
    assertEquals(1, c.nearCacheStats().rejectedFills());
    assertEquals(0, c.nearCacheStats().entries() - 1, "only q0 is held");
  }

  @Test
  void whileTheStreamIsDownEntriesServeUntilMaxStalenessAndFillsAreRefused() throws Exception {
    CacheClient c = client(NearCacheOptions.maxBytes(1 << 20).maxStaleness(Duration.ofMillis(300)));
    c.get("routing.queue", "q1");
    fake.beating = false;
    fake.refuseWatch = true;
    long cut = System.nanoTime();
    fake.fail(Status.UNAVAILABLE.withDescription("cut"));
    await("reconnect attempts", () -> fake.watchCalls.get() >= 2);
    CacheResult during = c.get("routing.queue", "q2"); // a miss while down: not kept
    assertEquals(Source.L1, during.source());
    assertEquals(1, c.nearCacheStats().rejectedFills());
    long lastNear = 0;
    while (System.nanoTime() - cut < TimeUnit.MILLISECONDS.toNanos(600)) {
      if (c.get("routing.queue", "q1").source() == Source.NEAR) {
        lastNear = System.nanoTime();
      }
      Thread.sleep(5);
    }
    assertTrue(lastNear == 0 || lastNear - cut < TimeUnit.MILLISECONDS.toNanos(300), "near hit past max staleness");
    assertEquals(0, c.nearCacheStats().flushes(), "a lost stream alone flushes nothing");
    fake.refuseWatch = false;
    fake.beating = true;
    await("resumed", () -> c.nearCacheStats().streamHealthy());
    assertEquals(1, c.nearCacheStats().resumes());
    assertEquals(Source.NEAR, c.get("routing.queue", "q1").source(), "kept across a resumed gap");
  }

  @Test
  void resetAndLaggedFlush() throws Exception {
    CacheClient c = client();
    c.get("routing.queue", "q1");
    fake.send(fake.ev(io.cxcache.v1.WatchEvent.Type.TYPE_LAGGED, ""));
    await("flush", () -> c.nearCacheStats().flushes() == 1);
    assertEquals(0, c.nearCacheStats().entries());
    c.get("routing.queue", "q1");
    assertEquals(Source.NEAR, c.get("routing.queue", "q1").source());
    fake.send(fake.ev(io.cxcache.v1.WatchEvent.Type.TYPE_RESET, ""));
    await("flush", () -> c.nearCacheStats().flushes() == 2);
    assertNotEquals(Source.NEAR, c.get("routing.queue", "q1").source());
  }

  @Test
  void aLostStreamResumesAfterTheLastPositionAndReplaysWithoutAFlush() throws Exception {
    CacheClient c = client();
    c.get("routing.queue", "q1");
    c.get("routing.queue", "q2");
    String last = "p" + fake.position.get();
    fake.replay.add(fake.ev(INV, "dev:routing.queue:q1"));
    fake.fail(Status.UNAVAILABLE.withDescription("cut"));
    await("resumed", () -> fake.watches.size() == 2 && c.nearCacheStats().streamHealthy()
        && c.nearCacheStats().entries() == 1);
    assertEquals(last, fake.watches.get(1).getResumeAfter());
    assertEquals(0, c.nearCacheStats().flushes());
    assertEquals(1, c.nearCacheStats().resumes());
    assertNotEquals(Source.NEAR, c.get("routing.queue", "q1").source());
    assertEquals(Source.NEAR, c.get("routing.queue", "q2").source());
  }

  @Test
  void aStreamThatCannotResumeIsReset() throws Exception {
    CacheClient c = client();
    c.get("routing.queue", "q1");
    fake.beating = false; // the fake answers RESET to a resume after a position it does not know ("x1")
    fake.send(io.cxcache.v1.WatchEvent.newBuilder().setType(HB).setPosition("x1").build());
    fake.end(); // a server shutting down ends its watches with OK
    fake.beating = true;
    await("reset", () -> c.nearCacheStats().flushes() == 1 && fake.watches.size() == 2);
    assertEquals("x1", fake.watches.get(1).getResumeAfter());
    assertEquals(0, c.nearCacheStats().resumes());
    assertNotEquals(Source.NEAR, c.get("routing.queue", "q1").source());
  }

  @Test
  void ownInvalidateDropsAtOnceByKeyPrefixAndTag() {
    CacheClient c = client();
    String k1 = c.get("routing.queue", "q1").key();
    c.get("routing.queue", "q2");
    c.get("routing.queue", "q3");
    c.get("user", "u1");
    c.invalidate(InvalidateQuery.create().keys(k1));
    assertNotEquals(Source.NEAR, c.get("routing.queue", "q1").source());
    c.invalidate(InvalidateQuery.create().tags("queue:q2"));
    assertNotEquals(Source.NEAR, c.get("routing.queue", "q2").source());
    assertEquals(Source.NEAR, c.get("routing.queue", "q3").source());
    c.invalidateAsync(InvalidateQuery.create().prefixes("dev:user:")).join();
    assertNotEquals(Source.NEAR, c.get("user", "u1").source());
    assertEquals(Source.NEAR, c.get("routing.queue", "q3").source());
  }

  @Test
  void forceRefreshBypassesAndRefills() {
    CacheClient c = client();
    c.get("routing.queue", "q1");
    fake.versions.get("dev:routing.queue:q1").incrementAndGet();
    CacheResult forced = c.get(GetQuery.of("routing.queue").id("q1").forceRefresh(true));
    assertEquals(Source.L1, forced.source());
    CacheResult next = c.get("routing.queue", "q1");
    assertEquals(Source.NEAR, next.source());
    assertTrue(next.json().contains("\"v\":2"), next.json());
  }

  @Test
  void staleRepliesAreNotKeptAndMaxAgeAndTtlAreHonoured() throws Exception {
    CacheClient c = client();
    fake.source = io.cxcache.v1.Source.SOURCE_STALE;
    c.get("routing.queue", "q1");
    assertEquals(Source.STALE, c.get(GetQuery.of("routing.queue").id("q1").allowStale(true)).source());
    fake.source = io.cxcache.v1.Source.SOURCE_L1;
    fake.age = Duration.ofSeconds(10);
    c.get("routing.queue", "q2");
    assertEquals(Source.NEAR, c.get(GetQuery.of("routing.queue").id("q2").maxAge(Duration.ofSeconds(20))).source());
    CacheResult tooOld = c.get(GetQuery.of("routing.queue").id("q2").maxAge(Duration.ofSeconds(5)));
    assertEquals(Source.L1, tooOld.source());
    fake.age = Duration.ZERO;
    fake.ttl = Duration.ofMillis(100);
    c.get("routing.queue", "q3");
    CacheResult hit = c.get("routing.queue", "q3");
    long t0 = System.nanoTime();
    if (hit.source() == Source.NEAR) {
      assertTrue(hit.ttlRemaining().compareTo(Duration.ofMillis(100)) <= 0);
    }
    await("ttl over", () -> System.nanoTime() - t0 > TimeUnit.MILLISECONDS.toNanos(120));
    assertEquals(Source.L1, c.get(GetQuery.of("routing.queue").id("q3").allowStale(true)).source(),
        "never a near entry past its TTL");
  }

  @Test
  void boundedByBytesWithEvictions() {
    CacheClient c = client(NearCacheOptions.maxBytes(4096));
    for (int i = 0; i < 200; i++) {
      c.get("routing.queue", "q" + i);
    }
    NearCacheStats s = c.nearCacheStats();
    assertTrue(s.weightBytes() <= 4096, s.toString());
    assertTrue(s.evictions() > 0, s.toString());
    assertTrue(s.entries() < 200 && s.entries() > 0, s.toString());
  }

  @Test
  void closeStopsTheStream() throws Exception {
    CacheClient c = CacheClient.builder().channel(channel).nearCache(NearCacheOptions.maxBytes(1 << 20)).build();
    c.get("routing.queue", "q1");
    c.close();
    await("stream cancelled", () -> fake.cancelled.get() == 1);
  }

  @Test
  void plainWatchHidesHeartbeatsUnlessAsked() throws Exception {
    fake.beating = false;
    CacheClient c = CacheClient.builder().channel(channel).build();
    clients.add(c);
    try (WatchStream s = c.watch(WatchQuery.create().keys("k"))) {
      assertTrue(s.awaitReady(Duration.ofSeconds(5)));
      await("heartbeat sent", () -> fake.streams.size() == 1);
      fake.send(fake.ev(INV, "k"));
      WatchEvent ev = s.poll(Duration.ofSeconds(5));
      assertNotNull(ev);
      assertEquals(EventType.INVALIDATED, ev.type(), "the heartbeat was not delivered");
      assertEquals("p2", ev.position());
      assertEquals(1, ev.sequence(), "renumbered without the hidden heartbeat");
      assertEquals("p2", s.lastPosition());
      assertTrue(fake.watches.get(0).getResumeAfter().isEmpty());
      assertFalse(fake.watches.get(0).hasHeartbeatInterval());
    }
    try (WatchStream s = c.watch(WatchQuery.create().keys("k").heartbeats(Duration.ofMillis(300)).resumeAfter("p1")
        .invalidatedOnly(true))) {
      WatchEvent first = s.poll(Duration.ofSeconds(5));
      assertNotNull(first);
      WatchRequest w = fake.watches.get(1);
      assertEquals("p1", w.getResumeAfter());
      assertTrue(w.getInvalidatedOnly());
      assertEquals(Duration.ofMillis(300), Durations.toJava(w.getHeartbeatInterval()));
      assertEquals(EventType.HEARTBEAT, first.type());
    }
  }

  @Test
  void autoResumeResumesInsteadOfTheGapEvent() throws Exception {
    CacheClient c = CacheClient.builder().channel(channel)
        .watchReconnect(RetryPolicy.watchDefaults().withInitialBackoff(Duration.ofMillis(5))).build();
    clients.add(c);
    fake.beating = false;
    try (WatchStream s = c.watch(WatchQuery.create().keys("k").autoResume(true))) {
      await("stream", () -> fake.streams.size() == 1);
      fake.send(fake.ev(INV, "k"));
      assertEquals(EventType.INVALIDATED, s.poll(Duration.ofSeconds(5)).type());
      fake.replay.add(fake.ev(INV, "k2"));
      fake.fail(Status.UNAVAILABLE);
      WatchEvent replayed = s.poll(Duration.ofSeconds(5));
      assertNotNull(replayed);
      assertEquals("k2", replayed.key(), "replayed, no resubscribed LAGGED");
      assertEquals("p2", fake.watches.get(1).getResumeAfter());
    }
  }
}
