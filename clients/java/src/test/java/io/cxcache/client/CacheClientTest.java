package io.cxcache.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.core.type.TypeReference;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.google.protobuf.Any;
import com.google.protobuf.ByteString;
import com.google.protobuf.Timestamp;
import com.google.rpc.BadRequest;
import com.google.rpc.Code;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
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
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.ServerCallStreamObserver;
import io.grpc.stub.StreamObserver;
import java.io.UncheckedIOException;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletionException;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** Client behaviour against an in-process fake server: encoding, decoding, error model. */
class CacheClientTest {
  private static Server server;
  private static ManagedChannel channel;
  private static CacheClient client;

  static final class FakeCache extends CacheGrpc.CacheImplBase {
    private static void rich(StreamObserver<?> obs, Code code, String message, com.google.protobuf.Message... details) {
      com.google.rpc.Status.Builder s = com.google.rpc.Status.newBuilder().setCode(code.getNumber()).setMessage(message);
      for (com.google.protobuf.Message d : details) {
        s.addDetails(Any.pack(d));
      }
      obs.onError(StatusProto.toStatusRuntimeException(s.build()));
    }

    @Override
    public void get(GetRequest r, StreamObserver<GetResponse> obs) {
      switch (r.getKind()) {
        case "echo": {
          String echo = String.format(
              "{\"id\":\"%s\",\"variant\":\"%s\",\"params\":\"%s\",\"body\":%s,\"hasFreshness\":%s,"
                  + "\"maxAgeMs\":%d,\"allowStale\":%s,\"forceRefresh\":%s}",
              r.getId(), r.getVariant(), r.getParamsMap(), r.getBodyJson().isEmpty() ? "null" : r.getBodyJson(),
              r.hasFreshness(), Durations.toJava(r.getFreshness().getMaxAge()).toMillis(),
              r.getFreshness().getAllowStale(), r.getFreshness().getForceRefresh());
          obs.onNext(GetResponse.newBuilder()
              .setValue(ByteString.copyFromUtf8(echo))
              .setSource(io.cxcache.v1.Source.SOURCE_UPSTREAM)
              .setKey("test:echo")
              .setAge(com.google.protobuf.Duration.newBuilder().setSeconds(1).setNanos(500_000_000))
              .setTtlRemaining(com.google.protobuf.Duration.newBuilder().setSeconds(30))
              .addTags("queue:1")
              .build());
          obs.onCompleted();
          return;
        }
        case "bad":
          rich(obs, Code.INVALID_ARGUMENT, "unknown kind", BadRequest.newBuilder()
              .addFieldViolations(BadRequest.FieldViolation.newBuilder().setField("kind").setDescription("unknown kind 'bad'"))
              .build());
          return;
        case "quota":
          rich(obs, Code.RESOURCE_EXHAUSTED, "upstream quota spent",
              RetryInfo.newBuilder().setRetryDelay(com.google.protobuf.Duration.newBuilder().setSeconds(7).setNanos(250_000_000)).build(),
              ErrorInfo.newBuilder().setReason("UPSTREAM_429").setDomain("cxcache").build());
          return;
        case "down":
          rich(obs, Code.UNAVAILABLE, "upstream failing",
              RetryInfo.newBuilder().setRetryDelay(com.google.protobuf.Duration.newBuilder().setNanos(500_000_000)).build());
          return;
        case "upstream-404":
          rich(obs, Code.NOT_FOUND, "upstream answered 404",
              ErrorInfo.newBuilder().setReason("not.found").setDomain("cxcache.upstream")
                  .putMetadata("status", "404").putMetadata("message", "Queue q9 was not found").build());
          return;
        case "bad-params":
          rich(obs, Code.INVALID_ARGUMENT, "bad params", BadRequest.newBuilder()
              .addFieldViolations(BadRequest.FieldViolation.newBuilder().setField("id").setDescription("required"))
              .addFieldViolations(BadRequest.FieldViolation.newBuilder().setField("params[pageSize]").setDescription("not a number"))
              .build());
          return;
        case "missing":
          obs.onError(Status.NOT_FOUND.withDescription("no such queue").asRuntimeException());
          return;
        case "server-timeout":
          obs.onError(Status.CANCELLED.withDescription("Timeout expired").asRuntimeException());
          return;
        case "slow":
          // never answers: the client's deadline fires
          return;
        default:
          obs.onError(Status.UNIMPLEMENTED.asRuntimeException());
      }
    }

    @Override
    public void invalidate(InvalidateRequest r, StreamObserver<InvalidateResponse> obs) {
      obs.onNext(InvalidateResponse.newBuilder()
          .setPurged(r.getKeysCount() + 10L * r.getPrefixesCount() + 100L * r.getTagsCount()).build());
      obs.onCompleted();
    }

    @Override
    public void watch(WatchRequest r, StreamObserver<io.cxcache.v1.WatchEvent> obs) {
      if (r.getKindsList().contains("forbidden")) {
        obs.onError(Status.PERMISSION_DENIED.withDescription("no").asRuntimeException());
        return;
      }
      ServerCallStreamObserver<io.cxcache.v1.WatchEvent> so = (ServerCallStreamObserver<io.cxcache.v1.WatchEvent>) obs;
      long seq = 0;
      for (String key : r.getKeysList()) {
        obs.onNext(io.cxcache.v1.WatchEvent.newBuilder()
            .setType(io.cxcache.v1.WatchEvent.Type.TYPE_INVALIDATED).setKey(key).setKind("routing.queue")
            .setReason("test").setTime(Timestamp.newBuilder().setSeconds(1_767_323_045L))
            .setSequence(++seq).build());
      }
      if (r.getPrefixesList().contains("lag")) {
        obs.onNext(io.cxcache.v1.WatchEvent.newBuilder()
            .setType(io.cxcache.v1.WatchEvent.Type.TYPE_LAGGED).setSequence(++seq).build());
      }
      if (r.getPrefixesList().contains("hang")) {
        so.setOnCancelHandler(() -> { });
        return; // stays open until cancelled or the deadline
      }
      obs.onCompleted();
    }
  }

  @BeforeAll
  static void start() throws Exception {
    String name = InProcessServerBuilder.generateName();
    server = InProcessServerBuilder.forName(name).directExecutor().addService(new FakeCache()).build().start();
    channel = InProcessChannelBuilder.forName(name).directExecutor().build();
    client = CacheClient.builder().channel(channel).defaultTimeout(Duration.ofSeconds(5)).build();
  }

  @AfterAll
  static void stop() throws Exception {
    client.close();
    channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    server.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
  }

  @Test
  void getEncodesTheRequestAndDecodesTheResult() {
    CacheResult r = client.get(GetQuery.of("echo").id("q1").variant("summary").param("pageSize", 25)
        .bodyJson("{\"a\":1}").maxAge(Duration.ofMillis(2500)).allowStale(true));
    assertEquals(Source.UPSTREAM, r.source());
    assertEquals("test:echo", r.key());
    assertEquals(Duration.ofMillis(1500), r.age());
    assertEquals(Duration.ofSeconds(30), r.ttlRemaining());
    assertEquals(List.of("queue:1"), r.tags());
    var v = r.value().getStructValue().getFieldsMap();
    assertEquals("q1", v.get("id").getStringValue());
    assertEquals("summary", v.get("variant").getStringValue());
    assertEquals("{pageSize=25}", v.get("params").getStringValue());
    assertEquals(1.0, v.get("body").getStructValue().getFieldsOrThrow("a").getNumberValue());
    assertTrue(v.get("hasFreshness").getBoolValue());
    assertEquals(2500.0, v.get("maxAgeMs").getNumberValue());
    assertTrue(v.get("allowStale").getBoolValue());
    assertFalse(v.get("forceRefresh").getBoolValue());
    assertTrue(r.json().startsWith("{\"id\":\"q1\""));
  }

  /** A typed view of the echo JSON. */
  record Echo(String id, String variant, boolean allowStale, long maxAgeMs) {}

  @Test
  void valueMapsJsonWithJackson() {
    CacheResult r = client.get(GetQuery.of("echo").id("q1").variant("summary").maxAge(Duration.ofMillis(2500)));
    Echo e = r.value(Echo.class); // unknown properties (params, body, ...) are ignored
    assertEquals(new Echo("q1", "summary", false, 2500), e);
    Map<String, Object> m = r.value(new TypeReference<Map<String, Object>>() {});
    assertEquals("q1", m.get("id"));
    assertEquals(true, m.get("hasFreshness"));
    assertEquals("summary", r.value(new ObjectMapper(), JsonNode.class).get("variant").asText());
    assertThrows(UncheckedIOException.class, () -> r.value(new TypeReference<List<String>>() {}));
  }

  @Test
  void resultsAreImmutable() {
    CacheResult r = client.get(GetQuery.of("echo").id("q1"));
    String json = r.json();
    byte[] copy = r.bytes();
    copy[0] = 'X';
    assertEquals(json, r.json());
    assertEquals(json, r.raw().toStringUtf8());
    assertThrows(UnsupportedOperationException.class, () -> r.tags().add("x"));
    List<String> tags = new ArrayList<>(List.of("a"));
    CacheResult made = new CacheResult(ByteString.copyFromUtf8("{}"), Source.L1, "k", Duration.ZERO, Duration.ZERO, tags);
    tags.add("b");
    assertEquals(List.of("a"), made.tags());
    assertEquals(made, new CacheResult(ByteString.copyFromUtf8("{}"), Source.L1, "k", Duration.ZERO, Duration.ZERO, List.of("a")));
  }

  @Test
  void upstreamErrorFromErrorInfo() {
    CacheException.NotFound e = assertThrows(CacheException.NotFound.class, () -> client.get("upstream-404", ""));
    CacheException.UpstreamError u = e.upstreamError().orElseThrow();
    assertEquals("not.found", u.code());
    assertEquals(404, u.httpStatus());
    assertEquals("Queue q9 was not found", u.message());
    assertEquals("Queue q9 was not found", e.upstreamMessage().orElseThrow());
    assertEquals(List.of(new CacheException.ErrorDetail("not.found", "cxcache.upstream",
        Map.of("status", "404", "message", "Queue q9 was not found"))), e.errorDetails());
    assertTrue(e.getMessage().contains("upstream 404 not.found: Queue q9 was not found"), e.getMessage());
    // an ErrorInfo of another domain is no upstream error
    CacheException.ResourceExhausted q = assertThrows(CacheException.ResourceExhausted.class, () -> client.get("quota", ""));
    assertTrue(q.upstreamError().isEmpty());
    assertEquals("UPSTREAM_429", q.errorDetails().get(0).reason());
    assertInstanceOf(CacheException.NotFound.class, client.getAsync(GetQuery.of("missing")).handle((v, t) -> t).join());
  }

  @Test
  void fieldViolationsByName() {
    CacheException.InvalidArgument e =
        assertThrows(CacheException.InvalidArgument.class, () -> client.get("bad-params", ""));
    assertEquals("required", e.fieldViolation("id").orElseThrow().description());
    assertEquals("not a number", e.fieldViolation("params[pageSize]").orElseThrow().description());
    assertTrue(e.fieldViolation("kind").isEmpty());
    assertEquals(List.of("id", "params[pageSize]"),
        e.fieldViolations().stream().map(CacheException.FieldViolation::field).toList());
  }

  @Test
  void watchHasNextWithTimeout() {
    try (WatchStream s = client.watch(WatchQuery.create().keys("k").prefixes("hang"))) {
      assertTrue(s.hasNext(Duration.ofSeconds(5)));
      assertTrue(s.hasNext(Duration.ZERO)); // the event stays until consumed
      assertEquals("k", s.next().key());
      long t0 = System.nanoTime();
      assertFalse(s.hasNext(Duration.ofMillis(100)));
      assertTrue(System.nanoTime() - t0 >= TimeUnit.MILLISECONDS.toNanos(90));
      assertFalse(s.isFinished());
      s.cancel();
      assertFalse(s.hasNext(Duration.ofSeconds(5)));
      assertTrue(s.isFinished());
    }
    try (WatchStream s = client.watch(WatchQuery.create().keys("only").reconnect(RetryPolicy.disabled()))) {
      assertEquals("only", s.poll(Duration.ofSeconds(5)).key());
      assertFalse(s.hasNext(Duration.ofSeconds(5)));
      assertTrue(s.isFinished());
    }
  }

  @Test
  void noFreshnessUnlessAsked() {
    var v = client.get("echo", "x").value().getStructValue().getFieldsMap();
    assertFalse(v.get("hasFreshness").getBoolValue());
    var f = client.get(GetQuery.of("echo").forceRefresh(true)).value().getStructValue().getFieldsMap();
    assertTrue(f.get("forceRefresh").getBoolValue());
  }

  @Test
  void invalidArgumentCarriesFieldViolations() {
    CacheException.InvalidArgument e =
        assertThrows(CacheException.InvalidArgument.class, () -> client.get("bad", ""));
    assertEquals(Status.Code.INVALID_ARGUMENT, e.code());
    assertEquals("unknown kind", e.statusMessage());
    assertEquals(List.of(new CacheException.FieldViolation("kind", "unknown kind 'bad'")), e.fieldViolations());
    assertTrue(e.retryDelay().isEmpty());
    assertTrue(e.getMessage().contains("kind: unknown kind 'bad'"));
  }

  @Test
  void resourceExhaustedCarriesRetryDelayAndDetails() throws Exception {
    CacheException.ResourceExhausted e =
        assertThrows(CacheException.ResourceExhausted.class, () -> client.get("quota", ""));
    assertEquals(Duration.ofMillis(7250), e.retryDelay().orElseThrow());
    assertEquals(2, e.details().size());
    assertEquals("UPSTREAM_429", e.details().get(1).unpack(ErrorInfo.class).getReason());
  }

  @Test
  void unavailableCarriesRetryDelay() {
    CacheException.Unavailable e = assertThrows(CacheException.Unavailable.class, () -> client.get("down", ""));
    assertEquals(Duration.ofMillis(500), e.retryDelay().orElseThrow());
  }

  @Test
  void plainStatus() {
    CacheException.NotFound e = assertThrows(CacheException.NotFound.class, () -> client.get("missing", ""));
    assertTrue(e.details().isEmpty());
    assertTrue(e.fieldViolations().isEmpty());
    assertEquals("no such queue", e.statusMessage());
  }

  @Test
  void deadline() {
    long t0 = System.nanoTime();
    assertThrows(CacheException.DeadlineExceeded.class,
        () -> client.get(GetQuery.of("slow").timeout(Duration.ofMillis(200))));
    assertTrue(System.nanoTime() - t0 < TimeUnit.MILLISECONDS.toNanos(1500));
  }

  @Test
  void serverEnforcedDeadlineIsDeadlineExceeded() {
    // tonic answers CANCELLED "Timeout expired" when it enforces the caller's deadline
    assertThrows(CacheException.DeadlineExceeded.class, () -> client.get("server-timeout", ""));
    CompletionException ce = assertThrows(CompletionException.class,
        () -> client.getAsync(GetQuery.of("server-timeout")).join());
    assertInstanceOf(CacheException.DeadlineExceeded.class, ce.getCause());
    try (CacheClient noDeadline = CacheClient.builder().channel(channel).build()) {
      assertThrows(CacheException.Cancelled.class, () -> noDeadline.get("server-timeout", ""));
    }
  }

  @Test
  void futures() {
    assertEquals(Source.UPSTREAM, client.getAsync(GetQuery.of("echo")).join().source());
    CompletionException ce = assertThrows(CompletionException.class,
        () -> client.getAsync(GetQuery.of("quota")).join());
    CacheException.ResourceExhausted e = assertInstanceOf(CacheException.ResourceExhausted.class, ce.getCause());
    assertEquals(Duration.ofMillis(7250), e.retryDelay().orElseThrow());
    assertEquals(112L, client.invalidateAsync(InvalidateQuery.create().keys("a", "b").prefixes("p").tags("t")).join());
  }

  @Test
  void invalidate() {
    assertEquals(2L, client.invalidate(InvalidateQuery.create().keys("a", "b").reason("r")));
  }

  @Test
  void watchIterator() {
    List<WatchEvent> events = new ArrayList<>();
    try (WatchStream s = client.watch(WatchQuery.create().keys("k1", "k2").prefixes("lag").reconnect(RetryPolicy.disabled()))) {
      s.forEachRemaining(events::add);
      assertTrue(s.isFinished());
    }
    assertEquals(3, events.size());
    assertEquals(EventType.INVALIDATED, events.get(0).type());
    assertEquals("k1", events.get(0).key());
    assertEquals("routing.queue", events.get(0).kind());
    assertEquals(Instant.ofEpochSecond(1_767_323_045L), events.get(0).time());
    assertEquals(EventType.LAGGED, events.get(2).type());
    assertNull(events.get(2).time());
    assertEquals(List.of(1L, 2L, 3L), events.stream().map(WatchEvent::sequence).toList());
  }

  @Test
  void watchRefused() {
    WatchStream s = client.watch(WatchQuery.create().kinds("forbidden"));
    assertThrows(CacheException.PermissionDenied.class, () -> s.awaitReady(Duration.ofSeconds(5)));
    assertThrows(CacheException.PermissionDenied.class, s::hasNext);
    assertFalse(s.hasNext());
  }

  @Test
  void watchCancelAndPoll() {
    WatchStream s = client.watch(WatchQuery.create().keys("k").prefixes("hang"));
    assertTrue(s.awaitReady(Duration.ofSeconds(5)));
    assertEquals("k", s.poll(Duration.ofSeconds(5)).key());
    assertNull(s.poll(Duration.ofMillis(50)));
    assertFalse(s.isFinished());
    s.cancel();
    assertFalse(s.hasNext());
  }

  @Test
  void watchDeadline() {
    WatchStream s = client.watch(WatchQuery.create().prefixes("hang").timeout(Duration.ofMillis(200)));
    assertThrows(CacheException.DeadlineExceeded.class, s::hasNext);
  }

  @Test
  void watchObserver() throws Exception {
    List<WatchEvent> events = new ArrayList<>();
    CountDownLatch done = new CountDownLatch(1);
    Throwable[] error = {null};
    StreamObserver<WatchEvent> obs = new StreamObserver<>() {
      @Override public void onNext(WatchEvent value) { events.add(value); }
      @Override public void onError(Throwable t) { error[0] = t; done.countDown(); }
      @Override public void onCompleted() { done.countDown(); }
    };
    try (WatchSubscription sub = client.watch(WatchQuery.create().keys("a").prefixes("hang"), obs)) {
      sub.cancel();
    }
    assertTrue(done.await(5, TimeUnit.SECONDS));
    assertNull(error[0]);
    assertEquals("a", events.get(0).key());
  }
}
