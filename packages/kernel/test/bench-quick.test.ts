import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const KPIP = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

/** The names issues #8, #17 and #22 require in `--json` output; their figures are in BENCHMARKS.md, never asserted here. */
const REQUIRED = [
  "raw.uds.p50_us",
  "raw.uds.p99_us",
  "grpc.unary.p50_us",
  "grpc.unary.rps_64",
  "kpip.uds.p50_us",
  "kpip.uds.p99_us",
  "kpip.uds.rps_256",
  "kpip.grpc.rps_256",
  "kpip.bulk64m.uds_gbps",
  "kpip.bulk64m.shm_gbps",
  "kpip.setup.p50_ms",
  "kpip.idle1000.rss_mb",
  "kpip.audit.verify_rps",
  "kpip.cli.call_ms",
  // issue #22
  "kpip.uds.gen.rps_256",
  "kpip.kernel.cpu_us_per_req",
  "kpip.client.cpu_us_per_req",
  "raw.server.cpu_us_per_req",
  "kpip.idle10000.rss_mb",
  // issue #22: large objects (64 MiB storage.write, and one object through the chunked upload).
  "kpip.store64m.uds_gbps",
  "kpip.store64m.shm_gbps",
  "kpip.bulk1g.gbps",
  "kpip.bulk1g.rss_mb",
  // issue #22: the floors of bulk data on this machine, the baselines of the figures above.
  "floor.uds_gbps",
  "floor.sha256_gbps",
  "floor.durable_gbps",
  "floor.store64m_gbps",
  "floor.bulk1g_gbps",
];

describe("kpip bench --quick --json (the output contract)", () => {
  it("prints one JSON object per measurement, every required name, ratios against present baselines", () => {
    const r = spawnSync(process.execPath, [KPIP, "bench", "--quick", "--json"], { encoding: "utf8", timeout: 480_000 });
    assert.equal(r.status, 0, r.stderr);
    const rows = r.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { name: string; unit: string; value: number; baseline?: string; ratio?: number });
    const byName = new Map(rows.map((m) => [m.name, m]));
    assert.deepEqual(
      REQUIRED.filter((n) => !byName.has(n)),
      [],
    );
    for (const m of rows) {
      assert.equal(typeof m.unit, "string");
      assert.ok(Number.isFinite(m.value) && m.value >= 0, `${m.name} = ${m.value}`);
      if (m.baseline !== undefined) {
        const b = byName.get(m.baseline);
        assert.ok(b, `${m.name}: baseline ${m.baseline} is printed`);
        // The ratio is of the unrounded values, and printed to 3 decimals, as both values are: each
        // rounding (±0.0005) moves value / baseline by 0.0005 / value or 0.0005 / baseline of itself,
        // which is large for the small figures of a busy machine (0.01 GB/s). Twice that, plus the
        // ratio's own rounding, is what a correct ratio can differ by.
        const bv = (b as { value: number }).value;
        const ratio = m.ratio as number;
        const recomputed = m.value / bv;
        const slack = 0.0006 + (2 * 0.0005 * (1 + recomputed)) / bv;
        assert.ok(Math.abs(ratio - recomputed) <= slack, `${m.name}: ratio ${ratio}, ${m.value} / ${bv} = ${recomputed}`);
      }
    }
    const withRatio = ["kpip.uds.p50_us", "kpip.uds.p99_us", "kpip.grpc.rps_256", "kpip.bulk64m.shm_gbps", "kpip.cli.call_ms"];
    for (const n of [...withRatio, "kpip.uds.gen.rps_256", "kpip.kernel.cpu_us_per_req"]) {
      assert.ok(byName.get(n)?.ratio !== undefined, `${n} carries a ratio`);
    }
  });

  it("refuses arguments it does not know (usage error, exit 2)", () => {
    const r = spawnSync(process.execPath, [KPIP, "bench", "--frames", "3"], { encoding: "utf8" });
    assert.equal(r.status, 2, r.stderr);
    const p = spawnSync(process.execPath, [KPIP, "bench", "extra"], { encoding: "utf8" });
    assert.equal(p.status, 2, p.stderr);
  });
});
