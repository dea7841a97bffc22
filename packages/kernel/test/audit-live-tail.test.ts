import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { appendFileSync, mkdtempSync, readdirSync, readFileSync, statSync, truncateSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { AuditLog } from "../src/audit/log.js";
import { openAuditReader } from "../src/audit/reader.js";
import { acquireHome } from "../src/home.js";
import { SqliteStore, verifyAudit } from "../src/index.js";
import { removeHome } from "./harness.js";

/*
 * A live home's reader (`kpip audit query|timeline|tail` beside a running kernel) reads the
 * committed records the index step has not put in SQLite yet from the segment files, so what it
 * shows does not depend on when the kernel's quiet rule (audit/log.ts INDEX_IDLE_MS) lets the
 * step run. Here the step is held off (an infinite quiet rule and delay): only a test's explicit
 * indexAudit() runs it.
 */

const rec = (i: number) => ({ session: "s", persona: "p", phase: "complete" as const, requestId: i, op: "bench.noop" });

function liveHome() {
  const home = mkdtempSync(join(tmpdir(), "kpip-live-tail-"));
  // Held as a kernel holds it: the reader reads the live database, not a private copy.
  const release = acquireHome(home);
  const writer = new SqliteStore(join(home, "kernel.db"));
  writer.useAuditSegments(join(home, "audit"), undefined, { presync: false });
  const log = new AuditLog(writer, "k", generateKeyPairSync("ed25519").privateKey, {
    batchMax: 4,
    checkpointEvery: 8,
    indexDelayMs: Number.POSITIVE_INFINITY,
    indexIdleMs: Number.POSITIVE_INFINITY,
  });
  const newestSegment = () => join(home, "audit", readdirSync(join(home, "audit")).sort().at(-1) as string);
  const close = () => {
    log.close();
    writer.close();
    release();
    removeHome(home);
  };
  return { home, writer, log, newestSegment, close };
}

const seqs = (rows: Iterable<{ seq: number }>) => Array.from(rows, (r) => r.seq);
const upTo = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

describe("a live home's reader and the records past the index", () => {
  it("sees every committed record right after the commit, with the index step held off, and the index catching up changes nothing", async () => {
    const h = liveHome();
    let reader: ReturnType<typeof openAuditReader> | undefined;
    try {
      for (let i = 1; i <= 10; i++) await h.log.append(rec(i));
      h.writer.indexAudit?.();
      for (let i = 11; i <= 30; i++) await h.log.append(rec(i));
      assert.equal(h.writer.auditUnindexed, 20, "20 committed records wait for the index step");
      reader = openAuditReader(join(h.home, "kernel.db"));
      assert.equal(reader.snapshot, false, "read beside the kernel");
      assert.equal(reader.headSeq(), 30);
      assert.equal(reader.countAudit(), 30);
      assert.deepEqual(seqs(reader.records()), upTo(30));
      assert.deepEqual(seqs(reader.records({ newest: true })), upTo(30).reverse());
      assert.equal(reader.record(30)?.requestId, 30);
      assert.deepEqual(seqs(reader.scanAudit(25, 100)), [25, 26, 27, 28, 29, 30]);
      // The tail's checkpoints (every 8 records) are the reader's too, and verify checks the whole chain.
      assert.deepEqual(
        reader.checkpoints().map((c) => c.seq),
        [8, 16, 24],
      );
      const v = verifyAudit(reader);
      assert.equal(v.ok, true, v.firstBad?.reason);
      assert.equal(v.records, 30);
      assert.equal(v.checkpoints, 3);
      // Commits made while it is open are seen at the next look at the head (`audit tail --follow`).
      for (let i = 31; i <= 35; i++) await h.log.append(rec(i));
      assert.equal(reader.headSeq(), 35);
      assert.deepEqual(seqs(reader.scanAudit(31, 100)), [31, 32, 33, 34, 35]);
      // The index step covers them now: nothing shown twice, nothing lost.
      h.writer.indexAudit?.();
      assert.equal(h.writer.auditUnindexed, 0);
      assert.equal(reader.countAudit(), 35);
      assert.deepEqual(seqs(reader.records()), upTo(35));
      assert.deepEqual(
        reader.checkpoints().map((c) => c.seq),
        [8, 16, 24, 32],
      );
      assert.equal(verifyAudit(reader).records, 35);
    } finally {
      reader?.close();
      h.close();
    }
  });

  it("does not show a torn last batch (a kill mid-write), and reads the records before it", async () => {
    const h = liveHome();
    let reader: ReturnType<typeof openAuditReader> | undefined;
    try {
      for (let i = 1; i <= 6; i++) await h.log.append(rec(i));
      h.writer.indexAudit?.();
      for (let i = 7; i <= 11; i++) await h.log.append(rec(i));
      const seg = h.newestSegment();
      const before = statSync(seg).size;
      await h.log.append(rec(12));
      const after = statSync(seg).size;
      assert.ok(after > before);
      // A kill in the middle of the last batch's write: the first half of its bytes are in the file.
      truncateSync(seg, before + Math.floor((after - before) / 2));
      reader = openAuditReader(join(h.home, "kernel.db"));
      assert.equal(reader.headSeq(), 11, "the torn batch's record is not shown");
      assert.equal(reader.countAudit(), 11);
      assert.deepEqual(seqs(reader.records()), upTo(11));
      assert.equal(reader.record(12), undefined);
      const v = verifyAudit(reader);
      assert.equal(v.ok, true, v.firstBad?.reason);
      assert.equal(v.records, 11);
      // A torn batch past a whole one (the head of a batch, its body cut short): the same.
      const bytes = readFileSync(seg);
      appendFileSync(seg, bytes.subarray(before, before + 20));
      assert.equal(reader.headSeq(), 11);
      assert.deepEqual(seqs(reader.records({ newest: true })), upTo(11).reverse());
    } finally {
      reader?.close();
      h.close();
    }
  });

  it("refuses a tail that does not continue the chain of the index, as a stopped home's copy does", async () => {
    const h = liveHome();
    try {
      for (let i = 1; i <= 4; i++) await h.log.append(rec(i));
      h.writer.indexAudit?.();
      const seg = h.newestSegment();
      const before = statSync(seg).size;
      for (let i = 5; i <= 8; i++) await h.log.append(rec(i));
      // The tail's batches written twice: record 5 follows record 8.
      appendFileSync(seg, readFileSync(seg).subarray(before));
      assert.throws(() => openAuditReader(join(h.home, "kernel.db")), { name: "HomeReadError" });
    } finally {
      h.close();
    }
  });
});
