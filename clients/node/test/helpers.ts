// Shared by the offline suites: google.rpc error details as a fake server
// sends them (grpc-status-details-bin).
import { Metadata, status } from "@grpc/grpc-js";
import { Any } from "../src/gen/google/protobuf/any.js";
import { BadRequest } from "../src/gen/google/rpc/error_details.js";
import { Status } from "../src/gen/google/rpc/status.js";

/** Packs an encoded detail message as google.protobuf.Any. */
export function pack(type: string, bytes: Uint8Array): Any {
  return { typeUrl: `type.googleapis.com/${type}`, value: Buffer.from(bytes) };
}

/** A gRPC error carrying google.rpc.Status details, as grpc-js servers send it. */
export function richError(code: status, message: string, details: Any[]) {
  const metadata = new Metadata();
  metadata.set("grpc-status-details-bin", Buffer.from(Status.encode({ code, message, details }).finish()));
  return { code, details: message, metadata };
}

/** An INVALID_ARGUMENT carrying a google.rpc.BadRequest with these [field, description, reason?] violations. */
export function badRequest(message: string, violations: Array<[string, string, string?]>) {
  const fieldViolations = violations.map(([field, description, reason]) => ({
    field,
    description,
    reason: reason ?? "",
    localizedMessage: undefined,
  }));
  return richError(status.INVALID_ARGUMENT, message, [
    pack("google.rpc.BadRequest", BadRequest.encode({ fieldViolations }).finish()),
  ]);
}
