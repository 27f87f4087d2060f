export {
  CacheClient,
  WatchStream,
  type CallSettings,
  type ClientOptions,
  type EventType,
  type GetOptions,
  type GetResult,
  type InvalidateOptions,
  type Source,
  type WatchEvent,
  type WatchOptions,
} from "./client.js";
export {
  CacheError,
  CancelledError,
  DeadlineExceededError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnauthenticatedError,
  UnavailableError,
  UnimplementedError,
  toCacheError,
  type ErrorDetail,
  type FieldViolation,
} from "./errors.js";
export { status } from "@grpc/grpc-js";
export { VERSION } from "./gen/version.js";
