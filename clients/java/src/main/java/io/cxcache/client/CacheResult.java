package io.cxcache.client;

import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.Value;
import com.google.protobuf.util.JsonFormat;
import io.cxcache.v1.GetResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;

/**
 * A Get reply: the canonical JSON bytes and where they came from.
 *
 * @param raw canonical JSON bytes
 * @param source where the value came from
 * @param key the cache key (usable with invalidate and watch)
 * @param age time since the value was fetched upstream
 * @param ttlRemaining time left before the value is stale
 * @param tags tags the entry carries
 */
public record CacheResult(
    byte[] raw, Source source, String key, Duration age, Duration ttlRemaining, List<String> tags) {

  static CacheResult fromProto(GetResponse r) {
    return new CacheResult(
        r.getValue().toByteArray(),
        Source.fromProto(r.getSource()),
        r.getKey(),
        Durations.toJava(r.getAge()),
        Durations.toJava(r.getTtlRemaining()),
        List.copyOf(r.getTagsList()));
  }

  /** The value as a JSON string. */
  public String json() {
    return new String(raw, StandardCharsets.UTF_8);
  }

  /**
   * The value parsed into a {@code google.protobuf.Value} (a JSON tree: struct, list, string,
   * number, bool or null). Use {@link #json()} with your own JSON library for typed mapping.
   */
  public Value value() {
    Value.Builder b = Value.newBuilder();
    try {
      JsonFormat.parser().merge(json(), b);
    } catch (InvalidProtocolBufferException e) {
      throw new IllegalStateException("cxcache returned a value that is not JSON", e);
    }
    return b.build();
  }
}
