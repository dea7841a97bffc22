import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const CHAOS = fileURLToPath(new URL("../bench/chaos.js", import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [CHAOS, ...args], { encoding: "utf8", timeout: 120_000 });

// The short run of npm run chaos (the 20-cycle figures are in docs/reliability.md).
describe("crash consistency under SIGKILL (npm run chaos, short run)", () => {
  it("3 kill/restart cycles: chain verifies, acknowledged writes and outcomes all there, no torn object, running ops failed", () => {
    const r = run("--cycles", "3", "--seed", "11", "--json");
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
    const summary = JSON.parse(r.stdout.trim().split("\n").at(-1) as string) as {
      cycles: number;
      ackedWrites: number;
      checkedObjects: number;
      deferredRunning: number;
      deferredFailed: number;
      violations: number;
    };
    assert.equal(summary.cycles, 3);
    assert.ok(summary.ackedWrites > 0 && summary.checkedObjects >= summary.ackedWrites);
    // every DEFERRED op running at a kill is reported failed after the restart
    assert.ok(summary.deferredRunning > 0, "the run had ops running at the kills");
    assert.equal(summary.deferredFailed, summary.deferredRunning);
    assert.equal(summary.violations, 0);
  });

  it("the checks catch a corrupted acknowledged write (the oracle can fail)", () => {
    const r = run("--cycles", "1", "--seed", "11", "--inject-fault");
    assert.equal(r.status, 1, r.stdout);
    assert.match(r.stdout, /VIOLATION cycle 1: acknowledged write obj:\/\/chaos\/c1\/\S+ holds other bytes than acknowledged/);
    assert.match(r.stdout, /is torn/);
  });
});
