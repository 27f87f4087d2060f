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
  field: string;
  description: string;
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
  /** Response trailers. */
  readonly metadata: Metadata | undefined;

  constructor(
    code: Status,
    details: string,
    init: {
      errorDetails?: ErrorDetail[];
      fieldViolations?: FieldViolation[];
      retryAfterMs?: number;
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
  }
}

export class CancelledError extends CacheError {}
export class InvalidArgumentError extends CacheError {}
export class DeadlineExceededError extends CacheError {}
export class NotFoundError extends CacheError {}
export class PermissionDeniedError extends CacheError {}
export class ResourceExhaustedError extends CacheError {}
export class FailedPreconditionError extends CacheError {}
export class UnimplementedError extends CacheError {}
export class InternalError extends CacheError {}
export class UnavailableError extends CacheError {}
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
        fieldViolations.push({ field: v.field, description: v.description });
      }
    } else if (d.type === "google.rpc.RetryInfo") {
      const delay = (d.message as RetryInfo).retryDelay;
      if (delay) retryAfterMs = delay.seconds * 1000 + Math.round(delay.nanos / 1e6);
    }
  }
  const Cls = BY_CODE[code] ?? CacheError;
  return new Cls(code, details, { errorDetails, fieldViolations, retryAfterMs, metadata: e.metadata, cause: err });
}
