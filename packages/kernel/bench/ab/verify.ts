/**
 * `node packages/kernel/dist/bench/ab/verify.js <other checkout, built> [--records N] [--rounds N]`:
 * `audit verify` (as `kpip audit verify` runs it, ranges on worker threads) of this checkout
 * against another, alternating, each on a database file its own code filled (the two may store
 * records differently) with the same records, shaped like a `bench.noop` request's (intent,
 * intent hash, caps, detail, duration). One JSON line per run.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { abArgs, noopEntry } from "./common.js";

const { other, here, records, rounds } = abArgs("verify.js", { records: 300_000, rounds: 2 });

const dir = mkdtempSync(join(tmpdir(), "kpip-ab-verify-"));
try {
  const roots = [resolve(other), here];
  const dbs = new Map<string, string>();
  for (const [i, root] of roots.entries()) {
    const { fillAuditFile } = (await import(
      pathToFileURL(join(root, "packages/kernel/dist/test/audit-fill.js")).href
    )) as typeof import("../../test/audit-fill.js");
    const db = join(dir, `kernel-${i}.db`);
    await fillAuditFile(db, records, noopEntry, { batchMax: 512, checkpointEvery: 10_000 }, "k-ab");
    dbs.set(root, db);
  }
  for (let r = 0; r < rounds; r++) {
    for (const root of roots) {
      const { verifyAuditFile } = (await import(
        pathToFileURL(join(root, "packages/kernel/dist/src/audit/verify-parallel.js")).href
      )) as typeof import("../../src/audit/verify-parallel.js");
      const t = process.hrtime.bigint();
      const cpu = process.cpuUsage();
      const v = await verifyAuditFile(dbs.get(root) as string);
      const secs = Number(process.hrtime.bigint() - t) / 1e9;
      const used = process.cpuUsage(cpu);
      if (!v.ok) throw new Error(`${root}: verify failed: ${v.firstBad?.reason}`);
      // CPU of the whole process (main thread and the workers): steadier than wall time on a shared machine.
      const cpuSecs = (used.user + used.system) / 1e6;
      process.stdout.write(
        `${JSON.stringify({ root, records: v.records, secs: Math.round(secs * 1000) / 1000, rps: Math.round(v.records / secs), rpsCpu: Math.round(v.records / cpuSecs) })}\n`,
      );
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
