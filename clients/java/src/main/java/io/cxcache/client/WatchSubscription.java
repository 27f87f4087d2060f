package io.cxcache.client;

/** Handle of a callback-style Watch; {@link #close()} cancels it. */
public interface WatchSubscription extends AutoCloseable {
  /** End the subscription; the observer then gets {@code onCompleted()}. */
  void cancel();

  @Override
  default void close() {
    cancel();
  }
}
