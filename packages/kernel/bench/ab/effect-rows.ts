/**
 * `node packages/kernel/dist/bench/ab/effect-rows.js <checkout>... [--records N] [--rounds N] [--batch B]`:
 * the SQLite side of N ops with effects, alone, for each named (built) checkout and this one,
 * interleaved, each on a fresh home with audit segments: B intent records committed, B effect
 * transactions each writing its dedupe answer (naming its intent record where the checkout has
 * those columns), B outcome records committed (naming the answer they clear where the checkout
 * does that), then the index step — as at B requests in flight. No object row is written: what
 * differs between the checkouts is the dedupe row, its partial index and the clearing. One
 * JSON line per run: CPU per op (process.cpuUsage, steadier than wall time on a shared machine),
 * the dedupe rows still naming an intent at the end (what a kill then would leave a start to
 * read), how long the start's read of them (effectAnswersSince) took, and the whole search a
 * start after a kill would make then (recoverOutcomes: that read, the log's records from before
 * the oldest of them, no record to write), `start_ms`, and its process CPU, `start_cpu_ms` (steadier on a
 * busy machine).
 */
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import type { AuditRow } from "../../src/store/types.js";
import { abArgs, checkoutAudit, noopEntry } from "./common.js";

const { other, here, records, rounds } = abArgs("effect-rows.js", { records: 50_000, rounds: 3 });
const args = process.argv.slice(2);
const batchAt = args.indexOf("--batch");
const batch = batchAt >= 0 ? Number(args[batchAt + 1]) : 64;
const others = args.filter((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
const roots = [...(others.length ? others : [other]).map((o) => resolve(o)), here];
const key = generateKeyPairSync("ed25519").privateKey;
const dir = mkdtempSync(join(tmpdir(), "kpip-ab-effects-"));
const response = randomBytes(24);
const hash = randomBytes(32);

/** A request's record as the pipeline hands it to the log (appendRow fills in seq, time, kernel, chain). */
const row = (i: number, phase: "intent" | "outcome"): AuditRow =>
  ({
    seq: 0,
    time: 0,
    kernel: "",
    requestId: null,
    op: null,
    target: null,
    intentHash: null,
    intent: null,
    caps: null,
    status: null,
    errorClass: null,
    message: null,
    durationUs: null,
    traceparent: null,
    execution: null,
    domain: null,
    measurements: null,
    detail: null,
    ...noopEntry(i),
    phase,
    ...(phase === "outcome" ? { intent: null } : {}),
    prevHash: new Uint8Array(0),
    hash: new Uint8Array(0),
  }) as AuditRow;

try {
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < roots.length; k++) {
      const root = roots[(r + k) % roots.length] as string;
      const { AuditLog, SqliteStore } = await checkoutAudit(root);
      const home = join(dir, `r${r}-${k}`);
      mkdirSync(home);
      const store = new SqliteStore(join(home, "kernel.db"));
      store.useAuditSegments(join(home, "audit"));
      const log = new AuditLog(store, "k-ab", key, { batchMax: 1024, checkpointEvery: 10_000 });
      const cpu = process.cpuUsage();
      for (let i = 0; i < records; i += batch) {
        const n = Math.min(batch, records - i);
        const seqs: number[] = [];
        let last: Promise<void> = Promise.resolve();
        for (let j = 0; j < n; j++) {
          last = log.appendRow(row(i + j, "intent"));
          seqs.push(log.headSeq);
        }
        await last;
        for (let j = 0; j < n; j++) {
          const at = { intentSeq: seqs[j] as number, afterSeq: log.headSeq };
          store.transaction(() => store.putDedupe({ key: `admin:c:${i + j}`, hash, response, expires: 9e15, ...at }));
        }
        for (let j = 0; j < n; j++) {
          // A checkout before the clearing takes two arguments and ignores the third.
          const recorded = { key: `admin:c:${i + j}`, intentSeq: seqs[j] as number };
          last = (log.appendRow as (r: AuditRow, d: undefined, x: typeof recorded) => Promise<void>)(
            row(i + j, "outcome"),
            undefined,
            recorded,
          );
        }
        await last;
        store.indexAudit?.();
      }
      const used = process.cpuUsage(cpu);
      // What a kill now would leave a start to read (a checkout before the columns has no such read).
      let recovery: { rows: number; ms: number; start_ms: number; start_cpu_ms: number } | null = null;
      if (typeof store.effectAnswersSince === "function") {
        const rows = (store.db.prepare("SELECT count(*) AS n FROM dedupe WHERE intent_seq IS NOT NULL").get() as { n: number }).n;
        const t = process.hrtime.bigint();
        store.effectAnswersSince(Math.max(0, log.headSeq - 65_536));
        const ms = Math.round(Number(process.hrtime.bigint() - t) / 1e4) / 100;
        const { recoverOutcomes } = (await import(
          pathToFileURL(join(root, "packages/kernel/dist/src/audit/recover-outcomes.js")).href
        )) as typeof import("../../src/audit/recover-outcomes.js");
        const t1 = process.hrtime.bigint();
        const c1 = process.cpuUsage();
        const r = await recoverOutcomes(store, log, log.headSeq);
        const c = process.cpuUsage(c1);
        if (r.recorded || r.failed) throw new Error(`the search wrote ${r.recorded} records: every outcome is on the log`);
        recovery = {
          rows,
          ms,
          start_ms: Math.round(Number(process.hrtime.bigint() - t1) / 1e4) / 100,
          start_cpu_ms: Math.round((c.user + c.system) / 10) / 100,
        };
      }
      log.close();
      store.close();
      process.stdout.write(
        `${JSON.stringify({ root, records, batch, cpu_us_per_op: Math.round(((used.user + used.system) / records) * 100) / 100, recovery })}\n`,
      );
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
