// Shared by the offline suites: google.rpc error details as a fake server
// sends them (grpc-status-details-bin).
import { Metadata, status } from "@grpc/grpc-js";
import { Any } from "../src/gen/google/protobuf/any.js";
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
