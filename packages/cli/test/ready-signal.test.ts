import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { SqliteStore } from "@kpip/kernel";

const CLI_MAIN = fileURLToPath(new URL("../src/main.js", import.meta.url));
const SERVE = fileURLToPath(import.meta.resolve("@kpip/kernel").replace(/index\.js$/, "serve.js"));

/**
 * Loaded before the program: the moment the process writes its ready line ("is running"), it
 * sends itself SIGTERM — a supervisor that stops the kernel as soon as it reads that line, at
 * the earliest instant it could. Deterministic: the signal is pending before the write returns.
 */
const PRELOAD = `data:text/javascript,${encodeURIComponent(`
const write = process.stdout.write.bind(process.stdout);
let sent = false;
process.stdout.write = (chunk, ...rest) => {
  const r = write(chunk, ...rest);
  if (!sent && String(chunk).includes("is running")) { sent = true; process.kill(process.pid, "SIGTERM"); }
  return r;
};`)}`;

/** Runs `node --import PRELOAD <args>` to its end: its exit code and signal. */
function run(args: string[]): Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, ["--import", PRELOAD, ...args], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    p.stdout.on("data", (d) => {
      out += d;
    });
    p.on("exit", (code, signal) => resolve({ code, signal, out }));
  });
}

/** The op of the home's last audit record. */
function lastOp(home: string): string | null | undefined {
  const store = new SqliteStore(join(home, "kernel.db"));
  try {
    return store.lastAudit()?.op;
  } finally {
    store.close();
  }
}

describe("a stop sent as the kernel says it is running", () => {
  it("a SIGTERM the instant the kernel prints its ready line stops it cleanly (kpip kernel and the package's serve entry), on the record with kernel.stop", async () => {
    for (const entry of [
      (home: string) => [CLI_MAIN, "kernel", "--home", home, "--log-level", "silent", "--sandbox", "none"],
      (home: string) => [SERVE, "--home", home, "--log-level", "silent", "--sandbox", "none"],
    ]) {
      const home = mkdtempSync(join(tmpdir(), "kpip-"));
      try {
        const r = await run(entry(home));
        assert.deepEqual([r.code, r.signal], [0, null], `a clean exit, not death by the signal: ${r.out}`);
        assert.equal(lastOp(home), "kernel.stop", "the stop is on the record");
      } finally {
        rmSync(home, { recursive: true, force: true });
      }
    }
  });
});
