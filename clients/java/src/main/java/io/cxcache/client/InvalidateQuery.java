package io.cxcache.client;

import io.cxcache.v1.InvalidateRequest;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/** What to purge: {@code InvalidateQuery.create().keys(k).reason("...")}. */
public final class InvalidateQuery {
  private final List<String> keys = new ArrayList<>();
  private final List<String> prefixes = new ArrayList<>();
  private final List<String> tags = new ArrayList<>();
  private String reason = "";
  private Duration timeout;

  private InvalidateQuery() {}

  public static InvalidateQuery create() {
    return new InvalidateQuery();
  }

  public InvalidateQuery keys(String... keys) {
    this.keys.addAll(Arrays.asList(keys));
    return this;
  }

  public InvalidateQuery prefixes(String... prefixes) {
    this.prefixes.addAll(Arrays.asList(prefixes));
    return this;
  }

  public InvalidateQuery tags(String... tags) {
    this.tags.addAll(Arrays.asList(tags));
    return this;
  }

  /** Free text recorded in the audit log and sent to watchers. */
  public InvalidateQuery reason(String reason) {
    this.reason = reason;
    return this;
  }

  public InvalidateQuery timeout(Duration timeout) {
    this.timeout = timeout;
    return this;
  }

  List<String> keys() {
    return keys;
  }

  List<String> prefixes() {
    return prefixes;
  }

  List<String> tags() {
    return tags;
  }

  Duration timeout() {
    return timeout;
  }

  InvalidateRequest toProto() {
    return InvalidateRequest.newBuilder()
        .addAllKeys(keys).addAllPrefixes(prefixes).addAllTags(tags).setReason(reason).build();
  }
}
