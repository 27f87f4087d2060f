package io.cxcache.client;

import io.cxcache.v1.CacheGrpc;
import io.cxcache.v1.GetRequest;
import io.cxcache.v1.InvalidateResponse;
import io.grpc.CallCredentials;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ChannelCredentials;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ClientInterceptors;
import io.grpc.Deadline;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.TlsChannelCredentials;
import io.grpc.stub.ClientCalls;
import io.grpc.stub.MetadataUtils;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.Executor;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;
import java.util.function.Supplier;
import java.util.regex.Pattern;

/**
 * Client for {@code cxcache.v1.Cache}: blocking and {@link CompletableFuture} calls, Watch as an
 * {@link java.util.Iterator} or a {@link StreamObserver}. Every failure is a {@link
 * CacheException} subclass carrying the google.rpc details (field violations, retry delay,
 * upstream error). Calls failing with UNAVAILABLE or RESOURCE_EXHAUSTED are retried per the
 * {@link RetryPolicy}; watches reconnect by themselves.
 *
 * <pre>{@code
 * try (CacheClient cache = CacheClient.builder().target("127.0.0.1:50051")
 *     .defaultTimeout(Duration.ofSeconds(5)).build()) {
 *   CacheResult r = cache.get(GetQuery.of("routing.queue").id(queueId));
 * }
 * }</pre>
 */
public final class CacheClient implements AutoCloseable {
  private final Channel channel;
  private final ManagedChannel owned;
  private final Duration defaultTimeout;
  private final RetryPolicy retry;
  private final RetryPolicy watchReconnect;
  private final boolean waitForReady;
  private final CallCredentials credentials;
  private final NearCache near;

  private CacheClient(Builder b, Channel channel, ManagedChannel owned) {
    this.channel = channel;
    this.owned = owned;
    this.defaultTimeout = b.defaultTimeout;
    this.retry = b.retry;
    this.watchReconnect = b.watchReconnect;
    this.waitForReady = b.waitForReady;
    this.credentials = b.credentials;
    NearCacheOptions n = b.nearCache;
    this.near = n == null ? null : new NearCache(n, sink -> new WatchCore(channel, options(null),
        NearCache.watchRequest(n), NEAR_RECONNECT, sink, true, new WatchCore.Mode(true, true)));
  }

  /** Reconnect policy of the near cache's stream: 50 ms doubling to 2 s, jittered, forever. */
  private static final RetryPolicy NEAR_RECONNECT = RetryPolicy.watchDefaults()
      .withInitialBackoff(Duration.ofMillis(50)).withMaxBackoff(Duration.ofSeconds(2))
      .withMaxElapsed(Duration.ofDays(365 * 100));

  /**
   * A client for {@code host:port} with no default timeout: plaintext for a loopback address,
   * TLS with the system's trusted CAs otherwise.
   */
  public static CacheClient connect(String target) {
    return builder().target(target).build();
  }

  public static Builder builder() {
    return new Builder();
  }

  /** Builds a {@link CacheClient}. Every option is optional except target or channel. */
  public static final class Builder {
    private String target;
    private Channel channel;
    private Duration defaultTimeout;
    private final Metadata headers = new Metadata();
    private boolean hasHeaders;
    private Boolean plaintext;
    private Path caFile;
    private Path clientCertFile;
    private Path clientKeyFile;
    private String authority;
    private CallCredentials credentials;
    private RetryPolicy retry = RetryPolicy.defaults();
    private RetryPolicy watchReconnect = RetryPolicy.watchDefaults();
    private boolean waitForReady;
    private boolean tracePropagation = true;
    private NearCacheOptions nearCache;
    private final List<ClientInterceptor> interceptors = new ArrayList<>();

    private Builder() {}

    /**
     * Server address ({@code host:port} or a gRPC target URI); the client owns its channel. The
     * transport is plaintext for loopback targets (localhost, 127.0.0.0/8, ::1, unix:) and TLS
     * otherwise, unless {@link #plaintext()} or a TLS option says otherwise.
     */
    public Builder target(String target) {
      this.target = target;
      return this;
    }

    /**
     * Use an existing channel; the caller keeps ownership and closes it. Transport options (TLS,
     * plaintext) then do not apply; call credentials, retries and interceptors still do.
     */
    public Builder channel(Channel channel) {
      this.channel = channel;
      return this;
    }

    /** Deadline for get/invalidate calls that set none of their own (retries included). */
    public Builder defaultTimeout(Duration timeout) {
      this.defaultTimeout = timeout;
      return this;
    }

    /** A header sent with every call. */
    public Builder header(String name, String value) {
      headers.put(Metadata.Key.of(name, Metadata.ASCII_STRING_MARSHALLER), value);
      hasHeaders = true;
      return this;
    }

    /** Plaintext (no TLS) even for a non-loopback target. */
    public Builder plaintext() {
      this.plaintext = true;
      return this;
    }

    /** TLS with the system's trusted CAs, even for a loopback target. */
    public Builder tls() {
      this.plaintext = false;
      return this;
    }

    /** TLS trusting the CA certificates (PEM) in {@code caFile} instead of the system's. */
    public Builder caFile(Path caFile) {
      this.caFile = caFile;
      this.plaintext = false;
      return this;
    }

    /** Mutual TLS: present this client certificate chain and PKCS#8 private key (PEM files). */
    public Builder clientCertificate(Path certChainFile, Path privateKeyFile) {
      this.clientCertFile = Objects.requireNonNull(certChainFile, "certChainFile");
      this.clientKeyFile = Objects.requireNonNull(privateKeyFile, "privateKeyFile");
      this.plaintext = false;
      return this;
    }

    /** The authority (TLS server name) to use instead of the target's host. */
    public Builder overrideAuthority(String authority) {
      this.authority = authority;
      return this;
    }

    /** Send {@code authorization: Bearer <token>} with every call. */
    public Builder bearerToken(String token) {
      Objects.requireNonNull(token, "token");
      return bearerToken(() -> token);
    }

    /** Send {@code authorization: Bearer <token>}, asking {@code token} before each call (refresh). */
    public Builder bearerToken(Supplier<String> token) {
      return callCredentials(new AuthorizationCredentials("Bearer ", Objects.requireNonNull(token)));
    }

    /**
     * A cxcache API key: sent as {@code authorization: Bearer <key>} with every call (Get,
     * Invalidate, Watch), the form cxcache reads API keys in (same as {@link #bearerToken(String)}).
     */
    public Builder apiKey(String key) {
      Objects.requireNonNull(key, "key");
      return bearerToken(key);
    }

    /** Any other grpc {@link CallCredentials} for every call (replaces bearerToken / apiKey). */
    public Builder callCredentials(CallCredentials credentials) {
      this.credentials = credentials;
      return this;
    }

    /**
     * Retries of Get and Invalidate on UNAVAILABLE / RESOURCE_EXHAUSTED (default {@link
     * RetryPolicy#defaults()}; {@link RetryPolicy#disabled()} turns them off).
     */
    public Builder retryPolicy(RetryPolicy policy) {
      this.retry = Objects.requireNonNull(policy, "policy");
      return this;
    }

    /** Default reconnect policy of watches (default {@link RetryPolicy#watchDefaults()}). */
    public Builder watchReconnect(RetryPolicy policy) {
      this.watchReconnect = Objects.requireNonNull(policy, "policy");
      return this;
    }

    /**
     * Wait-for-ready: while the channel is connecting or reconnecting, calls wait (up to their
     * deadline) instead of failing at once with UNAVAILABLE. Default off.
     */
    public Builder waitForReady(boolean waitForReady) {
      this.waitForReady = waitForReady;
      return this;
    }

    /**
     * Propagate the current OpenTelemetry span as W3C {@code traceparent} metadata when
     * opentelemetry-api is on the classpath (default true; a no-op without it).
     */
    public Builder traceContextPropagation(boolean enabled) {
      this.tracePropagation = enabled;
      return this;
    }

    /**
     * Keep Get replies in a near cache in this process, kept coherent by one Watch stream (opened
     * on the first near-cacheable Get); see {@link NearCacheOptions} and the README's "Near cache"
     * for what it guarantees. Default: none.
     */
    public Builder nearCache(NearCacheOptions options) {
      this.nearCache = options;
      return this;
    }

    /** An extra grpc interceptor (applied after the client's own). */
    public Builder intercept(ClientInterceptor interceptor) {
      interceptors.add(Objects.requireNonNull(interceptor));
      return this;
    }

    /** True when the client would use plaintext for {@code target} with the options given. */
    boolean usesPlaintext(String target) {
      if (plaintext != null) {
        return plaintext;
      }
      return isLoopback(target);
    }

    ChannelCredentials channelCredentials(String target) {
      if (usesPlaintext(target)) {
        return InsecureChannelCredentials.create();
      }
      TlsChannelCredentials.Builder tls = TlsChannelCredentials.newBuilder();
      try {
        if (caFile != null) {
          tls.trustManager(caFile.toFile());
        }
        if (clientCertFile != null) {
          tls.keyManager(clientCertFile.toFile(), clientKeyFile.toFile());
        }
      } catch (IOException e) {
        throw new UncheckedIOException("cannot read TLS files", e);
      }
      return tls.build();
    }

    public CacheClient build() {
      ManagedChannel owned = null;
      Channel ch = channel;
      if (ch == null) {
        String t = Objects.requireNonNull(target, "target or channel");
        ManagedChannelBuilder<?> mb = Grpc.newChannelBuilder(t, channelCredentials(t));
        if (authority != null) {
          mb.overrideAuthority(authority);
        }
        owned = mb.build();
        ch = owned;
      }
      List<ClientInterceptor> all = new ArrayList<>(interceptors);
      if (hasHeaders) {
        all.add(MetadataUtils.newAttachHeadersInterceptor(headers));
      }
      if (tracePropagation) {
        ClientInterceptor trace = TracePropagation.interceptorIfAvailable();
        if (trace != null) {
          all.add(trace);
        }
      }
      // ClientInterceptors.intercept runs the last one first
      ch = ClientInterceptors.intercept(ch, all);
      return new CacheClient(this, ch, owned);
    }
  }

  private static final Pattern IPV4_LOOPBACK = Pattern.compile("127(\\.\\d{1,3}){3}");

  /** Loopback targets: localhost, 127.0.0.0/8, ::1 (with or without port / dns: scheme), unix:. */
  static boolean isLoopback(String target) {
    String t = target.trim().toLowerCase(Locale.ROOT);
    if (t.startsWith("unix:") || t.startsWith("unix-abstract:")) {
      return true;
    }
    if (t.startsWith("dns:///")) {
      t = t.substring(7);
    } else if (t.startsWith("dns:")) {
      t = t.substring(4);
      int slash = t.indexOf('/', 2);
      if (t.startsWith("//") && slash > 0) {
        t = t.substring(slash + 1);
      }
    } else if (t.contains("://")) {
      return false;
    }
    String host;
    if (t.startsWith("[")) {
      int end = t.indexOf(']');
      host = end < 0 ? t : t.substring(1, end);
    } else if (t.indexOf(':') == t.lastIndexOf(':')) {
      int colon = t.indexOf(':');
      host = colon < 0 ? t : t.substring(0, colon);
    } else {
      host = t; // bare IPv6
    }
    return host.equals("localhost") || host.endsWith(".localhost") || host.equals("::1")
        || host.equals("0:0:0:0:0:0:0:1") || IPV4_LOOPBACK.matcher(host).matches();
  }

  /** authorization metadata from a token supplier, asked once per call. */
  private static final class AuthorizationCredentials extends CallCredentials {
    private static final Metadata.Key<String> AUTHORIZATION =
        Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    private final String prefix;
    private final Supplier<String> token;

    AuthorizationCredentials(String prefix, Supplier<String> token) {
      this.prefix = prefix;
      this.token = token;
    }

    @Override
    public void applyRequestMetadata(RequestInfo info, Executor executor, MetadataApplier applier) {
      executor.execute(() -> {
        try {
          Metadata m = new Metadata();
          m.put(AUTHORIZATION, prefix + token.get());
          applier.apply(m);
        } catch (RuntimeException e) {
          applier.fail(Status.UNAUTHENTICATED.withDescription("no credentials: " + e).withCause(e));
        }
      });
    }
  }

  private Deadline deadline(Duration timeout) {
    Duration t = timeout != null ? timeout : defaultTimeout;
    return t == null ? null : Deadline.after(t.toNanos(), TimeUnit.NANOSECONDS);
  }

  private CallOptions options(Deadline deadline) {
    CallOptions o = CallOptions.DEFAULT.withDeadline(deadline);
    if (waitForReady) {
      o = o.withWaitForReady();
    }
    if (credentials != null) {
      o = o.withCallCredentials(credentials);
    }
    return o;
  }

  private static boolean retryable(Status.Code code) {
    return code == Status.Code.UNAVAILABLE || code == Status.Code.RESOURCE_EXHAUSTED;
  }

  /** The wait before retry number {@code retry} after {@code e}, or null to give up. */
  private Duration retryDelay(CacheException e, int retry, long startNanos, Deadline deadline) {
    if (!retryable(e.code()) || retry >= this.retry.maxAttempts()) {
      return null;
    }
    Duration delay = this.retry.backoff(retry, e.retryDelay().orElse(null));
    Duration elapsed = Duration.ofNanos(System.nanoTime() - startNanos);
    if (elapsed.plus(delay).compareTo(this.retry.maxElapsed()) > 0) {
      return null;
    }
    if (deadline != null && deadline.timeRemaining(TimeUnit.NANOSECONDS) <= delay.toNanos()) {
      return null; // the retry could not finish within the call's deadline
    }
    return delay;
  }

  private <Q, R> R blocking(MethodDescriptor<Q, R> method, Q request, Duration timeout) {
    Deadline deadline = deadline(timeout);
    CallOptions o = options(deadline);
    long start = System.nanoTime();
    for (int attempt = 1; ; attempt++) {
      try {
        return ClientCalls.blockingUnaryCall(channel, method, o, request);
      } catch (RuntimeException e) {
        CacheException ce = CacheException.from(e, deadline != null);
        Duration delay = retryDelay(ce, attempt, start, deadline);
        if (delay == null) {
          throw ce;
        }
        try {
          Thread.sleep(delay.toMillis(), (int) (delay.toNanos() % 1_000_000));
        } catch (InterruptedException ie) {
          Thread.currentThread().interrupt();
          throw ce;
        }
      }
    }
  }

  private <Q, R, T> CompletableFuture<T> async(
      MethodDescriptor<Q, R> method, Q request, Duration timeout, Function<R, T> map) {
    Deadline deadline = deadline(timeout);
    CompletableFuture<T> future = new CompletableFuture<>();
    attemptAsync(method, request, options(deadline), deadline, map, future, 1, System.nanoTime());
    return future;
  }

  private <Q, R, T> void attemptAsync(MethodDescriptor<Q, R> method, Q request, CallOptions o,
      Deadline deadline, Function<R, T> map, CompletableFuture<T> future, int attempt, long start) {
    if (future.isDone()) {
      return;
    }
    ClientCall<Q, R> call = channel.newCall(method, o);
    future.whenComplete((v, e) -> {
      if (future.isCancelled()) {
        call.cancel("future cancelled", null);
      }
    });
    ClientCalls.asyncUnaryCall(call, request, new StreamObserver<R>() {
      @Override
      public void onNext(R value) {
        try {
          future.complete(map.apply(value));
        } catch (RuntimeException e) {
          future.completeExceptionally(e);
        }
      }

      @Override
      public void onError(Throwable t) {
        CacheException ce = CacheException.from(t, deadline != null);
        Duration delay = retryDelay(ce, attempt, start, deadline);
        if (delay == null || future.isDone()) {
          future.completeExceptionally(ce);
          return;
        }
        Scheduler.get().schedule(
            () -> attemptAsync(method, request, o, deadline, map, future, attempt + 1, start),
            delay.toNanos(), TimeUnit.NANOSECONDS);
      }

      @Override
      public void onCompleted() {}
    });
  }

  /** Get one catalog resource (blocking). */
  public CacheResult get(GetQuery query) {
    GetRequest request = query.toProto();
    if (near == null || !near.applies(query.kind())) {
      return CacheResult.fromProto(blocking(CacheGrpc.getGetMethod(), request, query.timeout()));
    }
    near.ensureStream(near.startWait(timeoutOf(query)));
    GetRequest identity = NearCache.identity(request);
    if (!query.forceRefresh()) {
      CacheResult hit = near.lookup(identity, query.maxAge());
      if (hit != null) {
        return hit;
      }
    }
    NearCache.Ticket ticket = near.ticket();
    CacheResult r = CacheResult.fromProto(blocking(CacheGrpc.getGetMethod(), request, query.timeout()));
    near.fill(ticket, identity, r);
    return r;
  }

  private Duration timeoutOf(GetQuery query) {
    return query.timeout() != null ? query.timeout() : defaultTimeout;
  }

  /** Counters of the near cache, or null when the client has none. */
  public NearCacheStats nearCacheStats() {
    return near == null ? null : near.stats();
  }

  /** Shortcut for {@code get(GetQuery.of(kind).id(id))}. */
  public CacheResult get(String kind, String id) {
    return get(GetQuery.of(kind).id(id));
  }

  /** Get one catalog resource; the future fails with a {@link CacheException}. */
  public CompletableFuture<CacheResult> getAsync(GetQuery query) {
    GetRequest request = query.toProto();
    if (near == null || !near.applies(query.kind())) {
      return async(CacheGrpc.getGetMethod(), request, query.timeout(), CacheResult::fromProto);
    }
    near.ensureStream(null); // never blocks an async caller
    GetRequest identity = NearCache.identity(request);
    if (!query.forceRefresh()) {
      CacheResult hit = near.lookup(identity, query.maxAge());
      if (hit != null) {
        return CompletableFuture.completedFuture(hit);
      }
    }
    NearCache.Ticket ticket = near.ticket();
    return async(CacheGrpc.getGetMethod(), request, query.timeout(), r -> {
      CacheResult res = CacheResult.fromProto(r);
      near.fill(ticket, identity, res);
      return res;
    });
  }

  /** Purge entries by key, prefix or tag; returns the number of stored entries removed. */
  public long invalidate(InvalidateQuery query) {
    dropNear(query);
    InvalidateResponse r = blocking(CacheGrpc.getInvalidateMethod(), query.toProto(), query.timeout());
    dropNear(query);
    return r.getPurged();
  }

  private void dropNear(InvalidateQuery query) {
    if (near != null) {
      near.invalidated(query.keys(), query.prefixes(), query.tags());
    }
  }

  /** Like {@link #invalidate(InvalidateQuery)}; the future fails with a {@link CacheException}. */
  public CompletableFuture<Long> invalidateAsync(InvalidateQuery query) {
    dropNear(query);
    return async(CacheGrpc.getInvalidateMethod(), query.toProto(), query.timeout(), r -> {
      dropNear(query);
      return r.getPurged();
    });
  }

  private CallOptions watchOptions(WatchQuery query) {
    Duration t = query.timeout();
    return options(t == null ? null : Deadline.after(t.toNanos(), TimeUnit.NANOSECONDS));
  }

  private RetryPolicy reconnectPolicy(WatchQuery query) {
    return query.reconnect() != null ? query.reconnect() : watchReconnect;
  }

  private static WatchCore.Mode mode(WatchQuery query) {
    return new WatchCore.Mode(query.deliversHeartbeats(), query.autoResume());
  }

  /** Subscribe to events as a blocking iterator; close it to unsubscribe. */
  public WatchStream watch(WatchQuery query) {
    return new WatchStream(channel, watchOptions(query), query.toProto(), reconnectPolicy(query), mode(query));
  }

  /**
   * Subscribe to events with a callback observer. Errors arrive as {@link CacheException}; after
   * {@link WatchSubscription#cancel()} the observer gets {@code onCompleted()}. A lost stream is
   * resubscribed as for {@link #watch(WatchQuery)} (the observer then gets a LAGGED event with
   * reason {@link WatchEvent#RESUBSCRIBED}).
   */
  public WatchSubscription watch(WatchQuery query, StreamObserver<WatchEvent> observer) {
    WatchCore core = new WatchCore(channel, watchOptions(query), query.toProto(), reconnectPolicy(query),
        new WatchCore.Sink() {
          @Override
          public void ready() {}

          @Override
          public void event(WatchEvent event, boolean synthetic) {
            observer.onNext(event);
          }

          @Override
          public void end() {
            observer.onCompleted();
          }

          @Override
          public void error(CacheException error) {
            observer.onError(error);
          }
        }, true, mode(query));
    core.start();
    return core::cancel;
  }

  /** Shut the owned channel down (no-op for a caller-supplied channel). */
  @Override
  public void close() {
    if (near != null) {
      near.close();
    }
    if (owned != null) {
      owned.shutdown();
      try {
        if (!owned.awaitTermination(5, TimeUnit.SECONDS)) {
          owned.shutdownNow();
        }
      } catch (InterruptedException e) {
        owned.shutdownNow();
        Thread.currentThread().interrupt();
      }
    }
  }
}
