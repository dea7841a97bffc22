import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { isBuiltin } from "node:module";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { FAST_COMMANDS } from "../src/commands/fast.js";

const BUNDLE = fileURLToPath(new URL("../bundle/", import.meta.url));
/**
 * What the bundle may load from outside itself: Node's modules and grpc-js (only when a client
 * dials gRPC). The kernel's packages (better-sqlite3, pino) must never be among them, nor
 * cbor-x's native decoder (the protocol decodes CBOR itself).
 */
const EXTERNAL = new Set(["@grpc/grpc-js"]);

describe("the bundled kpip entry (dist/bundle)", () => {
  it("is one CommonJS file loading nothing but Node's modules and grpc-js (only to dial gRPC)", () => {
    const files = readdirSync(BUNDLE).filter((f) => f.endsWith(".js") || f.endsWith(".cjs"));
    assert.ok(files.includes("kpip.cjs"), "run `npm run build`: the bundle is missing");
    const found = new Set<string>();
    for (const f of files) {
      const src = readFileSync(join(BUNDLE, f), "utf8");
      for (const m of src.matchAll(/(?:import|require)\(\s*["']([^"']+)["']\s*\)/g)) found.add(m[1] as string);
    }
    const foreign = [...found].filter((s) => !isBuiltin(s) && !EXTERNAL.has(s));
    // @kpip/kernel in the bundle would mean SQLite, grpc-js and pino loaded to send one intent.
    assert.deepEqual(foreign, []);
    assert.deepEqual(files, ["kpip.cjs"], "one file: every module loaded costs the loader a file");
  });

  it("hands every command it does not bundle to the unbundled CLI, and runs the bundled ones itself", () => {
    const run = (...args: string[]) => spawnSync(process.execPath, [join(BUNDLE, "kpip.cjs"), ...args], { encoding: "utf8" });
    // persona is not bundled: its help comes from dist/src/main.js through the entry
    const persona = run("persona", "--help");
    assert.equal(persona.status, 0, persona.stderr);
    assert.match(persona.stdout, /^kpip persona — /);
    for (const name of Object.keys(FAST_COMMANDS)) {
      const r = run(name, "--help");
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`^kpip ${name} — `));
    }
    const bad = run("--json", "call", "--no-such-flag");
    assert.equal(bad.status, 2);
    assert.equal(JSON.parse(bad.stdout).error, "UsageError");
  });
});
