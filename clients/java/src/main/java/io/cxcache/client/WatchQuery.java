package io.cxcache.client;

import io.cxcache.v1.WatchRequest;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/** What to watch: {@code WatchQuery.create().keys(k).kinds("routing.queue")}. */
public final class WatchQuery {
  private final List<String> keys = new ArrayList<>();
  private final List<String> prefixes = new ArrayList<>();
  private final List<String> kinds = new ArrayList<>();
  private final List<String> tags = new ArrayList<>();
  private Duration timeout;
  private RetryPolicy reconnect;
  private String resumeAfter = "";
  private boolean invalidatedOnly;
  private Duration heartbeatInterval;
  private boolean autoResume;

  private WatchQuery() {}

  public static WatchQuery create() {
    return new WatchQuery();
  }

  public WatchQuery keys(String... keys) {
    this.keys.addAll(Arrays.asList(keys));
    return this;
  }

  public WatchQuery prefixes(String... prefixes) {
    this.prefixes.addAll(Arrays.asList(prefixes));
    return this;
  }

  public WatchQuery kinds(String... kinds) {
    this.kinds.addAll(Arrays.asList(kinds));
    return this;
  }

  /** Tags such as {@code queue:<id>}: events for every key carrying one. */
  public WatchQuery tags(String... tags) {
    this.tags.addAll(Arrays.asList(tags));
    return this;
  }

  /** Bound on the whole subscription (no default timeout applies to watches). */
  public WatchQuery timeout(Duration timeout) {
    this.timeout = timeout;
    return this;
  }

  /**
   * How to reconnect when the stream is lost (UNAVAILABLE: server restart, network failure).
   * Default: the client's watch policy ({@link CacheClient.Builder#watchReconnect(RetryPolicy)},
   * itself {@link RetryPolicy#watchDefaults()} unless set). {@link RetryPolicy#disabled()} turns
   * reconnection off: the stream then fails with {@link CacheException.Unavailable}. After a
   * reconnect the client delivers one LAGGED event with reason {@link WatchEvent#RESUBSCRIBED}.
   */
  public WatchQuery reconnect(RetryPolicy policy) {
    this.reconnect = policy;
    return this;
  }

  /**
   * Resume after this position ({@link WatchEvent#position()} of the last event handled): the
   * server replays the matching events since, or sends one {@link EventType#RESET} first when it
   * cannot (another instance, a restart, past its retention): then treat everything as changed.
   */
  public WatchQuery resumeAfter(String position) {
    this.resumeAfter = position == null ? "" : position;
    return this;
  }

  /** Only INVALIDATED events (no UPDATED). */
  public WatchQuery invalidatedOnly(boolean invalidatedOnly) {
    this.invalidatedOnly = invalidatedOnly;
    return this;
  }

  /**
   * Deliver the server's {@link EventType#HEARTBEAT} events, asking for one every {@code interval}
   * (the server clamps it to its bounds; {@link Duration#ZERO}: the server's own interval).
   * Without this call heartbeats are consumed by the client and never delivered.
   */
  public WatchQuery heartbeats(Duration interval) {
    this.heartbeatInterval = interval == null ? Duration.ZERO : interval;
    return this;
  }

  /**
   * When a lost stream is resubscribed, resume after the last position received (including
   * heartbeats' positions) instead of delivering the client's resubscribed LAGGED event: a
   * successful resume replays what was missed, a failed one starts with a {@link EventType#RESET}
   * (resync). Before any position arrived the resubscribed LAGGED event is still delivered.
   * Default off.
   */
  public WatchQuery autoResume(boolean autoResume) {
    this.autoResume = autoResume;
    return this;
  }

  boolean autoResume() {
    return autoResume;
  }

  boolean deliversHeartbeats() {
    return heartbeatInterval != null;
  }

  RetryPolicy reconnect() {
    return reconnect;
  }

  Duration timeout() {
    return timeout;
  }

  WatchRequest toProto() {
    WatchRequest.Builder b = WatchRequest.newBuilder()
        .addAllKeys(keys)
        .addAllPrefixes(prefixes)
        .addAllKinds(kinds)
        .addAllTags(tags)
        .setResumeAfter(resumeAfter)
        .setInvalidatedOnly(invalidatedOnly);
    if (heartbeatInterval != null && !heartbeatInterval.isZero()) {
      b.setHeartbeatInterval(Durations.toProto(heartbeatInterval));
    }
    return b.build();
  }
}
