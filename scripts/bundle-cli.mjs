#!/usr/bin/env node
// Bundles the `kpip` entry (packages/cli/dist/src/kpip.js, compiled by `tsc -b`) into
// packages/cli/dist/bundle/kpip.cjs: the commands run many times a minute then load one file
// instead of ~60 modules, one file. Run by `npm run build` after tsc; it does nothing when the bundle is
// newer than every file that went into it (esbuild's metafile lists them).
import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const entry = join(root, "packages/cli/dist/src/kpip.js");
const outdir = join(root, "packages/cli/dist/bundle");
const outfile = join(outdir, "kpip.cjs");
const metafile = join(root, "packages/cli/dist/bundle/meta.json");

function upToDate() {
  try {
    const built = statSync(outfile).mtimeMs;
    const meta = JSON.parse(readFileSync(metafile, "utf8"));
    return Object.keys(meta.inputs).every((f) => statSync(join(root, f)).mtimeMs <= built);
  } catch {
    return false; // no bundle yet, or an input is gone: build
  }
}

if (!upToDate()) {
  const { build } = await import("esbuild-wasm");
  // Chunk names carry content hashes: start empty so no stale chunk is left beside the new ones.
  rmSync(outdir, { recursive: true, force: true });
  const result = await build({
    absWorkingDir: root,
    entryPoints: [entry],
    outfile,
    bundle: true,
    // One file, not chunks: Node's ES module loader costs ~1-2 ms a file, and what loads lazily
    // stays lazy without splitting (bundled modules behind a dynamic import are evaluated only
    // when it runs; grpc-js is imported dynamically by the client, so it stays external).
    splitting: false,
    // CommonJS: Node's CommonJS loader starts a file faster than its ES module loader (measured
    // ~5 % of a call); `import.meta.url` becomes the file's URL through the banner.
    format: "cjs",
    platform: "node",
    target: "node20",
    metafile: true,
    logLevel: "warning",
    // Native addons and what loads only on a path the bundled commands rarely take stay as
    // packages, resolved from node_modules at run time.
    external: ["better-sqlite3", "shm-typed-array", "@grpc/grpc-js", "pino"],
    define: { "import.meta.url": "__kpip_import_meta_url" },
    banner: {
      js: '"use strict";\nconst __kpip_import_meta_url = require("node:url").pathToFileURL(__filename).href;',
    },
  });
  mkdirSync(dirname(metafile), { recursive: true });
  writeFileSync(metafile, JSON.stringify(result.metafile));
}
