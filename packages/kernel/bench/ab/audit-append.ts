/**
 * `node packages/kernel/dist/bench/ab/audit-append.js <other checkout, built> [--records N] [--rounds N]`:
 * the kernel's audit append path alone — chaining a record (encoding, SHA-256) and committing it
 * to SQLite in batches of 256, as at 256 requests in flight — of this checkout against another,
 * alternating, each on a fresh database file. Records are shaped like a `bench.noop` request's.
 * One JSON line per run with the CPU per record (process.cpuUsage: steadier than wall time on a
 * shared machine).
 */
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { abArgs, checkoutAudit, noopEntry } from "./common.js";

const { other, here, records, rounds } = abArgs("audit-append.js", { records: 100_000, rounds: 3 });
const key = generateKeyPairSync("ed25519").privateKey;
const dir = mkdtempSync(join(tmpdir(), "kpip-ab-append-"));
try {
  for (let r = 0; r < rounds; r++) {
    for (const root of [resolve(other), here]) {
      const { AuditLog, SqliteStore } = await checkoutAudit(root);
      const path = join(dir, `r${r}-${root === here ? "here" : "other"}.db`);
      const store = new SqliteStore(path);
      const log = new AuditLog(store, "k-ab", key, { batchMax: 256, checkpointEvery: 10_000 });
      const cpu = process.cpuUsage();
      const t = process.hrtime.bigint();
      for (let i = 1; i <= records; i += 256) {
        let last: Promise<void> = Promise.resolve();
        for (let j = i; j < i + 256 && j <= records; j++) last = log.append(noopEntry(j));
        await last;
      }
      const used = process.cpuUsage(cpu);
      const secs = Number(process.hrtime.bigint() - t) / 1e9;
      log.close();
      store.close();
      process.stdout.write(
        `${JSON.stringify({ root, records, cpu_us_per_record: Math.round(((used.user + used.system) / records) * 100) / 100, wall_s: Math.round(secs * 1000) / 1000 })}\n`,
      );
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
