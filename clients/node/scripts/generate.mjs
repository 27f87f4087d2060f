// Generates src/gen/ from ../../proto (plus google/rpc status + error details from
// the google-proto-files package) with buf + ts-proto, as configured in buf.gen.yaml.
// src/gen/ is build output: gitignored, never edited by hand.
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const buf = join(root, "node_modules", ".bin", process.platform === "win32" ? "buf.cmd" : "buf");
const protoDir = join(root, "..", "..", "proto");
const gen = join(root, "src", "gen");

function newest(dir) {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}

const stamp = join(gen, "cxcache", "v1", "cache.ts");
const inputsTime = Math.max(newest(protoDir), statSync(join(root, "buf.gen.yaml")).mtimeMs);
if (process.argv.includes("--force") || !existsSync(stamp) || statSync(stamp).mtimeMs < inputsTime) {
  execFileSync(buf, ["generate"], { cwd: root, stdio: "inherit" });
  console.log("cxcache: generated src/gen");
} else {
  console.log("cxcache: src/gen up to date");
}
