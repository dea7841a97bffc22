import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { encodeIntent, intentHash } from "@kpip/protocol";
import type Database from "better-sqlite3";
import { verifyAudit } from "../src/audit/verify.js";
import { verifyAuditFile } from "../src/audit/verify-parallel.js";
import { SqliteStore } from "../src/store/sqlite.js";
import { fillAuditFile, rewriteRecord, tamperedCopy } from "./audit-fill.js";
import { removeHome } from "./harness.js";

const N = 60_000;

describe("parallel audit verify (worker threads) gives the single pass's answer", () => {
  let dir: string;
  let good: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "kpip-verify-"));
    // A home of segment files (the kernel's layout): the workers read the segments through the index.
    good = join(dir, "good", "kernel.db");
    mkdirSync(join(dir, "good"));
    const intent = encodeIntent({ op: "storage.write", target: "obj://ws/k", args: { data: "v" } });
    const hash = intentHash(intent);
    await fillAuditFile(
      good,
      N,
      (i) => ({
        session: "s",
        persona: "p",
        phase: "complete",
        requestId: i,
        op: "storage.write",
        target: "obj://ws/k",
        intentHash: hash,
        intent,
        status: "SUCCESS",
      }),
      { batchMax: 512, checkpointEvery: 7_000, segments: true },
    );
  });
  after(() => removeHome(dir));

  const both = async (path: string) => {
    const s = new SqliteStore(path);
    const single = verifyAudit(s);
    s.close();
    const parallel = await verifyAuditFile(path, { workers: 3 });
    return { single, parallel };
  };

  it("an intact log: ok, every record and checkpoint", async () => {
    const { single, parallel } = await both(good);
    assert.equal(single.ok, true);
    assert.deepEqual(parallel, single);
    assert.equal(parallel.records, N);
  });

  for (const [name, sql] of [
    ["a modified record mid-range", (db: Database.Database) => rewriteRecord(db, 35000, (r) => (r.persona = "q"))],
    ["a deleted record at a range seam", "DELETE FROM audit WHERE seq = 20001"],
    ["the last record of a range modified", (db: Database.Database) => rewriteRecord(db, 20000, (r) => (r.status = "FAILURE"))],
    [
      "two records swapped across a seam",
      "UPDATE audit SET seq = -1 WHERE seq = 20000; UPDATE audit SET seq = 20000 WHERE seq = 20001; UPDATE audit SET seq = 20001 WHERE seq = -1",
    ],
    ["the tail deleted", `DELETE FROM audit WHERE seq > ${N - 500}`],
    ["a record appended past the end", `INSERT INTO audit SELECT ${N + 1}, hash, record FROM audit WHERE seq = ${N}`],
  ] as const) {
    it(`${name}: the same first bad record`, async () => {
      const { single, parallel } = await both(tamperedCopy(good, dir, name, sql));
      assert.equal(single.ok, false);
      assert.deepEqual(parallel, single);
    });
  }
});
