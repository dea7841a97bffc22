import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { closeSync, ftruncateSync, mkdtempSync, openSync, readdirSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { AuditLog } from "../src/audit/log.js";
import { headOf } from "../src/audit/record-decode.js";
import { SqliteStore } from "../src/store/sqlite.js";
import type { RecordHead } from "../src/store/types.js";
import { removeHome } from "./harness.js";

/* A start after a kill reads its window of the log by record heads (recover-outcomes.ts): adjacent spans with one read. */

/** The heads of records `from` through `to` as every other reader decodes them (scanAudit). */
function scannedHeads(s: SqliteStore, from: number, to: number): RecordHead[] {
  const out: RecordHead[] = [];
  for (let seq = from; seq <= to; ) {
    const rows = s.scanAudit(seq, 1000);
    if (rows.length === 0) break;
    for (const r of rows) if (r.seq <= to) out.push(headOf(r));
    seq = (rows.at(-1) as { seq: number }).seq + 1;
  }
  return out;
}

describe("the log read by record heads", () => {
  it("auditHeads gives each record's head as scanAudit decodes it: over many small spans, past a damaged batch, and a segment cut short", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-heads-"));
    const dir = join(home, "audit");
    const s = new SqliteStore(join(home, "kernel.db"));
    s.useAuditSegments(dir);
    const log = new AuditLog(s, "k-heads", generateKeyPairSync("ed25519").privateKey, { batchMax: 64, checkpointEvery: 10_000 });
    try {
      // Two records a span, as a kernel at one request in flight indexes them.
      for (let i = 1; i <= 300; i++) {
        const at = { session: `s${i % 3}`, persona: "admin", requestId: i, op: "storage.write", target: `kernel://o/${i}` };
        log.append({ ...at, phase: "intent" });
        await log.append({ ...at, phase: "outcome", status: "SUCCESS" });
        s.indexAudit?.();
      }
      const head = log.headSeq;
      assert.equal((s.db.prepare("SELECT count(*) AS n FROM audit_batches").get() as { n: number }).n, 300);
      const heads = (from: number, to: number) => {
        const out: RecordHead[] = [];
        s.auditHeads(from, to, (h) => out.push(h));
        return out;
      };
      const scanned = (from: number, to: number) => scannedHeads(s, from, to);
      assert.equal(heads(1, head).length, head);
      assert.deepEqual(heads(1, head), scanned(1, head));
      assert.deepEqual(
        heads(299, 300).map((h) => [h.phase, h.session, h.persona, h.requestId]),
        [
          ["intent", "s0", "admin", 150],
          ["outcome", "s0", "admin", 150],
        ],
      );
      assert.deepEqual(heads(101, 350), scanned(101, 350));
      assert.deepEqual(heads(7, 7), scanned(7, 7));

      const seg = join(dir, readdirSync(dir).find((f) => f.endsWith(".seg")) as string);
      const spanAt = (seq: number) =>
        s.db.prepare("SELECT offset FROM audit_batches WHERE first_seq <= ? ORDER BY first_seq DESC LIMIT 1").get(seq) as {
          offset: number;
        };
      const fd = openSync(seg, "r+");
      try {
        // A batch in the middle no longer one (its magic changed): its span shows nothing, the others all.
        writeSync(fd, Buffer.of(0), 0, 1, spanAt(201).offset);
        const damaged = heads(1, head);
        assert.ok(damaged.length < head && damaged.some((h) => h.seq > 202), `${damaged.length} records`);
        assert.deepEqual(damaged, scanned(1, head));
        // Cut short: the spans past the cut cannot be read, those before it can, as span by span.
        ftruncateSync(fd, spanAt(451).offset + 5);
        const cut = heads(1, head);
        assert.ok(cut.length < damaged.length && cut.some((h) => h.seq > 400), `${cut.length} records`);
        assert.deepEqual(cut, scanned(1, head));
      } finally {
        closeSync(fd);
      }
    } finally {
      log.close();
      s.close();
      removeHome(home);
    }
  });

  it("auditHeads on a home whose audit is still its table: each record's head as scanAudit decodes it", async () => {
    const s = new SqliteStore(":memory:");
    const log = new AuditLog(s, "k-heads", generateKeyPairSync("ed25519").privateKey, { batchMax: 64, checkpointEvery: 10_000 });
    try {
      for (let i = 1; i <= 1500; i++)
        log.append({ session: `s${i % 7}`, persona: "p", phase: i % 2 ? "intent" : "outcome", requestId: i >> 1 });
      await log.append({ session: "s", persona: "p", phase: "kernel", op: "kernel.stop" });
      const out: RecordHead[] = [];
      s.auditHeads(2, 1400, (h) => out.push(h));
      assert.equal(out.length, 1399);
      assert.deepEqual(out, scannedHeads(s, 2, 1400));
    } finally {
      log.close();
      s.close();
    }
  });
});
