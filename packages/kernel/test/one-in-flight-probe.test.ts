import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const TOOL = fileURLToPath(new URL("../bench/ab/one-in-flight.js", import.meta.url));
const HERE = fileURLToPath(new URL("../../../../", import.meta.url));

// A short bench/ab/one-in-flight run (this checkout against itself): every call is matched to
// the kernel's record of it (the tool throws otherwise), and the counts are there. Timings are
// the tool's to report, never asserted here.
describe("the one-in-flight attribution tool, short run", () => {
  it("one-in-flight.js matches every call to the kernel's record of it and prints the counts", async () => {
    const p = spawn(process.execPath, [TOOL, HERE, "--rounds", "1", "--calls", "300"], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    p.stdout.on("data", (d) => {
      out += d;
    });
    p.stderr.on("data", (d) => {
      err += d;
    });
    const code = await new Promise((r) => p.once("exit", r));
    assert.equal(code, 0, err);
    const runs = out
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, number>);
    assert.equal(runs.length, 2);
    for (const r of runs) {
      for (const k of [
        "p50_us",
        "p99_us",
        "own_p50_us",
        "index_steps",
        "timer_callbacks",
        "scavenges",
        "own_over_200us",
        "checkpoint_at_call",
        "ping_at_call",
      ])
        assert.ok(Number.isFinite(r[k]), `${k} is reported (${r[k]})`);
      // Only the shape: percentiles of one series are ordered, counts are counts of the calls made.
      // Never a relation between two measured times (the machine is shared).
      const ordered = (a: string, b: string) => assert.ok((r[a] as number) <= (r[b] as number), `${a} <= ${b}`);
      ordered("p50_us", "p99_us");
      ordered("p99_us", "p999_us");
      ordered("own_p50_us", "own_p99_us");
      ordered("own_p99_us", "own_p999_us");
      for (const k of ["own_over_200us", "index_steps", "timer_callbacks", "scavenges"])
        assert.ok(Number.isInteger(r[k]) && (r[k] as number) >= 0, `${k} is a count`);
      assert.ok((r.own_over_200us as number) <= 300, "no more slow calls than calls");
      const shares =
        (r.slow1pc_kernel_own_pc as number) + (r.slow1pc_kernel_waiting_pc as number) + (r.slow1pc_outside_pc as number);
      assert.ok(Math.abs(shares - 100) <= 2, `the slow 1 %'s shares add up (${shares})`);
    }
  });
});
