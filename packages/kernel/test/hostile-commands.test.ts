import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const bench = (f: string) => fileURLToPath(new URL(`../bench/${f}`, import.meta.url));
const run = (f: string, args: string[]) =>
  // Under the runner's 600 s a test: a full run at load ~20 took the fuzz past 240 s.
  spawnSync(process.execPath, [bench(f), ...args, "--json"], { encoding: "utf8", timeout: 540_000 });

// Short versions of the long hostile-input and load runs (the full ones are npm run fuzz:kernel / load).
describe("live fuzzing and load, short runs", () => {
  it("fuzz:kernel: mutated frames and intents from hostile sessions; the legitimate client never fails", () => {
    const r = run("fuzz-kernel.js", ["--frames", "4000", "--seed", "7"]);
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
    const s = JSON.parse(r.stdout) as Record<string, number | string[]>;
    assert.ok((s.frames as number) >= 4000);
    assert.ok((s.mutatedIntents as number) > 0 && (s.mutatedFrames as number) > 0 && (s.preHandshake as number) > 0);
    assert.ok((s.legitRounds as number) > 0);
    assert.equal(s.legitFailures, 0);
    assert.deepEqual(s.failures, []);
  });

  it("load: concurrent sessions over several personas with mixed ops and no unexpected error", () => {
    // At least 4 s and 101 ops (the floor asserted below), however long a busy machine takes.
    const r = run("load.js", ["--sessions", "60", "--seconds", "4", "--min-ops", "101", "--personas", "3", "--kernel-probe"]);
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
    const s = JSON.parse(r.stdout) as {
      ops: number;
      failures: string[];
      perOp: Record<string, { count: number }>;
      rssByMinuteMb: number[];
      generatorLoopDelayMs: { p50: number; p99: number; p999: number; max: number };
      generators: number;
      kernel: {
        requests: number;
        p50_us: number;
        p99_us: number;
        audit: { records: number; p50_us: number };
        probe: Record<
          "all" | "first" | "rest",
          { requests: number; wallMs: { p99: number; max: number }; ownMs: { p99: number; max: number } }
        >;
      };
    };
    assert.deepEqual(s.failures, []);
    assert.ok(Array.isArray(s.rssByMinuteMb), "the soak's RSS by minute (empty for a run under a minute)");
    const d = s.generatorLoopDelayMs;
    assert.ok(d.p50 > 0 && d.p50 <= d.p99 && d.p99 <= d.p999 && d.p999 <= d.max, JSON.stringify(d));
    assert.equal(s.perOp.connect?.count, 60);
    assert.ok(s.ops > 100, `only ${s.ops} ops`);
    // Spread over processes, merged exactly: every op measured is in the per-op counts.
    assert.equal(s.generators, 2);
    const counted = Object.entries(s.perOp).reduce((n, [op, o]) => n + (op === "connect" ? 0 : o.count), 0);
    assert.equal(counted, s.ops);
    // The kernel's side: it answered and recorded at least every op the generators measured
    // (more: the subscriptions are requests too), with its own latency beside theirs.
    assert.ok(s.kernel.requests >= s.ops, JSON.stringify(s.kernel));
    assert.ok(s.kernel.audit.records >= s.ops, JSON.stringify(s.kernel.audit));
    assert.ok(s.kernel.p50_us > 0 && s.kernel.p50_us <= s.kernel.p99_us, JSON.stringify(s.kernel));
    assert.ok(s.kernel.audit.p50_us > 0, JSON.stringify(s.kernel.audit));
    // --kernel-probe: every load request timed in the kernel, its own time never more than its wall time.
    const p = s.kernel.probe;
    assert.ok(p.all.requests >= s.ops && p.all.requests === p.first.requests + p.rest.requests, JSON.stringify(p));
    assert.ok(p.all.ownMs.p99 <= p.all.wallMs.p99 && p.all.ownMs.max <= p.all.wallMs.max, JSON.stringify(p.all));
  });
});
