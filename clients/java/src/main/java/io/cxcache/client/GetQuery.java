package io.cxcache.client;

import io.cxcache.v1.Freshness;
import io.cxcache.v1.GetRequest;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;

/** A fluent description of one Get: {@code GetQuery.of("routing.queue").id(id).variant("summary")}. */
public final class GetQuery {
  private final String kind;
  private String id = "";
  private String variant = "";
  private final Map<String, String> params = new LinkedHashMap<>();
  private String bodyJson = "";
  private Duration maxAge;
  private boolean allowStale;
  private boolean forceRefresh;
  private Duration timeout;

  private GetQuery(String kind) {
    this.kind = Objects.requireNonNull(kind, "kind");
  }

  /** A Get of the catalog resource kind, e.g. "routing.queue". */
  public static GetQuery of(String kind) {
    return new GetQuery(kind);
  }

  /** Entity id, required when the kind's path has an {id}. */
  public GetQuery id(String id) {
    this.id = Objects.requireNonNull(id);
    return this;
  }

  /** Named projection declared by the kind. */
  public GetQuery variant(String variant) {
    this.variant = Objects.requireNonNull(variant);
    return this;
  }

  /** A query parameter the kind declares. */
  public GetQuery param(String name, Object value) {
    params.put(name, String.valueOf(value));
    return this;
  }

  /** JSON request body for query-style kinds. */
  public GetQuery bodyJson(String json) {
    this.bodyJson = Objects.requireNonNull(json);
    return this;
  }

  /** Accept a cached value only if at most this old. */
  public GetQuery maxAge(Duration maxAge) {
    this.maxAge = maxAge;
    return this;
  }

  /** Accept a stale value when a fresh one cannot be had right now. */
  public GetQuery allowStale(boolean allowStale) {
    this.allowStale = allowStale;
    return this;
  }

  /** Skip the cache and fetch upstream. */
  public GetQuery forceRefresh(boolean forceRefresh) {
    this.forceRefresh = forceRefresh;
    return this;
  }

  /** Deadline of this call (otherwise the client's default timeout). */
  public GetQuery timeout(Duration timeout) {
    this.timeout = timeout;
    return this;
  }

  Duration timeout() {
    return timeout;
  }

  String kind() {
    return kind;
  }

  Duration maxAge() {
    return maxAge;
  }

  boolean forceRefresh() {
    return forceRefresh;
  }

  GetRequest toProto() {
    GetRequest.Builder b =
        GetRequest.newBuilder().setKind(kind).setId(id).setVariant(variant).putAllParams(params)
            .setBodyJson(bodyJson);
    if (maxAge != null || allowStale || forceRefresh) {
      Freshness.Builder f = Freshness.newBuilder().setAllowStale(allowStale).setForceRefresh(forceRefresh);
      if (maxAge != null) {
        f.setMaxAge(Durations.toProto(maxAge));
      }
      b.setFreshness(f);
    }
    return b.build();
  }
}
