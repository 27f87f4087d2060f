import { Metadata, status as Status } from "@grpc/grpc-js";
import { Any } from "./gen/google/protobuf/any.js";
import {
  BadRequest,
  DebugInfo,
  ErrorInfo,
  Help,
  LocalizedMessage,
  PreconditionFailure,
  QuotaFailure,
  RequestInfo,
  ResourceInfo,
  RetryInfo,
} from "./gen/google/rpc/error_details.js";
import { Status as RpcStatus } from "./gen/google/rpc/status.js";

export const DETAILS_KEY = "grpc-status-details-bin";

/** One google.rpc.BadRequest field violation. */
export interface FieldViolation {
  /** The request field at fault, e.g. "kind", "id", "params.pageSize". */
  field: string;
  /** Human-readable description of what is wrong with it. */
  description: string;
  /** Machine-readable reason, when the server sends one ("" otherwise). */
  reason: string;
}

/** A google.rpc.ErrorInfo detail. */
export interface ErrorInfoDetail {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
}

/** ErrorInfo domain the server uses for errors that come from the platform (Genesys Cloud). */
export const UPSTREAM_DOMAIN = "cxcache.upstream";

/**
 * The platform's own error, when the server relays an upstream 4xx/5xx as a
 * google.rpc.ErrorInfo with domain "cxcache.upstream".
 */
export interface UpstreamError {
  /** The platform's error code (ErrorInfo.reason), e.g. "not.found". */
  code: string;
  /** The platform's HTTP status (ErrorInfo.metadata.status), when present and numeric. */
  status: number | undefined;
  /** The platform's error message (ErrorInfo.metadata.message). */
  message: string;
  /** All ErrorInfo.metadata entries. */
  metadata: Record<string, string>;
}

/** A google.rpc detail message, decoded when its type is known. */
export interface ErrorDetail {
  /** Fully-qualified type name, e.g. "google.rpc.RetryInfo". */
  type: string;
  /** The decoded message, or the raw bytes for unknown types. */
  message: unknown;
}

const DECODERS: Record<string, { decode(input: Uint8Array): unknown }> = {
  "google.rpc.BadRequest": BadRequest,
  "google.rpc.RetryInfo": RetryInfo,
  "google.rpc.ErrorInfo": ErrorInfo,
  "google.rpc.DebugInfo": DebugInfo,
  "google.rpc.QuotaFailure": QuotaFailure,
  "google.rpc.PreconditionFailure": PreconditionFailure,
  "google.rpc.RequestInfo": RequestInfo,
  "google.rpc.ResourceInfo": ResourceInfo,
  "google.rpc.Help": Help,
  "google.rpc.LocalizedMessage": LocalizedMessage,
};

/** Base class of every error the client raises (a failed gRPC call). */
export class CacheError extends Error {
  /** gRPC status code number (see `status` from @grpc/grpc-js). */
  readonly code: Status;
  /** Status code name, e.g. "INVALID_ARGUMENT". */
  readonly codeName: string;
  /** The status message sent by the server. */
  readonly details: string;
  /** google.rpc details from grpc-status-details-bin. */
  readonly errorDetails: ErrorDetail[];
  /** From a google.rpc.BadRequest detail. */
  readonly fieldViolations: FieldViolation[];
  /** From a google.rpc.RetryInfo detail: how long to wait before retrying. */
  readonly retryAfterMs: number | undefined;
  /** Field violations grouped by field name: `fieldErrors.kind` -> ["unknown kind 'x'"]. */
  readonly fieldErrors: Readonly<Record<string, string[]>>;
  /** The first google.rpc.ErrorInfo detail, if any. */
  readonly errorInfo: ErrorInfoDetail | undefined;
  /** The platform's error when the server relayed one (ErrorInfo domain "cxcache.upstream"). */
  readonly upstream: UpstreamError | undefined;
  /** Response trailers. */
  readonly metadata: Metadata | undefined;
  /** How many attempts the call made (more than 1 when it was retried). */
  attempts = 1;
  /** What this client thinks the cause is, when the status alone does not say (e.g. plaintext against TLS). */
  hint: string | undefined;

  constructor(
    code: Status,
    details: string,
    init: {
      errorDetails?: ErrorDetail[];
      fieldViolations?: FieldViolation[];
      retryAfterMs?: number;
      errorInfo?: ErrorInfoDetail;
      metadata?: Metadata;
      cause?: unknown;
    } = {},
  ) {
    const codeName = Status[code] ?? `CODE_${code}`;
    super(`${codeName}: ${details}`, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.code = code;
    this.codeName = codeName;
    this.details = details;
    this.errorDetails = init.errorDetails ?? [];
    this.fieldViolations = init.fieldViolations ?? [];
    this.retryAfterMs = init.retryAfterMs;
    this.metadata = init.metadata;
    const byField: Record<string, string[]> = {};
    for (const v of this.fieldViolations) (byField[v.field] ??= []).push(v.description);
    this.fieldErrors = byField;
    const infos = this.errorDetails.filter((d) => d.type === "google.rpc.ErrorInfo").map((d) => d.message as ErrorInfo);
    const info = init.errorInfo ?? infos[0];
    this.errorInfo = info && { reason: info.reason, domain: info.domain, metadata: { ...info.metadata } };
    const up = infos.find((i) => i.domain === UPSTREAM_DOMAIN) ?? (info?.domain === UPSTREAM_DOMAIN ? info : undefined);
    if (up) {
      const st = Number(up.metadata.status);
      this.upstream = {
        code: up.reason,
        status: up.metadata.status !== undefined && Number.isFinite(st) ? st : undefined,
        message: up.metadata.message ?? "",
        metadata: { ...up.metadata },
      };
    }
  }

  /** The platform's error message (shortcut for `upstream?.message`). */
  get upstreamMessage(): string | undefined {
    return this.upstream?.message;
  }

  /** The platform's error code (shortcut for `upstream?.code`). */
  get upstreamCode(): string | undefined {
    return this.upstream?.code;
  }

  /** The platform's HTTP status (shortcut for `upstream?.status`). */
  get upstreamStatus(): number | undefined {
    return this.upstream?.status;
  }
}

/**
 * A Get succeeded but its value could not be turned into the caller's type: the
 * bytes were not JSON, or the `parse` callback threw (it is the `cause`).
 */
export class ValueParseError extends Error {
  constructor(
    message: string,
    /** The kind that was requested. */
    readonly kind: string,
    /** The reply's cache key. */
    readonly key: string,
    /** The reply's raw JSON bytes. */
    readonly raw: Buffer,
    cause?: unknown,
  ) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "ValueParseError";
  }
}

export class CancelledError extends CacheError {}
export class InvalidArgumentError extends CacheError {}
export class DeadlineExceededError extends CacheError {}
export class NotFoundError extends CacheError {}
/**
 * The caller is known but its scopes do not allow the call. The server names them in the
 * message ("caller routing lacks scope get for kind user"): `caller`, `scope` and `what` are
 * parsed from it (undefined when the message has another shape).
 */
export class PermissionDeniedError extends CacheError {
  readonly caller: string | undefined;
  readonly scope: string | undefined;
  readonly what: string | undefined;

  constructor(...args: ConstructorParameters<typeof CacheError>) {
    super(...args);
    const m = /caller (\S+) lacks scope (\S+) for (.+)$/.exec(this.details);
    this.caller = m?.[1];
    this.scope = m?.[2];
    this.what = m?.[3];
  }
}
export class ResourceExhaustedError extends CacheError {}
export class FailedPreconditionError extends CacheError {}
export class UnimplementedError extends CacheError {}
export class InternalError extends CacheError {}
export class UnavailableError extends CacheError {}
/** No credential, or one the server does not know (send `apiKey`, or a client certificate under mutual TLS). */
export class UnauthenticatedError extends CacheError {}

type ErrorClass = new (...args: ConstructorParameters<typeof CacheError>) => CacheError;

const BY_CODE: Partial<Record<Status, ErrorClass>> = {
  [Status.CANCELLED]: CancelledError,
  [Status.INVALID_ARGUMENT]: InvalidArgumentError,
  [Status.DEADLINE_EXCEEDED]: DeadlineExceededError,
  [Status.NOT_FOUND]: NotFoundError,
  [Status.PERMISSION_DENIED]: PermissionDeniedError,
  [Status.RESOURCE_EXHAUSTED]: ResourceExhaustedError,
  [Status.FAILED_PRECONDITION]: FailedPreconditionError,
  [Status.UNIMPLEMENTED]: UnimplementedError,
  [Status.INTERNAL]: InternalError,
  [Status.UNAVAILABLE]: UnavailableError,
  [Status.UNAUTHENTICATED]: UnauthenticatedError,
};

function decodeDetail(any: Any): ErrorDetail {
  const type = any.typeUrl.slice(any.typeUrl.lastIndexOf("/") + 1);
  const decoder = DECODERS[type];
  if (decoder) {
    try {
      return { type, message: decoder.decode(any.value) };
    } catch {
      // fall through: keep the raw bytes
    }
  }
  return { type, message: any.value };
}

/** Decode the google.rpc.Status carried in grpc-status-details-bin, if any. */
export function richStatus(metadata: Metadata | undefined): RpcStatus | undefined {
  const raw = metadata?.get(DETAILS_KEY)?.[0];
  if (raw === undefined) return undefined;
  try {
    return RpcStatus.decode(typeof raw === "string" ? Buffer.from(raw, "base64") : raw);
  } catch {
    return undefined;
  }
}

interface GrpcErrorLike {
  code?: number;
  details?: string;
  message?: string;
  metadata?: Metadata;
}

/**
 * tonic (the Rust gRPC server) enforces the caller's grpc-timeout itself and answers
 * CANCELLED "Timeout expired" when it fires, which can reach the client just before the
 * client's own timer would report DEADLINE_EXCEEDED.
 */
export const SERVER_TIMEOUT_MESSAGE = "Timeout expired";

/**
 * Convert a grpc-js ServiceError (or status object) into the matching CacheError.
 * With `hadDeadline` (the call carried a deadline), a server's CANCELLED "Timeout
 * expired" is reported as DeadlineExceededError.
 */
export function toCacheError(err: unknown, hadDeadline = false): CacheError {
  if (err instanceof CacheError) return err;
  const e = (err ?? {}) as GrpcErrorLike;
  let code: Status = typeof e.code === "number" ? e.code : Status.UNKNOWN;
  const rich = richStatus(e.metadata);
  let details = e.details ?? e.message ?? "";
  if (hadDeadline && code === Status.CANCELLED && details === SERVER_TIMEOUT_MESSAGE) {
    code = Status.DEADLINE_EXCEEDED;
  }
  if (!details && rich) details = rich.message;
  const errorDetails = (rich?.details ?? []).map(decodeDetail);
  const fieldViolations: FieldViolation[] = [];
  let retryAfterMs: number | undefined;
  for (const d of errorDetails) {
    if (d.type === "google.rpc.BadRequest") {
      for (const v of (d.message as BadRequest).fieldViolations) {
        fieldViolations.push({ field: v.field, description: v.description, reason: v.reason ?? "" });
      }
    } else if (d.type === "google.rpc.RetryInfo") {
      const delay = (d.message as RetryInfo).retryDelay;
      if (delay) retryAfterMs = delay.seconds * 1000 + Math.round(delay.nanos / 1e6);
    }
  }
  const Cls = BY_CODE[code] ?? CacheError;
  return new Cls(code, details, { errorDetails, fieldViolations, retryAfterMs, metadata: e.metadata, cause: err });
}
