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

  RetryPolicy reconnect() {
    return reconnect;
  }

  Duration timeout() {
    return timeout;
  }

  WatchRequest toProto() {
    return WatchRequest.newBuilder()
        .addAllKeys(keys)
        .addAllPrefixes(prefixes)
        .addAllKinds(kinds)
        .addAllTags(tags)
        .build();
  }
}
