package io.cxcache.client;

import com.fasterxml.jackson.core.type.TypeReference;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import com.google.protobuf.ByteString;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.Value;
import com.google.protobuf.util.JsonFormat;
import io.cxcache.v1.GetResponse;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.time.Duration;
import java.util.List;
import java.util.Objects;

/**
 * A Get reply: the canonical JSON bytes and where they came from. Immutable: the bytes are a
 * {@link ByteString} and the tags an unmodifiable list.
 *
 * @param raw canonical JSON bytes (UTF-8)
 * @param source where the value came from
 * @param key the cache key (usable with invalidate and watch)
 * @param age time since the value was fetched upstream
 * @param ttlRemaining time left before the value is stale
 * @param tags tags the entry carries
 */
public record CacheResult(
    ByteString raw, Source source, String key, Duration age, Duration ttlRemaining, List<String> tags) {

  /**
   * The mapper behind {@link #value(Class)}: Jackson defaults except that properties the target
   * type does not declare are ignored (platform resources carry many fields).
   */
  private static final ObjectMapper MAPPER = JsonMapper.builder()
      .disable(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES)
      .build();

  /** Copies {@code tags} and rejects null bytes. */
  public CacheResult {
    Objects.requireNonNull(raw, "raw");
    tags = tags == null ? List.of() : List.copyOf(tags);
  }

  static CacheResult fromProto(GetResponse r) {
    return new CacheResult(
        r.getValue(),
        Source.fromProto(r.getSource()),
        r.getKey(),
        Durations.toJava(r.getAge()),
        Durations.toJava(r.getTtlRemaining()),
        r.getTagsList());
  }

  /** A fresh copy of the canonical JSON bytes (changing it does not change this result). */
  public byte[] bytes() {
    return raw.toByteArray();
  }

  /** The value as a JSON string. */
  public String json() {
    return raw.toStringUtf8();
  }

  /**
   * The value parsed into a {@code google.protobuf.Value} (a JSON tree: struct, list, string,
   * number, bool or null). See {@link #value(Class)} for typed mapping.
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

  /**
   * The value mapped onto {@code type} with Jackson (a record, a bean, {@code Map.class},
   * {@code JsonNode.class}, ...). Unknown properties are ignored.
   *
   * @throws UncheckedIOException when the JSON does not fit {@code type}
   */
  public <T> T value(Class<T> type) {
    return value(MAPPER, type);
  }

  /**
   * The value mapped onto a generic type, e.g. {@code new TypeReference<List<Queue>>() {}}.
   *
   * @throws UncheckedIOException when the JSON does not fit the type
   */
  public <T> T value(TypeReference<T> type) {
    try {
      return MAPPER.readValue(raw.newInput(), type);
    } catch (IOException e) {
      throw new UncheckedIOException("cannot map the value of " + key + " to " + type.getType(), e);
    }
  }

  /**
   * Like {@link #value(Class)} with your own configured {@link ObjectMapper}.
   *
   * @throws UncheckedIOException when the JSON does not fit {@code type}
   */
  public <T> T value(ObjectMapper mapper, Class<T> type) {
    try {
      return mapper.readValue(raw.newInput(), type);
    } catch (IOException e) {
      throw new UncheckedIOException("cannot map the value of " + key + " to " + type.getName(), e);
    }
  }
}
