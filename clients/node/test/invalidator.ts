// A second process for the racing checker: reads one cache key per stdin line, invalidates
// it with its own CacheClient and answers "ok <CLOCK_MONOTONIC ms at the ack>" (or "err <message>").
import { createInterface } from "node:readline";
import { CacheClient } from "../src/index.js";

const client = new CacheClient(process.argv[2], { defaultTimeoutMs: 10_000 });
const rl = createInterface({ input: process.stdin });
rl.on("line", (key) => {
  client.invalidate({ keys: [key], reason: "node near race" }).then(
    () => process.stdout.write(`ok ${Number(process.hrtime.bigint()) / 1e6}\n`),
    (e: Error) => process.stdout.write(`err ${e.message.replace(/\n/g, " ")}\n`),
  );
});
rl.on("close", () => client.close());
process.stdout.write("ready\n");
