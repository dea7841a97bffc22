import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { AuditLog } from "../src/audit/log.js";
import { SqliteStore } from "../src/store/sqlite.js";
import { removeHome } from "./harness.js";

/* A turn that reads a backlog (after a GC pause, or the thread descheduled) must not hold every answer of it until its end. */

describe("the audit log's batch age", () => {
  it("commits a batch within the turn once its first record has waited a millisecond, and not before", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-flush-age-"));
    const s = new SqliteStore(join(home, "kernel.db"));
    s.useAuditSegments(join(home, "audit"));
    const log = new AuditLog(s, "k-age", generateKeyPairSync("ed25519").privateKey, { batchMax: 512, checkpointEvery: 10_000 });
    try {
      const rec = (i: number) => ({
        session: "s",
        persona: "admin",
        phase: "complete" as const,
        requestId: i,
        op: "system.health",
      });
      const settled: number[] = [];
      const append = (i: number) => void log.append(rec(i)).then(() => settled.push(i));
      // A young batch waits for the turn's end, however many records it takes (below batchMax).
      const t0 = performance.now();
      for (let i = 1; i <= 8; i++) append(i);
      const young = performance.now() - t0 < 1;
      if (young) assert.equal(log.committedRecords, 0, "a batch younger than a millisecond waits for the check phase");
      await new Promise((r) => setImmediate(r));
      assert.equal(log.committedRecords, 8);
      // An old one commits at the append that finds it so, in this same synchronous stretch.
      append(9);
      const started = performance.now();
      while (performance.now() - started < 1.5) {
        // the turn goes on reading requests: the batch's first record ages
      }
      for (let i = 10; i <= 12; i++) append(i);
      assert.equal(log.committedRecords, 12, "the aged batch committed before the turn ended");
      await Promise.resolve();
      assert.deepEqual(settled, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], "and its appends resolved on this turn's microtasks");
      // What comes after starts a batch of its own, committed on the check phase as before.
      append(13);
      assert.equal(log.committedRecords, 12);
      await new Promise((r) => setImmediate(r));
      assert.equal(log.committedRecords, 13);
    } finally {
      log.close();
      s.close();
      removeHome(home);
    }
  });
});
