package io.cxcache.client;

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.cxcache.v1.WatchRequest;
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
 * event or the end of the stream ({@link #hasNext(Duration)} and {@link #poll(Duration)} wait at
 * most a given time); a failed stream throws its {@link CacheException}. Close it (or {@link
 * #cancel()}) to end the subscription; iteration then ends without an error. Events are requested
 * from the server one at a time as they are consumed (gRPC flow control), so a slow consumer makes
 * the server report LAGGED instead of buffering without bound here. A stream lost with UNAVAILABLE
 * is resubscribed by itself (see {@link WatchQuery#reconnect(RetryPolicy)}) and then yields one
 * LAGGED event with reason {@link WatchEvent#RESUBSCRIBED}.
 */
public final class WatchStream implements Iterator<WatchEvent>, AutoCloseable {
  private static final Object END = new Object();

  /** The client's own resubscribed event: consuming it asks the server for nothing. */
  private record Synthetic(WatchEvent event) {}

  private final WatchCore core;
  private final BlockingQueue<Object> queue = new LinkedBlockingQueue<>();
  private final CompletableFuture<Boolean> ready = new CompletableFuture<>();
  private Object next;
  private boolean finished;

  WatchStream(Channel channel, CallOptions options, WatchRequest request, RetryPolicy reconnect,
      WatchCore.Mode mode) {
    core = new WatchCore(channel, options, request, reconnect, new WatchCore.Sink() {
      @Override
      public void ready() {
        ready.complete(true);
      }

      @Override
      public void event(WatchEvent event, boolean synthetic) {
        queue.add(synthetic ? new Synthetic(event) : event);
      }

      @Override
      public void end() {
        ready.complete(false);
        queue.add(END);
      }

      @Override
      public void error(CacheException error) {
        ready.completeExceptionally(error);
        queue.add(error);
      }
    }, false, mode);
    core.start();
  }

  /**
   * The position of the last message received from the server (events and heartbeats alike; empty
   * before any): pass it to {@link WatchQuery#resumeAfter(String)} to resume there.
   */
  public String lastPosition() {
    return core.lastPosition();
  }

  /**
   * Wait until the server has accepted the subscription (response headers received).
   *
   * @param timeout how long to wait at most
   * @return true when accepted, false on timeout or when the stream ended first without error
   * @throws CacheException when the server refused the call (e.g. Unimplemented)
   */
  public boolean awaitReady(Duration timeout) {
    try {
      return ready.get(timeout.toNanos(), TimeUnit.NANOSECONDS);
    } catch (TimeoutException e) {
      return false;
    } catch (ExecutionException e) {
      throw (CacheException) e.getCause();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      return false;
    }
  }

  private Object take(long timeoutNanos) throws InterruptedException {
    if (next == null) {
      next = timeoutNanos < 0 ? queue.take() : queue.poll(timeoutNanos, TimeUnit.NANOSECONDS);
    }
    return next;
  }

  private WatchEvent consume() {
    Object item = next;
    next = null;
    if (item instanceof WatchEvent ev) {
      core.request();
      return ev;
    }
    if (item instanceof Synthetic s) {
      return s.event();
    }
    finished = true;
    if (item instanceof CacheException e) {
      throw e;
    }
    return null;
  }

  /** Blocks until an event is ready (true) or the stream ended (false); throws its failure. */
  @Override
  public boolean hasNext() {
    return waitNext(-1);
  }

  /**
   * Like {@link #hasNext()} but waits at most {@code timeout}.
   *
   * @param timeout how long to wait at most
   * @return true when an event is ready for {@link #next()}; false on timeout or when the stream
   *     has ended (tell them apart with {@link #isFinished()})
   * @throws CacheException when the stream failed
   */
  public boolean hasNext(Duration timeout) {
    return waitNext(Math.max(0, timeout.toNanos()));
  }

  private boolean waitNext(long timeoutNanos) {
    if (finished) {
      return false;
    }
    try {
      Object item = take(timeoutNanos);
      if (item == null) {
        return false;
      }
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
   * @param timeout how long to wait at most
   * @return the event, or null
   * @throws CacheException when the stream failed
   */
  public WatchEvent poll(Duration timeout) {
    return hasNext(timeout) ? consume() : null;
  }

  /** True once the stream has ended (normally, by cancel, or with an error already thrown). */
  public boolean isFinished() {
    return finished;
  }

  /** End the subscription. */
  public void cancel() {
    core.cancel();
  }

  @Override
  public void close() {
    cancel();
  }
}
