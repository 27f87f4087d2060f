package io.cxcache.client;

import io.cxcache.v1.CacheGrpc;
import io.cxcache.v1.GetResponse;
import io.cxcache.v1.InvalidateResponse;
import io.cxcache.v1.WatchRequest;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptors;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.stub.ClientCalls;
import io.grpc.stub.MetadataUtils;
import io.grpc.stub.StreamObserver;
import java.time.Duration;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;

/**
 * Client for {@code cxcache.v1.Cache}: blocking and {@link CompletableFuture} calls, Watch as an
 * {@link java.util.Iterator} or a {@link StreamObserver}. Every failure is a {@link
 * CacheException} subclass carrying the google.rpc details (field violations, retry delay).
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

  private CacheClient(Channel channel, ManagedChannel owned, Duration defaultTimeout) {
    this.channel = channel;
    this.owned = owned;
    this.defaultTimeout = defaultTimeout;
  }

  /** A plaintext client for {@code host:port} with no default timeout. */
  public static CacheClient connect(String target) {
    return builder().target(target).build();
  }

  public static Builder builder() {
    return new Builder();
  }

  /** Builds a {@link CacheClient}. */
  public static final class Builder {
    private String target;
    private Channel channel;
    private Duration defaultTimeout;
    private final Metadata headers = new Metadata();
    private boolean hasHeaders;

    private Builder() {}

    /** Server address ({@code host:port} or a gRPC target URI); the client owns a plaintext channel. */
    public Builder target(String target) {
      this.target = target;
      return this;
    }

    /** Use an existing channel (e.g. with TLS); the caller keeps ownership and closes it. */
    public Builder channel(Channel channel) {
      this.channel = channel;
      return this;
    }

    /** Deadline for get/invalidate calls that set none of their own. */
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

    public CacheClient build() {
      ManagedChannel owned = null;
      Channel ch = channel;
      if (ch == null) {
        owned = ManagedChannelBuilder.forTarget(Objects.requireNonNull(target, "target or channel"))
            .usePlaintext().build();
        ch = owned;
      }
      if (hasHeaders) {
        ch = ClientInterceptors.intercept(ch, MetadataUtils.newAttachHeadersInterceptor(headers));
      }
      return new CacheClient(ch, owned, defaultTimeout);
    }
  }

  private CallOptions options(Duration timeout) {
    Duration t = timeout != null ? timeout : defaultTimeout;
    CallOptions o = CallOptions.DEFAULT;
    return t == null ? o : o.withDeadlineAfter(t.toNanos(), TimeUnit.NANOSECONDS);
  }

  private <Q, R> R blocking(MethodDescriptor<Q, R> method, Q request, Duration timeout) {
    CallOptions o = options(timeout);
    try {
      return ClientCalls.blockingUnaryCall(channel, method, o, request);
    } catch (RuntimeException e) {
      throw CacheException.from(e, o.getDeadline() != null);
    }
  }

  private <Q, R, T> CompletableFuture<T> async(
      MethodDescriptor<Q, R> method, Q request, Duration timeout, Function<R, T> map) {
    CallOptions o = options(timeout);
    boolean hadDeadline = o.getDeadline() != null;
    ClientCall<Q, R> call = channel.newCall(method, o);
    CompletableFuture<T> future = new CompletableFuture<>();
    ClientCalls.asyncUnaryCall(call, request, new StreamObserver<R>() {
      @Override
      public void onNext(R value) {
        future.complete(map.apply(value));
      }

      @Override
      public void onError(Throwable t) {
        future.completeExceptionally(CacheException.from(t, hadDeadline));
      }

      @Override
      public void onCompleted() {}
    });
    future.whenComplete((v, e) -> {
      if (future.isCancelled()) {
        call.cancel("future cancelled", null);
      }
    });
    return future;
  }

  /** Get one catalog resource (blocking). */
  public CacheResult get(GetQuery query) {
    GetResponse r = blocking(CacheGrpc.getGetMethod(), query.toProto(), query.timeout());
    return CacheResult.fromProto(r);
  }

  /** Shortcut for {@code get(GetQuery.of(kind).id(id))}. */
  public CacheResult get(String kind, String id) {
    return get(GetQuery.of(kind).id(id));
  }

  /** Get one catalog resource; the future fails with a {@link CacheException}. */
  public CompletableFuture<CacheResult> getAsync(GetQuery query) {
    return async(CacheGrpc.getGetMethod(), query.toProto(), query.timeout(), CacheResult::fromProto);
  }

  /** Purge entries by key, prefix or tag; returns the number of stored entries removed. */
  public long invalidate(InvalidateQuery query) {
    InvalidateResponse r = blocking(CacheGrpc.getInvalidateMethod(), query.toProto(), query.timeout());
    return r.getPurged();
  }

  public CompletableFuture<Long> invalidateAsync(InvalidateQuery query) {
    return async(CacheGrpc.getInvalidateMethod(), query.toProto(), query.timeout(),
        InvalidateResponse::getPurged);
  }

  /** Subscribe to events as a blocking iterator; close it to unsubscribe. */
  public WatchStream watch(WatchQuery query) {
    Duration t = query.timeout();
    CallOptions o = t == null ? CallOptions.DEFAULT
        : CallOptions.DEFAULT.withDeadlineAfter(t.toNanos(), TimeUnit.NANOSECONDS);
    return new WatchStream(channel, o, query.toProto());
  }

  /**
   * Subscribe to events with a callback observer. Errors arrive as {@link CacheException}; after
   * {@link WatchSubscription#cancel()} the observer gets {@code onCompleted()}.
   */
  public WatchSubscription watch(WatchQuery query, StreamObserver<WatchEvent> observer) {
    Duration t = query.timeout();
    CallOptions o = t == null ? CallOptions.DEFAULT
        : CallOptions.DEFAULT.withDeadlineAfter(t.toNanos(), TimeUnit.NANOSECONDS);
    ClientCall<WatchRequest, io.cxcache.v1.WatchEvent> call =
        channel.newCall(CacheGrpc.getWatchMethod(), o);
    boolean[] cancelled = {false};
    ClientCalls.asyncServerStreamingCall(call, query.toProto(),
        new StreamObserver<io.cxcache.v1.WatchEvent>() {
          @Override
          public void onNext(io.cxcache.v1.WatchEvent value) {
            observer.onNext(WatchEvent.fromProto(value));
          }

          @Override
          public void onError(Throwable err) {
            synchronized (cancelled) {
              if (cancelled[0] && Status.fromThrowable(err).getCode() == Status.Code.CANCELLED) {
                observer.onCompleted();
                return;
              }
            }
            observer.onError(CacheException.from(err, t != null));
          }

          @Override
          public void onCompleted() {
            observer.onCompleted();
          }
        });
    return () -> {
      synchronized (cancelled) {
        cancelled[0] = true;
      }
      call.cancel("cancelled by client", null);
    };
  }

  /** Shut the owned channel down (no-op for a caller-supplied channel). */
  @Override
  public void close() {
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
