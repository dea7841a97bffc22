import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const RUN = fileURLToPath(new URL("../bench/abuse/run.js", import.meta.url));
// Every attack of issue #15 (findings 1-12), in the runner's order.
const ONLY =
  "shm-shrink,mint-pairs,expensive-tokens,event-bytes,subscriptions,preauth-slots,fatal-error-leak,refusal-flood,log-flood,token-rows,rate-refresh,oversized-resend";

interface Row {
  attack: string;
  legitCalls: number;
  failures: string[];
}

// A short `npm run abuse`: each attack against its own kernel process, the legitimate persona
// calling throughout. Timings are reported by the full run, never asserted here.
describe("noisy neighbours, short run", () => {
  it("npm run abuse: under each attack the kernel lives, stays under its RSS bound, and every legitimate call succeeds", () => {
    const r = spawnSync(process.execPath, [RUN, "--seconds", "1", "--only", ONLY, "--json"], {
      encoding: "utf8",
      timeout: 480_000,
    });
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
    const out = JSON.parse(r.stdout.trim().split("\n").pop() as string) as { rows: Row[]; failed: number };
    assert.deepEqual(
      out.rows.map((x) => x.attack),
      ["quiet", ...ONLY.split(",")],
    );
    for (const row of out.rows) {
      assert.deepEqual(row.failures, [], row.attack);
      assert.ok(row.legitCalls > 0, `${row.attack}: the legitimate persona got answers`);
    }
    assert.equal(out.failed, 0);
  });
});
