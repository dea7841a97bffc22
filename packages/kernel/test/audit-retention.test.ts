import assert from "node:assert/strict";
import { createPublicKey, generateKeyPairSync } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { rawPublicKey } from "@kpip/protocol";
import { AuditLog } from "../src/audit/log.js";
import { AuditRetention, RECENT_PRUNED_MS } from "../src/audit/retention.js";
import { verifyAudit } from "../src/audit/verify.js";
import { SqliteStore } from "../src/store/sqlite.js";
import { removeHome, until } from "./harness.js";

const quiet = { info: () => {}, warn: () => {}, error: () => {} };

describe("audit retention prunes in slices, each ending at a signed checkpoint", () => {
  it("every slice leaves a log that verifies from a signature; a pass runs slices until retention is met", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-audit-retention-"));
    const store = new SqliteStore(join(dir, "kernel.db"));
    const key = generateKeyPairSync("ed25519").privateKey;
    try {
      const log = new AuditLog(store, "k1", key, { batchMax: 64, checkpointEvery: 40 });
      for (let i = 0; i < 130; i++) void log.append({ session: "s", persona: "p", phase: "complete", op: "system.health" });
      log.flush();
      // Signed at 40, 80 and 120: with 30 records to keep, the pass may prune through 80, not further.
      assert.deepEqual(
        store.checkpoints().map((c) => c.seq),
        [40, 80, 120],
      );
      const trustedKey = rawPublicKey(createPublicKey(key));
      const removed: number[] = [];
      for (let n = log.pruneSlice(30, 7); n > 0; n = log.pruneSlice(30, 7)) {
        removed.push(n);
        const first = store.firstAuditSeq() as number;
        const v = verifyAudit(store, { trustedKey });
        assert.equal(v.ok, true, `after the slice ending at ${first - 1}: ${JSON.stringify(v.firstBad)}`);
        assert.equal(v.prunedThrough, first - 1, "the log starts right after a signed checkpoint");
        assert.equal(store.checkpoints()[0]?.seq, first - 1, "only that checkpoint is kept below the log");
      }
      assert.ok(
        removed.every((n) => n <= 7),
        `no slice removes more than 7 records: ${removed}`,
      );
      assert.equal(
        removed.reduce((a, b) => a + b, 0),
        80,
        "records 1..80 pruned, through the checkpoint at 80",
      );
      assert.equal(store.firstAuditSeq(), 81);
      assert.equal(log.pruneSlice(30, 7), 0, "nothing more until retention allows it");

      // The runner: a pass of many slices, one a turn, to the newest checkpoint retention allows.
      for (let i = 0; i < 100; i++) void log.append({ session: "s", persona: "p", phase: "complete", op: "system.health" });
      log.flush();
      const r = new AuditRetention(log, 30, quiet, 5);
      r.run();
      assert.equal(r.removed, 5, "the first slice runs at once");
      await new Promise((ok) => setImmediate(ok));
      assert.equal(r.removed, 10, "then one slice a turn: requests get the event loop in between");
      await until(() => r.removed === 120, 30_000, "the pass to the checkpoint at 200");
      assert.equal(store.firstAuditSeq(), 201);
      assert.equal(verifyAudit(store, { trustedKey }).ok, true);
      r.stop();
      for (let i = 0; i < 100; i++) void log.append({ session: "s", persona: "p", phase: "complete", op: "system.health" });
      log.flush();
      r.run();
      assert.equal(r.removed, 120, "a stopped pass prunes nothing");
      log.close();
    } finally {
      store.close();
      removeHome(dir);
    }
  });

  it("warns the operator when a pass prunes acts with effects less than an hour old, naming whose; not for older ones", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-audit-retention-"));
    const store = new SqliteStore(join(dir, "kernel.db"));
    const key = generateKeyPairSync("ed25519").privateKey;
    try {
      const log = new AuditLog(store, "k1", key, { batchMax: 64, checkpointEvery: 20 });
      // mallory's write (an intent and its outcome), then her flood of reads pushing it out.
      void log.append({ session: "s", persona: "mallory", phase: "intent", op: "storage.write", target: "obj://ws/loot" });
      void log.append({ session: "s", persona: "mallory", phase: "outcome", op: "storage.write", target: "obj://ws/loot" });
      for (let i = 0; i < 60; i++) void log.append({ session: "s", persona: "mallory", phase: "complete", op: "storage.read" });
      log.flush();
      const pass = async (now: number) => {
        const warned: { fields: object; msg: string }[] = [];
        const r = new AuditRetention(
          log,
          10,
          {
            ...quiet,
            warn: (fields: unknown, msg?: unknown) => {
              warned.push({ fields: fields as object, msg: String(msg) });
            },
          },
          1024,
          () => now,
        );
        let pruned = 0;
        r.onPruned = (n) => {
          pruned = n;
        };
        r.run();
        await until(() => pruned > 0, 30_000, "the pass's end");
        r.stop();
        return warned;
      };
      // An hour and a minute on: old records, retention doing its job — no warning.
      const later = await pass(Date.now() + RECENT_PRUNED_MS + 60_000);
      assert.deepEqual(later, []);
      for (let i = 0; i < 3; i++)
        void log.append({ session: "s", persona: "eve", phase: "intent", op: "storage.delete", target: `obj://ws/e${i}` });
      for (let i = 0; i < 40; i++) void log.append({ session: "s", persona: "eve", phase: "complete", op: "storage.read" });
      log.flush();
      const now = await pass(Date.now());
      assert.equal(now.length, 1, JSON.stringify(now));
      assert.deepEqual((now[0]?.fields as { personas?: string[] } | undefined)?.personas, ["eve"]);
      assert.match(now[0]?.msg ?? "", /less than an hour old/);
      log.close();
    } finally {
      store.close();
      removeHome(dir);
    }
  });
});
