package io.cxcache.client;

import io.cxcache.v1.CacheGrpc;
import io.cxcache.v1.WatchRequest;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.Metadata;
import io.grpc.Status;
import java.time.Duration;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * One Watch subscription as a blocking {@link Iterator}. {@link #hasNext()} blocks until the next
 * event or the end of the stream; a failed stream throws its {@link CacheException}. Close it (or
 * {@link #cancel()}) to end the subscription; iteration then ends without an error. Events are
 * requested from the server one at a time as they are consumed (gRPC flow control), so a slow
 * consumer makes the server report LAGGED instead of buffering without bound here.
 */
public final class WatchStream implements Iterator<WatchEvent>, AutoCloseable {
  private static final Object END = new Object();

  private final ClientCall<WatchRequest, io.cxcache.v1.WatchEvent> call;
  private final BlockingQueue<Object> queue = new LinkedBlockingQueue<>();
  private final CompletableFuture<Boolean> ready = new CompletableFuture<>();
  private volatile boolean cancelled;
  private Object next;
  private boolean finished;

  WatchStream(Channel channel, CallOptions options, WatchRequest request) {
    call = channel.newCall(CacheGrpc.getWatchMethod(), options);
    call.start(
        new ClientCall.Listener<>() {
          @Override
          public void onHeaders(Metadata headers) {
            ready.complete(true);
          }

          @Override
          public void onMessage(io.cxcache.v1.WatchEvent message) {
            queue.add(WatchEvent.fromProto(message));
          }

          @Override
          public void onClose(Status status, Metadata trailers) {
            if (status.isOk() || (cancelled && status.getCode() == Status.Code.CANCELLED)) {
              ready.complete(false);
              queue.add(END);
            } else {
              CacheException e =
                  CacheException.from(status.asRuntimeException(trailers), options.getDeadline() != null);
              ready.completeExceptionally(e);
              queue.add(e);
            }
          }
        },
        new Metadata());
    call.sendMessage(request);
    call.halfClose();
    call.request(1);
  }

  /**
   * Wait until the server has accepted the subscription (response headers received).
   *
   * @return true when accepted, false on timeout or when the stream ended first without error
   * @throws CacheException when the server refused the call (e.g. Unimplemented)
   */
  public boolean awaitReady(Duration timeout) {
    try {
      return ready.get(timeout.toMillis(), TimeUnit.MILLISECONDS);
    } catch (TimeoutException e) {
      return false;
    } catch (ExecutionException e) {
      throw (CacheException) e.getCause();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      return false;
    }
  }

  private Object take(long timeoutMillis) throws InterruptedException {
    if (next == null) {
      next = timeoutMillis < 0 ? queue.take() : queue.poll(timeoutMillis, TimeUnit.MILLISECONDS);
    }
    return next;
  }

  private WatchEvent consume() {
    Object item = next;
    next = null;
    if (item instanceof WatchEvent ev) {
      call.request(1);
      return ev;
    }
    if (item instanceof CacheException e) {
      finished = true;
      throw e;
    }
    finished = true;
    return null;
  }

  @Override
  public boolean hasNext() {
    if (finished) {
      return false;
    }
    try {
      Object item = take(-1);
      if (item == END) {
        finished = true;
        next = null;
        return false;
      }
      if (item instanceof CacheException) {
        consume(); // throws
      }
      return true;
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      cancel();
      return false;
    }
  }

  @Override
  public WatchEvent next() {
    if (!hasNext()) {
      throw new NoSuchElementException("watch stream ended");
    }
    return consume();
  }

  /**
   * The next event, waiting at most {@code timeout}; null on timeout or when the stream has ended
   * (see {@link #isFinished()}).
   *
   * @throws CacheException when the stream failed
   */
  public WatchEvent poll(Duration timeout) {
    if (finished) {
      return null;
    }
    try {
      Object item = take(timeout.toMillis());
      if (item == null) {
        return null;
      }
      return consume();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      return null;
    }
  }

  /** True once the stream has ended (normally, by cancel, or with an error already thrown). */
  public boolean isFinished() {
    return finished;
  }

  /** End the subscription. */
  public void cancel() {
    if (!cancelled) {
      cancelled = true;
      call.cancel("cancelled by client", null);
    }
  }

  @Override
  public void close() {
    cancel();
  }
}
