// dist/esm holds the ES-module build: mark it as such for Node (the package root is CommonJS).
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
writeFileSync(join(root, "dist", "esm", "package.json"), JSON.stringify({ type: "module" }, null, 2) + "\n");
