package io.cxcache.client;

import io.cxcache.v1.CacheGrpc;
import io.cxcache.v1.WatchRequest;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.Deadline;
import io.grpc.Metadata;
import io.grpc.Status;
import java.time.Duration;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;

/**
 * One logical Watch subscription over one or more gRPC calls: a call lost with UNAVAILABLE (or
 * ended by the server, which cxcache does only on shutdown) is replaced after a backoff (per the reconnect policy) and a resubscribed LAGGED event is delivered
 * once the new call is accepted.
 */
final class WatchCore {
  /** Receives what happens to the subscription; at most one of end/error, at most once. */
  interface Sink {
    void ready();

    /** A server event (synthetic=false) or the client's resubscribed event (synthetic=true). */
    void event(WatchEvent event, boolean synthetic);

    void end();

    void error(CacheException error);

    /** The current call was lost and a new one is scheduled (the subscription goes on). */
    default void lost(CacheException cause) {}
  }

  /** How a watch treats heartbeats and positions. */
  record Mode(boolean deliverHeartbeats, boolean autoResume) {
    static final Mode CLASSIC = new Mode(false, false);
  }

  private final Channel channel;
  private final CallOptions options;
  private final WatchRequest request;
  private final RetryPolicy reconnect;
  private final Sink sink;
  private final boolean autoRequest;
  private final Mode mode;
  private final Object lock = new Object();

  private ClientCall<WatchRequest, io.cxcache.v1.WatchEvent> current;
  private ScheduledFuture<?> pending;
  private boolean cancelled;
  private boolean done;
  private boolean everReady;
  private boolean reconnecting;
  private int failures;
  private long outageStart;
  private String lastPosition = "";
  private boolean resumedCall;

  WatchCore(Channel channel, CallOptions options, WatchRequest request, RetryPolicy reconnect,
      Sink sink, boolean autoRequest) {
    this(channel, options, request, reconnect, sink, autoRequest, Mode.CLASSIC);
  }

  WatchCore(Channel channel, CallOptions options, WatchRequest request, RetryPolicy reconnect,
      Sink sink, boolean autoRequest, Mode mode) {
    this.mode = mode;
    this.channel = channel;
    this.options = options;
    this.request = request;
    this.reconnect = reconnect == null ? RetryPolicy.disabled() : reconnect;
    this.sink = sink;
    this.autoRequest = autoRequest;
  }

  void start() {
    subscribe();
  }

  private void subscribe() {
    ClientCall<WatchRequest, io.cxcache.v1.WatchEvent> call;
    synchronized (lock) {
      pending = null;
      if (cancelled) {
        finish(null);
        return;
      }
      call = channel.newCall(CacheGrpc.getWatchMethod(), options);
      current = call;
      WatchRequest req = request;
      resumedCall = false;
      if (mode.autoResume() && !lastPosition.isEmpty()) {
        req = request.toBuilder().setResumeAfter(lastPosition).build();
        resumedCall = true;
      }
      // started under the lock so that cancel() never cancels a call before its start
      start(call, req);
    }
  }

  private void start(ClientCall<WatchRequest, io.cxcache.v1.WatchEvent> call, WatchRequest req) {
    call.start(new ClientCall.Listener<>() {
      /** Heartbeats consumed on this call: delivered sequences are renumbered without them. */
      private long hidden;

      @Override
      public void onHeaders(Metadata headers) {
        boolean resubscribed;
        boolean first;
        synchronized (lock) {
          if (call != current) {
            return;
          }
          // a resumed call needs no gap event: the server replays or sends RESET first
          resubscribed = reconnecting && everReady && !resumedCall;
          first = !everReady;
          everReady = true;
          reconnecting = false;
          failures = 0;
        }
        if (resubscribed) {
          sink.event(WatchEvent.resubscribed(), true);
        }
        if (first) {
          sink.ready();
        }
      }

      @Override
      public void onMessage(io.cxcache.v1.WatchEvent message) {
        synchronized (lock) {
          if (call != current) {
            return;
          }
          if (!message.getPosition().isEmpty()) {
            lastPosition = message.getPosition();
          }
        }
        boolean heartbeat = message.getType() == io.cxcache.v1.WatchEvent.Type.TYPE_HEARTBEAT;
        if (heartbeat && !mode.deliverHeartbeats()) {
          hidden++;
          call.request(1); // consumed here: ask for the next one ourselves
          return;
        }
        WatchEvent ev = WatchEvent.fromProto(message);
        if (hidden > 0 && ev.sequence() > hidden) {
          // keep the sequence gap-free for watches that never see heartbeats, as before them
          ev = new WatchEvent(ev.type(), ev.key(), ev.prefix(), ev.tag(), ev.kind(), ev.reason(), ev.time(),
              ev.sequence() - hidden, ev.position());
        }
        sink.event(ev, false);
        if (autoRequest) {
          call.request(1);
        }
      }

      @Override
      public void onClose(Status status, Metadata trailers) {
        closed(call, status, trailers);
      }
    }, new Metadata());
    call.sendMessage(req);
    call.halfClose();
    call.request(1);
  }

  private void closed(ClientCall<?, ?> call, Status status, Metadata trailers) {
    CacheException error = null;
    synchronized (lock) {
      if (call != current || done) {
        return;
      }
      current = null;
      if (cancelled && (status.isOk() || status.getCode() == Status.Code.CANCELLED)) {
        finish(null);
        return;
      }
      // cxcache ends a Watch with OK only when it shuts down: with reconnection on, that is a
      // lost stream like UNAVAILABLE; with it off, the normal end of the iteration.
      boolean lost = status.getCode() == Status.Code.UNAVAILABLE || status.isOk();
      if (status.isOk() && reconnect.isDisabled()) {
        finish(null);
        return;
      }
      error = status.isOk()
          ? CacheException.from(Status.UNAVAILABLE.withDescription("watch stream ended by the server")
              .asRuntimeException(), false)
          : CacheException.from(status.asRuntimeException(trailers), options.getDeadline() != null);
      if (!cancelled && lost && !reconnect.isDisabled()) {
        long now = System.nanoTime();
        if (failures == 0) {
          outageStart = now;
        }
        failures++;
        Duration delay = reconnect.backoff(failures, error.retryDelay().orElse(null));
        Duration elapsed = Duration.ofNanos(now - outageStart);
        Deadline deadline = options.getDeadline();
        boolean fits = failures < reconnect.maxAttempts()
            && elapsed.plus(delay).compareTo(reconnect.maxElapsed()) <= 0
            && (deadline == null || deadline.timeRemaining(TimeUnit.NANOSECONDS) > delay.toNanos());
        if (fits) {
          reconnecting = true;
          pending = Scheduler.get().schedule(this::subscribe, delay.toNanos(), TimeUnit.NANOSECONDS);
          CacheException cause = error;
          Scheduler.get().execute(() -> sink.lost(cause));
          return;
        }
      }
      finish(error);
    }
  }

  /** Deliver end (error == null) or error once; call with the lock held. */
  private void finish(CacheException error) {
    if (done) {
      return;
    }
    done = true;
    if (error == null) {
      sink.end();
    } else {
      sink.error(error);
    }
  }

  /** The position of the last message received (empty before any). */
  String lastPosition() {
    synchronized (lock) {
      return lastPosition;
    }
  }

  /** Ask the current call for one more message (flow control). */
  void request() {
    ClientCall<?, ?> c;
    synchronized (lock) {
      c = current;
    }
    if (c != null) {
      c.request(1);
    }
  }

  void cancel() {
    ClientCall<?, ?> c;
    synchronized (lock) {
      if (cancelled) {
        return;
      }
      cancelled = true;
      c = current;
      if (c == null && pending != null) {
        pending.cancel(false);
        pending = null;
        finish(null);
      }
    }
    if (c != null) {
      c.cancel("cancelled by client", null);
    }
  }
}
