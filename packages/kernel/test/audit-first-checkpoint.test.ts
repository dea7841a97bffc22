import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { AuditLog, type AuditLogOptions } from "../src/audit/log.js";
import { HOME_FILES } from "../src/home.js";
import { FIRST_CHECKPOINT_AFTER } from "../src/kernel/storage.js";
import { SqliteStore } from "../src/store/sqlite.js";
import { removeHome, startKernel } from "./harness.js";

/*
 * The kernel signs one checkpoint early in each process (FIRST_CHECKPOINT_AFTER records after it
 * opens the log), so V8 optimizes the audit commit path with a checkpoint's branch and shapes in
 * its feedback: the first checkpoint by count at record 10,000 deoptimized it (BENCHMARKS.md,
 * round twenty-six). Counted on from there, no run of records is ever longer unsigned.
 */

const key = generateKeyPairSync("ed25519").privateKey;

async function appendN(log: AuditLog, n: number): Promise<void> {
  const all: Promise<void>[] = [];
  for (let i = 0; i < n; i++) all.push(log.append({ session: "s", persona: "admin", phase: "complete", op: "bench.noop" }));
  await Promise.all(all);
}

describe("the audit log's first checkpoint", () => {
  it("signs one firstCheckpointAfter records after the log opened, then every checkpointEvery from it", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-first-cp-"));
    const s = new SqliteStore(join(home, "kernel.db"));
    s.useAuditSegments(join(home, "audit"));
    const opts: AuditLogOptions = { batchMax: 512, checkpointEvery: 20, firstCheckpointAfter: 5 };
    try {
      let log = new AuditLog(s, "k-first", key, opts);
      await appendN(log, 50);
      assert.deepEqual(
        s.checkpoints().map((c) => c.seq),
        [5, 25, 45],
      );
      log.close(); // signs a final checkpoint at 50
      // Another process: its own early checkpoint, counted from where it opened the log.
      log = new AuditLog(s, "k-first", key, opts);
      await appendN(log, 30);
      assert.deepEqual(
        s.checkpoints().map((c) => c.seq),
        [5, 25, 45, 50, 55, 75],
      );
      log.close();
    } finally {
      s.close();
      removeHome(home);
    }
  });

  it("without the option, or with one not below checkpointEvery, checkpoints come by count alone", async () => {
    for (const firstCheckpointAfter of [undefined, 20, 30]) {
      const home = mkdtempSync(join(tmpdir(), "kpip-first-cp-"));
      const s = new SqliteStore(join(home, "kernel.db"));
      s.useAuditSegments(join(home, "audit"));
      try {
        const log = new AuditLog(s, "k-first", key, { batchMax: 512, checkpointEvery: 20, firstCheckpointAfter });
        await appendN(log, 45);
        assert.deepEqual(
          s.checkpoints().map((c) => c.seq),
          [20, 40],
          `firstCheckpointAfter ${firstCheckpointAfter}`,
        );
        log.close();
      } finally {
        s.close();
        removeHome(home);
      }
    }
  });

  it("a kernel signs its first checkpoint FIRST_CHECKPOINT_AFTER records after it starts, the next by count from there", async () => {
    const t = await startKernel({ auditCheckpointEvery: 1000 });
    const home = t.home;
    try {
      const admin = await t.admin();
      for (let i = 0; i < FIRST_CHECKPOINT_AFTER + 20; i++) await admin.call("system.health", "kernel://");
      await t.stop();
      const store = new SqliteStore(join(home, HOME_FILES.database));
      try {
        const seqs = store.checkpoints().map((c) => c.seq);
        const last = store.lastAudit()?.seq ?? 0;
        assert.ok(last < FIRST_CHECKPOINT_AFTER + 1000, `records: ${last}`);
        // The early one, and the stop's final one over the last record.
        assert.deepEqual(seqs, [FIRST_CHECKPOINT_AFTER, last]);
      } finally {
        store.close();
      }
    } finally {
      removeHome(home);
    }
  });
});
