/**
 * `node packages/kernel/dist/bench/ab/audit-scan.js <other checkout, built> [--records N] [--rounds N] [--intent BYTES]`:
 * a whole scan of the audit records (the reader's records(), as `kpip audit query` reads them)
 * by this checkout and another, alternating, over one database file of N records keeping
 * intents of BYTES each (0: `bench.noop` records). One JSON line per run, CPU of the process.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { abArgs, noopEntry } from "./common.js";

const { other, here, records, rounds } = abArgs("audit-scan.js", { records: 100_000, rounds: 3 });
const at = process.argv.indexOf("--intent");
const intentBytes = at >= 0 ? Number(process.argv[at + 1]) : 20 * 1024;

const dir = mkdtempSync(join(tmpdir(), "kpip-ab-scan-"));
try {
  const db = join(dir, "kernel.db");
  const { fillAuditFile } = (await import(
    pathToFileURL(join(here, "packages/kernel/dist/test/audit-fill.js")).href
  )) as typeof import("../../test/audit-fill.js");
  const intent = randomBytes(intentBytes);
  await fillAuditFile(
    db,
    records,
    (i) => (intentBytes === 0 ? noopEntry(i) : { ...noopEntry(i), op: "storage.write", intent }),
    { batchMax: 512, checkpointEvery: 10_000 },
    "k-ab",
  );
  for (let r = 0; r < rounds; r++) {
    for (const root of [resolve(other), here]) {
      const { openAuditReader } = (await import(
        pathToFileURL(join(root, "packages/kernel/dist/src/audit/reader.js")).href
      )) as typeof import("../../src/audit/reader.js");
      const reader = openAuditReader(db, { direct: true });
      const t = process.hrtime.bigint();
      const cpu = process.cpuUsage();
      let n = 0;
      let bytes = 0;
      for (const rec of reader.records()) {
        n++;
        bytes += rec.intent?.length ?? 0;
      }
      const secs = Number(process.hrtime.bigint() - t) / 1e9;
      const used = process.cpuUsage(cpu);
      reader.close();
      if (n !== records || (intentBytes > 0 && bytes !== records * intentBytes))
        throw new Error(`${root}: read ${n} records, ${bytes} intent bytes`);
      const cpuSecs = (used.user + used.system) / 1e6;
      process.stdout.write(
        `${JSON.stringify({ root, records: n, intentBytes, secs: Math.round(secs * 1000) / 1000, cpuSecs: Math.round(cpuSecs * 1000) / 1000, rpsCpu: Math.round(n / cpuSecs) })}\n`,
      );
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
