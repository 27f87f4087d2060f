package io.cxcache.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * A failed cxcache call: the gRPC status plus the google.rpc details decoded from
 * {@code grpc-status-details-bin}. Catch a nested subclass for one status code, e.g.
 * {@link InvalidArgument} (with {@link #fieldViolations()}) or {@link ResourceExhausted} (with
 * {@link #retryDelay()}).
 */
public class CacheException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  /**
   * One google.rpc.BadRequest field violation.
   *
   * @param field the request field, named as in the proto: kind, id, variant, params[NAME],
   *     body_json, freshness.max_age, keys[I], prefixes[I], tags[I]
   * @param description what is wrong with it
   */
  public record FieldViolation(String field, String description) {}

  /**
   * A google.rpc.ErrorInfo detail.
   *
   * @param reason machine-readable cause (for {@link #UPSTREAM_DOMAIN}: the platform's error code)
   * @param domain who defines the reason
   * @param metadata further key/value facts (unmodifiable)
   */
  public record ErrorDetail(String reason, String domain, Map<String, String> metadata) {
    /** Copies {@code metadata}. */
    public ErrorDetail {
      metadata = metadata == null ? Map.of() : Map.copyOf(metadata);
    }
  }

  /**
   * The platform's own answer to an upstream 4xx, from an ErrorInfo detail of domain
   * {@link #UPSTREAM_DOMAIN}.
   *
   * @param code the platform's error code (ErrorInfo reason), e.g. "not.found"
   * @param httpStatus the upstream HTTP status (metadata "status"), 0 when not sent
   * @param message the platform's error message (metadata "message"), empty when not sent
   */
  public record UpstreamError(String code, int httpStatus, String message) {}

  /** ErrorInfo domain of details that describe the upstream platform's error answer. */
  public static final String UPSTREAM_DOMAIN = "cxcache.upstream";

  private final Status.Code code;
  private final String statusMessage;
  private final transient List<Any> details;
  private final List<FieldViolation> fieldViolations;
  private final Duration retryDelay;
  private final List<ErrorDetail> errorDetails;

  protected CacheException(
      Status.Code code, String statusMessage, List<Any> details, List<FieldViolation> fieldViolations,
      Duration retryDelay, Throwable cause) {
    super(describe(code, statusMessage, fieldViolations, retryDelay, upstreamOf(errorDetails(details))),
        cause);
    this.code = code;
    this.statusMessage = statusMessage;
    this.details = List.copyOf(details);
    this.fieldViolations = List.copyOf(fieldViolations);
    this.retryDelay = retryDelay;
    this.errorDetails = errorDetails(details);
  }

  private static List<ErrorDetail> errorDetails(List<Any> details) {
    List<ErrorDetail> out = new ArrayList<>();
    for (Any any : details) {
      if (any.is(ErrorInfo.class)) {
        try {
          ErrorInfo info = any.unpack(ErrorInfo.class);
          out.add(new ErrorDetail(info.getReason(), info.getDomain(), info.getMetadataMap()));
        } catch (InvalidProtocolBufferException e) {
          // skip the malformed detail
        }
      }
    }
    return List.copyOf(out);
  }

  private static UpstreamError upstreamOf(List<ErrorDetail> errorDetails) {
    for (ErrorDetail d : errorDetails) {
      if (UPSTREAM_DOMAIN.equals(d.domain())) {
        int status = 0;
        try {
          status = Integer.parseInt(d.metadata().getOrDefault("status", "0").trim());
        } catch (NumberFormatException e) {
          // keep 0
        }
        return new UpstreamError(d.reason(), status, d.metadata().getOrDefault("message", ""));
      }
    }
    return null;
  }

  private static String describe(Status.Code code, String message, List<FieldViolation> violations,
      Duration retryDelay, UpstreamError upstream) {
    StringBuilder sb = new StringBuilder(code.name()).append(": ").append(message == null ? "" : message);
    if (!violations.isEmpty()) {
      sb.append(" [");
      for (int i = 0; i < violations.size(); i++) {
        if (i > 0) {
          sb.append("; ");
        }
        sb.append(violations.get(i).field()).append(": ").append(violations.get(i).description());
      }
      sb.append(']');
    }
    if (upstream != null) {
      sb.append(" (upstream");
      if (upstream.httpStatus() != 0) {
        sb.append(' ').append(upstream.httpStatus());
      }
      if (!upstream.code().isEmpty()) {
        sb.append(' ').append(upstream.code());
      }
      if (!upstream.message().isEmpty()) {
        sb.append(": ").append(upstream.message());
      }
      sb.append(')');
    }
    if (retryDelay != null) {
      sb.append(" (retry after ").append(retryDelay).append(')');
    }
    return sb.toString();
  }

  /** The gRPC status code. */
  public Status.Code code() {
    return code;
  }

  /** The status message sent by the server. */
  public String statusMessage() {
    return statusMessage;
  }

  /** All google.rpc detail messages, packed (use {@code Any.is/unpack}). */
  public List<Any> details() {
    return details;
  }

  /** Field violations from a google.rpc.BadRequest detail (empty when none). */
  public List<FieldViolation> fieldViolations() {
    return fieldViolations;
  }

  /** The violation reported for {@code field} (e.g. "id", "params[pageSize]"), if any. */
  public Optional<FieldViolation> fieldViolation(String field) {
    return fieldViolations.stream().filter(v -> v.field().equals(field)).findFirst();
  }

  /** All google.rpc.ErrorInfo details (empty when none). */
  public List<ErrorDetail> errorDetails() {
    return errorDetails;
  }

  /**
   * The upstream platform's error (code, HTTP status, message) when the server forwarded one as an
   * ErrorInfo of domain {@link #UPSTREAM_DOMAIN}, e.g. for a 404 or 400 from the platform.
   */
  public Optional<UpstreamError> upstreamError() {
    return Optional.ofNullable(upstreamOf(errorDetails));
  }

  /** Shortcut for {@code upstreamError().map(UpstreamError::message)}. */
  public Optional<String> upstreamMessage() {
    return upstreamError().map(UpstreamError::message);
  }

  /** How long to wait before retrying, from a google.rpc.RetryInfo detail. */
  public Optional<Duration> retryDelay() {
    return Optional.ofNullable(retryDelay);
  }

  /**
   * tonic (the Rust gRPC server) enforces the caller's grpc-timeout itself and answers CANCELLED
   * "Timeout expired" when it fires, which can reach the client just before the client's own
   * timer would report DEADLINE_EXCEEDED.
   */
  static final String SERVER_TIMEOUT_MESSAGE = "Timeout expired";

  /** Convert any throwable from a gRPC call into the matching CacheException subclass. */
  public static CacheException from(Throwable t) {
    return from(t, false);
  }

  /**
   * Like {@link #from(Throwable)}; with {@code hadDeadline} (the call carried a deadline) a
   * server's CANCELLED "Timeout expired" becomes {@link DeadlineExceeded}.
   */
  public static CacheException from(Throwable t, boolean hadDeadline) {
    if (t instanceof CacheException ce) {
      return ce;
    }
    Status status = Status.fromThrowable(t);
    if (hadDeadline && status.getCode() == Status.Code.CANCELLED
        && SERVER_TIMEOUT_MESSAGE.equals(status.getDescription())) {
      status = Status.DEADLINE_EXCEEDED.withDescription(status.getDescription());
    }
    com.google.rpc.Status rich = StatusProto.fromThrowable(t);
    String message = status.getDescription();
    List<Any> details = new ArrayList<>();
    List<FieldViolation> violations = new ArrayList<>();
    Duration retry = null;
    if (rich != null) {
      if (message == null || message.isEmpty()) {
        message = rich.getMessage();
      }
      details.addAll(rich.getDetailsList());
      for (Any any : rich.getDetailsList()) {
        try {
          if (any.is(BadRequest.class)) {
            for (BadRequest.FieldViolation v : any.unpack(BadRequest.class).getFieldViolationsList()) {
              violations.add(new FieldViolation(v.getField(), v.getDescription()));
            }
          } else if (any.is(RetryInfo.class)) {
            retry = Durations.toJava(any.unpack(RetryInfo.class).getRetryDelay());
          }
        } catch (InvalidProtocolBufferException e) {
          // keep the packed detail; skip the malformed one
        }
      }
    }
    if (message == null) {
      message = "";
    }
    if (answeredWithTls(t)) {
      message += " (the server answered with TLS but this client connects in plaintext: use"
          + " CacheClient.Builder.tls() or caFile(...))";
    }
    Status.Code c = status.getCode();
    switch (c) {
      case CANCELLED: return new Cancelled(c, message, details, violations, retry, t);
      case INVALID_ARGUMENT: return new InvalidArgument(c, message, details, violations, retry, t);
      case DEADLINE_EXCEEDED: return new DeadlineExceeded(c, message, details, violations, retry, t);
      case NOT_FOUND: return new NotFound(c, message, details, violations, retry, t);
      case PERMISSION_DENIED: return new PermissionDenied(c, message, details, violations, retry, t);
      case RESOURCE_EXHAUSTED: return new ResourceExhausted(c, message, details, violations, retry, t);
      case FAILED_PRECONDITION: return new FailedPrecondition(c, message, details, violations, retry, t);
      case UNIMPLEMENTED: return new Unimplemented(c, message, details, violations, retry, t);
      case INTERNAL: return new Internal(c, message, details, violations, retry, t);
      case UNAVAILABLE: return new Unavailable(c, message, details, violations, retry, t);
      case UNAUTHENTICATED: return new Unauthenticated(c, message, details, violations, retry, t);
      default: return new CacheException(c, message, details, violations, retry, t);
    }
  }

  /**
   * True when netty saw a TLS record (0x15 alert / 0x16 handshake, version 3.x) where an HTTP/2
   * plaintext SETTINGS frame was expected: a plaintext client talking to a TLS port.
   */
  private static boolean answeredWithTls(Throwable t) {
    for (Throwable c = t; c != null; c = c.getCause()) {
      String m = c.getMessage();
      if (m != null && m.contains("First received frame was not SETTINGS")
          && (m.contains("Hex dump for first 5 bytes: 1503") || m.contains("Hex dump for first 5 bytes: 1603"))) {
        return true;
      }
      if (c.getCause() == c) {
        break;
      }
    }
    return false;
  }

  /** CANCELLED. */
  public static final class Cancelled extends CacheException {
    private static final long serialVersionUID = 1L;

    Cancelled(Status.Code c, String m, List<Any> d, List<FieldViolation> v, Duration r, Throwable t) {
      super(c, m, d, v, r, t);
    }
  }

  /** INVALID_ARGUMENT: see {@link #fieldViolations()}. */
  public static final class InvalidArgument extends CacheException {
    private static final long serialVersionUID = 1L;

    InvalidArgument(Status.Code c, String m, List<Any> d, List<FieldViolation> v, Duration r, Throwable t) {
      super(c, m, d, v, r, t);
    }
  }

  /** DEADLINE_EXCEEDED. */
  public static final class DeadlineExceeded extends CacheException {
    private static final long serialVersionUID = 1L;

    DeadlineExceeded(Status.Code c, String m, List<Any> d, List<FieldViolation> v, Duration r, Throwable t) {
      super(c, m, d, v, r, t);
    }
  }

  /** NOT_FOUND (mirrors the upstream answer). */
  public static final class NotFound extends CacheException {
    private static final long serialVersionUID = 1L;

    NotFound(Status.Code c, String m, List<Any> d, List<FieldViolation> v, Duration r, Throwable t) {
      super(c, m, d, v, r, t);
    }
  }

  /** PERMISSION_DENIED (mirrors the upstream answer). */
  public static final class PermissionDenied extends CacheException {
    private static final long serialVersionUID = 1L;

    PermissionDenied(Status.Code c, String m, List<Any> d, List<FieldViolation> v, Duration r, Throwable t) {
      super(c, m, d, v, r, t);
    }
  }

  /** RESOURCE_EXHAUSTED: the upstream quota is spent; see {@link #retryDelay()}. */
  public static final class ResourceExhausted extends CacheException {
    private static final long serialVersionUID = 1L;

    ResourceExhausted(Status.Code c, String m, List<Any> d, List<FieldViolation> v, Duration r, Throwable t) {
      super(c, m, d, v, r, t);
    }
  }

  /** FAILED_PRECONDITION. */
  public static final class FailedPrecondition extends CacheException {
    private static final long serialVersionUID = 1L;

    FailedPrecondition(Status.Code c, String m, List<Any> d, List<FieldViolation> v, Duration r, Throwable t) {
      super(c, m, d, v, r, t);
    }
  }

  /** UNIMPLEMENTED. */
  public static final class Unimplemented extends CacheException {
    private static final long serialVersionUID = 1L;

    Unimplemented(Status.Code c, String m, List<Any> d, List<FieldViolation> v, Duration r, Throwable t) {
      super(c, m, d, v, r, t);
    }
  }

  /** INTERNAL. */
  public static final class Internal extends CacheException {
    private static final long serialVersionUID = 1L;

    Internal(Status.Code c, String m, List<Any> d, List<FieldViolation> v, Duration r, Throwable t) {
      super(c, m, d, v, r, t);
    }
  }

  /** UNAVAILABLE: the server or the upstream is failing; see {@link #retryDelay()}. */
  public static final class Unavailable extends CacheException {
    private static final long serialVersionUID = 1L;

    Unavailable(Status.Code c, String m, List<Any> d, List<FieldViolation> v, Duration r, Throwable t) {
      super(c, m, d, v, r, t);
    }
  }

  /** UNAUTHENTICATED (mirrors the upstream answer). */
  public static final class Unauthenticated extends CacheException {
    private static final long serialVersionUID = 1L;

    Unauthenticated(Status.Code c, String m, List<Any> d, List<FieldViolation> v, Duration r, Throwable t) {
      super(c, m, d, v, r, t);
    }
  }
}
