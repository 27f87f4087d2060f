package io.cxcache.client;

import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledThreadPoolExecutor;

/** One daemon thread shared by all clients for retry and reconnect timers (never blocks). */
final class Scheduler {
  private static final ScheduledThreadPoolExecutor EXECUTOR = new ScheduledThreadPoolExecutor(1, r -> {
    Thread t = new Thread(r, "cxcache-client-timer");
    t.setDaemon(true);
    return t;
  });

  static {
    EXECUTOR.setRemoveOnCancelPolicy(true);
  }

  private Scheduler() {}

  static ScheduledExecutorService get() {
    return EXECUTOR;
  }
}
