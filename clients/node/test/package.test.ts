// Packaging: the version derives from /VERSION, and the exports map serves both an
// ES-module build (import) and a CommonJS build (require), each with declarations.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import * as cjsApi from "../src/index.js";

const pkgDir = join(__dirname, "..", "..");
const repoRoot = join(pkgDir, "..", "..");
const pkg = JSON.parse(readFileSync(join(pkgDir, "package.json"), "utf8"));
// A real dynamic import (tsc would turn `import()` into require() in this CommonJS test build).
const esmImport = new Function("specifier", "return import(specifier)") as (s: string) => Promise<Record<string, unknown>>;

test("package.json version equals the repo's /VERSION, and VERSION is exported", () => {
  const version = readFileSync(join(repoRoot, "VERSION"), "utf8").trim();
  assert.equal(pkg.version, version);
  assert.equal(cjsApi.VERSION, version);
});

test("package-lock.json root version follows /VERSION too", () => {
  const lock = JSON.parse(readFileSync(join(pkgDir, "package-lock.json"), "utf8"));
  assert.equal(lock.version, pkg.version);
  assert.equal(lock.packages[""].version, pkg.version);
});

test("exports map: import and require conditions, each with types, all files built", () => {
  const dot = pkg.exports["."];
  assert.deepEqual(Object.keys(dot), ["import", "require"]);
  for (const cond of ["import", "require"]) {
    assert.equal(Object.keys(dot[cond])[0], "types", `${cond}: types must come first`);
    for (const f of [dot[cond].types, dot[cond].default]) assert.ok(existsSync(join(pkgDir, f)), `${cond}: ${f} missing`);
  }
  assert.equal(JSON.parse(readFileSync(join(pkgDir, "dist", "esm", "package.json"), "utf8")).type, "module");
  assert.equal(pkg.peerDependenciesMeta["@opentelemetry/api"].optional, true);
  assert.equal(pkg.dependencies["@opentelemetry/api"], undefined);
});

test("require and import of the package name (self-reference) both load the client", async () => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const viaRequire = require("@cxcache/client");
  const viaImport = await esmImport("@cxcache/client");
  assert.equal(viaRequire.CacheClient, cjsApi.CacheClient);
  assert.equal(typeof viaImport.CacheClient, "function");
  assert.notEqual(viaImport.CacheClient, cjsApi.CacheClient, "import must resolve to the ES-module build");
  assert.deepEqual(Object.keys(viaImport).sort(), Object.keys(viaRequire).filter((k) => k !== "__esModule").sort());
  assert.equal(viaImport.VERSION, pkg.version);
});
