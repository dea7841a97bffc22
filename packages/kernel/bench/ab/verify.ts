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
import { fileURLToPath, pathToFileURL } from "node:url";
import { encodeIntent, intentHash } from "@kpip/protocol";
import type { AuditEntry } from "../../src/audit/log.js";

const args = process.argv.slice(2);
const other = args.find((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
const opt = (name: string, dflt: number) => {
  const at = args.indexOf(name);
  return at >= 0 ? Number(args[at + 1]) : dflt;
};
const records = opt("--records", 300_000);
const rounds = opt("--rounds", 2);
if (!other) {
  process.stderr.write("usage: verify.js <other kpip checkout, built> [--records N] [--rounds N]\n");
  process.exit(2);
}
const here = resolve(fileURLToPath(new URL("../../../../../", import.meta.url)));

const dir = mkdtempSync(join(tmpdir(), "kpip-ab-verify-"));
try {
  const intent = encodeIntent({ op: "bench.noop", target: "kernel://", args: {} });
  const hash = intentHash(intent);
  const record = (i: number): AuditEntry => ({
    session: "sess-0123456789abcdef",
    persona: "admin",
    phase: "complete",
    requestId: i,
    op: "bench.noop",
    target: "kernel://",
    intentHash: hash,
    intent,
    caps: "bench.noop@kernel://",
    status: "SUCCESS",
    durationUs: 40 + (i % 50),
    detail: '{"n":1}',
  });
  const roots = [resolve(other), here];
  const dbs = new Map<string, string>();
  for (const [i, root] of roots.entries()) {
    const { fillAuditFile } = (await import(
      pathToFileURL(join(root, "packages/kernel/dist/test/audit-fill.js")).href
    )) as typeof import("../../test/audit-fill.js");
    const db = join(dir, `kernel-${i}.db`);
    await fillAuditFile(db, records, record, { batchMax: 512, checkpointEvery: 10_000 }, "k-ab");
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
