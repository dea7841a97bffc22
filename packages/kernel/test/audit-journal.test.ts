import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import nodeFs, {
  appendFileSync,
  closeSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { sha256 } from "@kpip/protocol";
import Database from "better-sqlite3";
import fc from "fast-check";
import { pino } from "pino";
import { AuditLog } from "../src/audit/log.js";
import { GENESIS_HASH, recordBytes } from "../src/audit/record.js";
import { MAX_RECORD_BYTES } from "../src/audit/record-size.js";
import { verifyAuditFile } from "../src/audit/verify-parallel.js";
import { HomeReadError, Kernel, openAuditReader, SqliteStore, verifyAudit } from "../src/index.js";
import {
  AuditJournal,
  AuditJournalError,
  decodeBatches,
  encodeBatch,
  type JournalBatch,
  type JournalRecord,
  unindexedBatches,
} from "../src/store/audit-journal.js";
import { parseSpan, SegmentWriter, segmentName } from "../src/store/audit-segments.js";
import { MAX_UNINDEXED_ROWS, SEGMENTS_SENTINEL } from "../src/store/sqlite/audit.js";
import type { AuditCheckpoint, AuditRow, DedupeRow } from "../src/store/types.js";
import { unsegment } from "./audit-fill.js";
import { connectAdminOf, removeHome, spawnReady, startKernel } from "./harness.js";

/** `n` records of a real chain from `seq` on, after `prev`: bytes as the log encodes them, hashes over them. */
function chain(n: number, seq = 1, prev: Uint8Array = GENESIS_HASH): JournalRecord[] {
  const out: JournalRecord[] = [];
  for (let i = 0; i < n; i++) {
    const row = {
      seq: seq + i,
      time: 1_700_000_000_000 + i,
      kernel: "k",
      session: "s",
      persona: "p",
      phase: "complete",
      requestId: i,
      op: "bench.noop",
      target: "kernel://",
      intentHash: null,
      intent: null,
      caps: null,
      status: "SUCCESS",
      errorClass: null,
      message: null,
      durationUs: 3,
      traceparent: null,
      execution: null,
      domain: null,
      measurements: null,
      detail: null,
      prevHash: prev,
      hash: new Uint8Array(0),
    } as AuditRow;
    const record = recordBytes(row);
    const hash = sha256(record);
    out.push({ seq: row.seq, hash, record });
    prev = hash;
  }
  return out;
}

const dedupeRow = (i: number): DedupeRow => ({
  key: `persona/é${i}`,
  hash: randomBytes(32),
  response: randomBytes(5 + i),
  expires: 1_700_000_000_000 + i,
});
const checkpointOf = (r: JournalRecord): AuditCheckpoint => ({
  seq: r.seq,
  hash: r.hash,
  time: 1_700_000_000_000,
  kernel: "kernel-ü",
  publicKey: randomBytes(32),
  signature: randomBytes(64),
});

/** Batches cut from one chain of `sizes` records each, with dedupe rows and checkpoints where asked. */
function batches(sizes: number[], extras: boolean[] = []): JournalBatch[] {
  const all = chain(sizes.reduce((a, b) => a + b, 0));
  let at = 0;
  return sizes.map((n, i) => {
    const rows = all.slice(at, at + n);
    at += n;
    const more = extras[i] === true;
    return {
      rows,
      dedupe: more ? [dedupeRow(i), dedupeRow(i + 1)] : [],
      journalUpTo: more ? i + 1 : 0,
      checkpoints: more ? [checkpointOf(rows.at(-1) as JournalRecord)] : [],
    };
  });
}

/** An audit log on `s` (a fresh signing key) and a function appending one session record to it. */
function logOn(s: SqliteStore, opts: { batchMax: number; checkpointEvery: number }) {
  const log = new AuditLog(s, "k", generateKeyPairSync("ed25519").privateKey, opts);
  return { log, rec: () => log.append({ session: "s", persona: "p", phase: "session" }) };
}

const bytesOf = (bs: JournalBatch[]) => Buffer.concat(bs.map((b) => encodeBatch(b).buf.subarray(0, encodeBatch(b).length)));
const plain = (bs: JournalBatch[]) => JSON.parse(JSON.stringify(bs, (_k, v) => (v instanceof Uint8Array ? [...v] : v)));

describe("the audit journal's batches", () => {
  it("decode to exactly what was encoded, for any mix of records, dedupe rows, journal ids and checkpoints", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 6 }),
        fc.array(fc.boolean()),
        (sizes, extras) => {
          const bs = batches(sizes, extras);
          assert.deepEqual(plain(decodeBatches(bytesOf(bs))), plain(bs));
        },
      ),
      { numRuns: 60 },
    );
  });

  it("a journal cut anywhere (a torn last write) decodes to the whole batches before the cut, never to a part of one", () => {
    const bs = batches([3, 1, 7], [true, false, true]);
    const data = bytesOf(bs);
    const ends: number[] = [];
    let at = 0;
    for (const b of bs) {
      at += encodeBatch(b).length;
      ends.push(at);
    }
    for (let cut = 0; cut <= data.length; cut++) {
      const got = decodeBatches(data.subarray(0, cut));
      assert.equal(got.length, ends.filter((e) => e <= cut).length, `cut at ${cut}`);
    }
  });

  it("refuses bytes that are not batches, a damaged batch before the end, and a record that does not hash to its hash", () => {
    const bs = batches([2, 2]);
    const data = bytesOf(bs);
    const first = encodeBatch(bs[0] as JournalBatch).length;
    const damaged = (at: number) => {
      const d = Buffer.from(data);
      d[at] = (d[at] as number) ^ 0xff;
      return d;
    };
    assert.throws(() => decodeBatches(damaged(0)), AuditJournalError); // the magic
    assert.throws(() => decodeBatches(damaged(first - 1)), /damaged/); // the first batch's tail
    assert.throws(() => decodeBatches(damaged(first - 10)), /does not hash|not a record/); // inside a record
    assert.throws(() => decodeBatches(Buffer.concat([data, Buffer.from("garbage, garbage")])), AuditJournalError);
    // A body longer than its fields: head and tail agree, the fields do not fill it.
    const b = Buffer.from(encodeBatch(bs[0] as JournalBatch).buf.subarray(0, first));
    const padded = Buffer.concat([b.subarray(0, first - 4), Buffer.alloc(4), Buffer.alloc(4)]);
    const body = first - 16 + 4;
    padded.writeUInt32LE(body, 4);
    padded.writeUInt32LE(~body >>> 0, 8);
    padded.writeUInt32LE((body ^ 0x4b504a31) >>> 0, padded.length - 4);
    assert.throws(() => decodeBatches(padded), /past its fields/);
    // A length changed to run past the end of the file: damage, not a torn last write that drops what follows.
    const longer = Buffer.from(data);
    longer.writeUInt32LE(data.length * 2, 4);
    assert.throws(() => decodeBatches(longer), /length does not match its check/);
  });

  it("what is not yet indexed: batches past the database's head, checked to continue its chain", () => {
    const bs = batches([3, 3, 3]);
    const data = bytesOf(bs);
    const rows = bs.flatMap((b) => b.rows);
    const head = (seq: number) => ({ seq, hash: (rows[seq - 1] as JournalRecord).hash });
    assert.equal(unindexedBatches(data, undefined).length, 3);
    assert.deepEqual(
      unindexedBatches(data, head(4)).flatMap((b) => b.rows.map((r) => r.seq)),
      [5, 6, 7, 8, 9],
    );
    assert.deepEqual(unindexedBatches(data, head(9)), []);
    // A database whose head is another chain's record 4: the journal does not continue it.
    assert.throws(() => unindexedBatches(data, { seq: 4, hash: randomBytes(32) }), /does not continue the chain/);
    // A database behind the journal's first record: records in between are missing.
    assert.throws(() => unindexedBatches(bytesOf(bs.slice(1)), head(1)), /skips from record 1 to 4/);
  });
});

/** The records the index names (sum of its spans). */
const indexed = (db: Database.Database) =>
  (db.prepare("SELECT coalesce(sum(last_seq - first_seq + 1), 0) AS n FROM audit_batches").get() as { n: number }).n;

/** A store in a fresh directory with its segments (`audit/` beside it) open; closed and removed after `fn`. */
async function withSegmentStore(fn: (s: SqliteStore, dir: string) => void | Promise<void>): Promise<void> {
  const home = mkdtempSync(join(tmpdir(), "kpip-seg-"));
  const dir = join(home, "audit");
  const s = new SqliteStore(join(home, "kernel.db"));
  try {
    s.useAuditSegments(dir);
    await fn(s, dir);
  } finally {
    s.close();
    removeHome(home);
  }
}

/** The one segment file of `dir`. */
const onlySegment = (dir: string) => {
  const segs = readdirSync(dir).filter((f) => f.endsWith(".seg"));
  assert.equal(segs.length, 1, segs.join(","));
  return join(dir, segs[0] as string);
};

describe("the audit segments in front of the index", () => {
  it("a commit is in the segment at once and in the index after indexAudit; every read indexes first; close keeps the segment", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-seg-"));
    const dir = join(home, "audit");
    const s = new SqliteStore(join(home, "k.db"));
    try {
      assert.deepEqual(s.useAuditSegments(dir), { recovered: 0, migrated: 0 });
      const other = new Database(join(home, "k.db"), { readonly: true });
      const inIndex = () => indexed(other);
      const [b1, b2] = batches([2, 3], [false, true]) as [JournalBatch, JournalBatch];
      s.appendAudit(b1.rows as AuditRow[]);
      // A dedupe lookup (every new request with effects makes one) indexes nothing while no dedupe row waits.
      assert.equal(s.lookupDedupe((b2.dedupe[0] as DedupeRow).key, 0), undefined);
      assert.equal(inIndex(), 0);
      s.appendAudit(b2.rows as AuditRow[], [...b2.dedupe], 0, [...b2.checkpoints]);
      assert.equal(inIndex(), 0, "nothing in the index before the index step");
      assert.equal(s.auditUnindexed, 5);
      assert.equal(decodeBatches(readFileSync(onlySegment(dir))).length, 2);
      // With one waiting it indexes first, so the answer recorded there is found.
      assert.deepEqual(s.lookupDedupe((b2.dedupe[0] as DedupeRow).key, 0)?.response, (b2.dedupe[0] as DedupeRow).response);
      assert.equal(inIndex(), 5);
      assert.equal(s.auditUnindexed, 0);
      assert.deepEqual(
        other.prepare("SELECT seq, hex(hash) AS hash, CAST(record AS TEXT) AS record FROM audit").all(),
        [{ seq: 0, hash: "00".repeat(32), record: SEGMENTS_SENTINEL }],
        "SQLite holds no record bytes: the table keeps only the sentinel an older kpip refuses to start on",
      );
      s.appendAudit(chain(1, 6, (b2.rows.at(-1) as JournalRecord).hash) as AuditRow[]);
      // Any read of the records indexes what waits.
      assert.equal(s.countAudit(), 6);
      assert.equal(inIndex(), 6);
      other.close();
      s.close();
      assert.equal(decodeBatches(readFileSync(onlySegment(dir))).length, 3, "a clean stop keeps the segment");
      assert.equal(statSync(onlySegment(dir)).mode & 0o777, 0o600);
    } finally {
      removeHome(home);
    }
  });

  it("the index step writes an answer kept with its outcome record at its batch's last record, also when a start indexes a killed kernel's tail; an effect's answer keeps its own", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-seg-"));
    const dir = join(home, "audit");
    const at = (db: Database.Database, key: string) =>
      db.prepare("SELECT intent_seq, after_seq FROM dedupe WHERE key = ?").get(key) as
        | { intent_seq: number | null; after_seq: number | null }
        | undefined;
    try {
      const rows = chain(7);
      const s = new SqliteStore(join(home, "k.db"));
      s.useAuditSegments(dir);
      s.putDedupe({ ...dedupeRow(0), key: "effect", intentSeq: 1, afterSeq: 2 });
      s.appendAudit(rows.slice(0, 3) as AuditRow[], [{ ...dedupeRow(1), key: "kept-1" }]);
      s.appendAudit(rows.slice(3, 5) as AuditRow[], [{ ...dedupeRow(2), key: "kept-2" }]);
      s.indexAudit?.();
      assert.deepEqual(at(s.db, "kept-1"), { intent_seq: null, after_seq: 3 });
      assert.deepEqual(at(s.db, "kept-2"), { intent_seq: null, after_seq: 5 });
      assert.deepEqual(at(s.db, "effect"), { intent_seq: 1, after_seq: 2 });
      // Appended, not indexed, and the store is left as a kill leaves it (no close).
      s.appendAudit(rows.slice(5, 7) as AuditRow[], [{ ...dedupeRow(3), key: "kept-3" }]);
      const copy = mkdtempSync(join(tmpdir(), "kpip-seg-"));
      try {
        s.db.exec(`VACUUM INTO '${join(copy, "k.db")}'`);
        cpSync(dir, join(copy, "audit"), { recursive: true });
        const again = new SqliteStore(join(copy, "k.db"));
        try {
          assert.equal(at(again.db, "kept-3"), undefined);
          assert.deepEqual(again.useAuditSegments(join(copy, "audit")), { recovered: 2, migrated: 0 });
          assert.deepEqual(at(again.db, "kept-3"), { intent_seq: null, after_seq: 7 });
        } finally {
          again.close();
        }
      } finally {
        removeHome(copy);
      }
      s.close();
    } finally {
      removeHome(home);
    }
  });

  it("the next open indexes what a killed kernel appended past the index (and a stopped home's audit reader reads it without changing the home)", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-seg-"));
    const dir = join(home, "audit");
    try {
      const bs = batches([4, 2, 3], [true, false, false]);
      const rows = bs.flatMap((b) => b.rows);
      const s = new SqliteStore(join(home, "kernel.db"));
      s.useAuditSegments(dir);
      s.appendAudit(rows.slice(0, 4) as AuditRow[]); // the first batch reached the index before the kill
      s.close();
      // The next two appended and never indexed: a kernel killed after answering them.
      appendFileSync(onlySegment(dir), bytesOf(bs.slice(1)));
      const before = readFileSync(onlySegment(dir));
      const reader = openAuditReader(join(home, "kernel.db"));
      try {
        assert.equal(reader.headSeq(), 9);
        assert.equal(reader.countAudit(), 9);
        assert.deepEqual(readFileSync(onlySegment(dir)), before, "the reader changed the home's segment");
      } finally {
        reader.close();
      }
      const again = new SqliteStore(join(home, "kernel.db"));
      try {
        assert.deepEqual(again.useAuditSegments(dir), { recovered: 5, migrated: 0 });
        assert.equal(again.countAudit(), 9);
        assert.deepEqual(
          again.scanAudit(1, 100).map((r) => Buffer.from(r.hash).toString("hex")),
          rows.map((r) => Buffer.from(r.hash).toString("hex")),
        );
        assert.equal(verifyAudit(again).ok, true);
      } finally {
        again.close();
      }
    } finally {
      removeHome(home);
    }
  });

  it("a torn last append (never answered) is cut at the next open, and the chain goes on after the whole batches", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-seg-"));
    const dir = join(home, "audit");
    try {
      const rows = chain(6);
      const s = new SqliteStore(join(home, "kernel.db"));
      s.useAuditSegments(dir);
      s.appendAudit(rows.slice(0, 3) as AuditRow[]);
      s.close();
      const torn = bytesOf([{ rows: rows.slice(3), dedupe: [], journalUpTo: 0, checkpoints: [] }]);
      const size = statSync(onlySegment(dir)).size;
      appendFileSync(onlySegment(dir), torn.subarray(0, torn.length - 7));
      const again = new SqliteStore(join(home, "kernel.db"));
      try {
        assert.deepEqual(again.useAuditSegments(dir), { recovered: 0, migrated: 0 });
        assert.equal(statSync(onlySegment(dir)).size, size, "the torn bytes were cut");
        again.appendAudit(rows.slice(3) as AuditRow[]);
        assert.equal(again.countAudit(), 6);
        assert.equal(verifyAudit(again).ok, true);
      } finally {
        again.close();
      }
    } finally {
      removeHome(home);
    }
  });

  it("an index ahead of the newest segment (an OS crash before its sync) is cut back to the whole batches there; a segment cut short elsewhere stops the open", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-seg-"));
    const dir = join(home, "audit");
    try {
      const rows = chain(9);
      const s = new SqliteStore(join(home, "kernel.db"));
      s.useAuditSegments(dir);
      s.appendAudit(rows.slice(0, 3) as AuditRow[]);
      s.indexAudit?.();
      const whole = statSync(onlySegment(dir)).size;
      s.appendAudit(rows.slice(3, 5) as AuditRow[]);
      s.indexAudit?.();
      s.appendAudit(rows.slice(5) as AuditRow[]);
      s.addCheckpoint({
        seq: 9,
        hash: (rows[8] as JournalRecord).hash,
        time: 1,
        kernel: "k",
        publicKey: randomBytes(32),
        signature: randomBytes(64),
      });
      s.close();
      // The page cache lost everything after the first batch and a few bytes of the second.
      truncateSync(onlySegment(dir), whole + 10);
      const again = new SqliteStore(join(home, "kernel.db"));
      try {
        assert.deepEqual(again.useAuditSegments(dir), {
          recovered: 0,
          migrated: 0,
          lost: { records: 6, from: 4, to: 9, checkpoints: 1 },
        });
        assert.equal(again.countAudit(), 3);
        assert.equal(statSync(onlySegment(dir)).size, whole, "the torn bytes cut");
        assert.deepEqual(again.checkpoints(), [], "no checkpoint names a record the log lost");
        again.appendAudit(rows.slice(3) as AuditRow[]);
        assert.equal(verifyAudit(again).ok, true);
      } finally {
        again.close();
      }
    } finally {
      removeHome(home);
    }
    // Bytes an older segment lacks: not a crash of the newest one's tail.
    const home2 = mkdtempSync(join(tmpdir(), "kpip-seg-"));
    const dir2 = join(home2, "audit");
    try {
      const rows = chain(40);
      const s = new SqliteStore(join(home2, "kernel.db"));
      s.useAuditSegments(dir2, undefined, { rotateAbove: 2048, presync: false });
      for (let i = 0; i < 40; i += 4) {
        s.appendAudit(rows.slice(i, i + 4) as AuditRow[]);
        s.indexAudit?.();
      }
      s.close();
      const segs = readdirSync(dir2).sort();
      assert.ok(segs.length >= 2);
      truncateSync(join(dir2, segs[0] as string), 100);
      const again = new SqliteStore(join(home2, "kernel.db"));
      try {
        assert.throws(() => again.useAuditSegments(dir2), /is cut short: the index names bytes/);
      } finally {
        again.close();
      }
      // The audit reader reads it as it is, and verify says where.
      const reader = openAuditReader(join(home2, "kernel.db"));
      try {
        const v = verifyAudit(reader);
        assert.equal(v.ok, false);
        assert.match(v.firstBad?.reason ?? "", /cut short|cannot be read/);
      } finally {
        reader.close();
      }
    } finally {
      removeHome(home2);
    }
    // The newest segment gone altogether (its directory entry lost with its bytes): cut back the same;
    // an older one gone (a hole) still stops the open.
    for (const which of ["newest", "older"] as const) {
      const home3 = mkdtempSync(join(tmpdir(), "kpip-seg-"));
      const dir3 = join(home3, "audit");
      try {
        const rows = chain(40);
        const s = new SqliteStore(join(home3, "kernel.db"));
        s.useAuditSegments(dir3, undefined, { rotateAbove: 2048, presync: false });
        for (let i = 0; i < 40; i += 4) {
          s.appendAudit(rows.slice(i, i + 4) as AuditRow[]);
          s.indexAudit?.();
        }
        s.close();
        const segs = readdirSync(dir3).sort();
        assert.ok(segs.length >= 3);
        const gone = (which === "newest" ? segs.at(-1) : segs[1]) as string;
        rmSync(join(dir3, gone));
        const again = new SqliteStore(join(home3, "kernel.db"));
        try {
          if (which === "older") assert.throws(() => again.useAuditSegments(dir3), /is missing/);
          else {
            const first = Number(gone.slice(0, gone.indexOf(".")));
            assert.deepEqual(again.useAuditSegments(dir3), {
              recovered: 0,
              migrated: 0,
              lost: { records: 40 - first + 1, from: first, to: 40, checkpoints: 0 },
            });
            assert.equal(again.countAudit(), first - 1);
            again.appendAudit(rows.slice(first - 1) as AuditRow[]);
            assert.equal(verifyAudit(again).ok, true);
          }
        } finally {
          again.close();
        }
      } finally {
        removeHome(home3);
      }
    }
  });

  it("a segment tail that does not continue the index's chain stops the open, and the reader, with the reason", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-seg-"));
    const dir = join(home, "audit");
    try {
      const s = new SqliteStore(join(home, "kernel.db"));
      s.useAuditSegments(dir);
      s.appendAudit(chain(2) as AuditRow[]);
      s.close();
      // Another chain's records 3–4.
      appendFileSync(
        onlySegment(dir),
        bytesOf([{ rows: chain(2, 3, randomBytes(32)), dedupe: [], journalUpTo: 0, checkpoints: [] }]),
      );
      const again = new SqliteStore(join(home, "kernel.db"));
      try {
        assert.throws(() => again.useAuditSegments(dir), /does not continue the chain/);
        assert.equal(again.countAudit(), 2, "nothing of it was indexed");
      } finally {
        again.close();
      }
      assert.throws(() => openAuditReader(join(home, "kernel.db")), /does not continue the chain/);
    } finally {
      removeHome(home);
    }
  });

  it("a segment write that fails answers nobody and rewinds the chain: the next commits continue the durable chain", async () => {
    const append = SegmentWriter.prototype.append;
    await withSegmentStore(async (s) => {
      const { log, rec } = logOn(s, { batchMax: 8, checkpointEvery: 5 });
      await Promise.all([rec(), rec(), rec()]);
      SegmentWriter.prototype.append = () => {
        throw new Error("ENOSPC: no space left on device");
      };
      await assert.rejects(Promise.all([rec(), rec(), rec()]), /audit commit failed: ENOSPC/);
      SegmentWriter.prototype.append = append;
      await Promise.all(Array.from({ length: 7 }, rec));
      assert.equal(log.headSeq, 10);
      assert.equal(s.countAudit(), 10);
      const v = verifyAudit(s);
      assert.equal(v.ok, true, JSON.stringify(v));
      log.close();
    }).finally(() => {
      SegmentWriter.prototype.append = append;
    });
  });

  it("SQLite that cannot index keeps the batches in the segment, and past MAX_UNINDEXED_ROWS waiting a commit fails instead of growing the backlog", async () => {
    await withSegmentStore((s, dir) => {
      const rows = chain(MAX_UNINDEXED_ROWS + 2);
      // Every index of a span fails while the trigger is there.
      s.db.exec("CREATE TRIGGER block_index BEFORE INSERT ON audit_batches BEGIN SELECT RAISE(ABORT, 'index blocked'); END");
      s.appendAudit([rows[0] as AuditRow]);
      s.appendAudit(rows.slice(1, MAX_UNINDEXED_ROWS) as AuditRow[]);
      assert.throws(() => s.indexAudit?.(), /index blocked/);
      assert.equal(s.auditUnindexed, MAX_UNINDEXED_ROWS, "kept for the next try");
      const size = statSync(onlySegment(dir)).size;
      assert.throws(() => s.appendAudit([rows[MAX_UNINDEXED_ROWS] as AuditRow]), /index blocked/);
      assert.equal(statSync(onlySegment(dir)).size, size, "the refused commit wrote nothing");
      assert.equal(decodeBatches(readFileSync(onlySegment(dir))).length, 2);
      assert.throws(() => s.countAudit(), /index blocked/, "a read does not skip what is not indexed");
      // Once SQLite can take them, the next read indexes them all.
      s.db.exec("DROP TRIGGER block_index");
      assert.equal(s.countAudit(), MAX_UNINDEXED_ROWS);
      assert.equal(s.auditUnindexed, 0);
    });
  });

  it("a store closed while SQLite cannot index leaves the batches past the index, and the next open indexes them", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-seg-"));
    const dir = join(home, "audit");
    try {
      const rows = chain(4);
      const s = new SqliteStore(join(home, "kernel.db"));
      s.useAuditSegments(dir);
      s.appendAudit(rows.slice(0, 1) as AuditRow[]);
      s.indexAudit?.();
      s.db.exec("CREATE TRIGGER block_index BEFORE INSERT ON audit_batches BEGIN SELECT RAISE(ABORT, 'index blocked'); END");
      s.appendAudit(rows.slice(1) as AuditRow[]);
      s.close();
      assert.equal(decodeBatches(readFileSync(onlySegment(dir))).length, 2, "the segment kept what SQLite could not take");
      const fix = new Database(join(home, "kernel.db"));
      fix.exec("DROP TRIGGER block_index");
      fix.close();
      const again = new SqliteStore(join(home, "kernel.db"));
      try {
        assert.deepEqual(again.useAuditSegments(dir), { recovered: 3, migrated: 0 });
        assert.deepEqual(
          again.scanAudit(1, 10).map((r) => r.seq),
          [1, 2, 3, 4],
        );
        assert.equal(verifyAudit(again).ok, true);
      } finally {
        again.close();
      }
    } finally {
      removeHome(home);
    }
  });

  it("a read inside a caller's transaction that rolls back never takes appended batches with it", async () => {
    await withSegmentStore((s) => {
      const rows = chain(3);
      s.appendAudit(rows.slice(0, 1) as AuditRow[]);
      s.indexAudit?.();
      s.appendAudit(rows.slice(1) as AuditRow[]);
      assert.throws(() =>
        s.transaction(() => {
          assert.equal(s.countAudit(), 1, "inside it, SQLite as it is");
          throw new Error("rolled back");
        }),
      );
      assert.throws(() => s.transaction(() => s.indexAudit?.()), AuditJournalError);
      assert.equal(s.auditUnindexed, 2);
      assert.equal(s.countAudit(), 3);
      assert.deepEqual(
        s.scanAudit(1, 10).map((r) => r.seq),
        [1, 2, 3],
      );
    });
  });

  it("a commit whose after-commit hook throws (metrics, the WAL size check) stands: answered, and the chain goes on from it", async () => {
    await withSegmentStore(async (s) => {
      const { log, rec } = logOn(s, { batchMax: 4, checkpointEvery: 1000 });
      await rec();
      log.onCommit = () => {
        throw new Error("EIO: stat of the WAL failed");
      };
      await Promise.all([rec(), rec()]);
      log.onCommit = undefined;
      await Promise.all([rec(), rec()]);
      assert.equal(log.headSeq, 5);
      assert.equal(s.countAudit(), 5);
      assert.equal(verifyAudit(s).ok, true);
      log.close();
    });
  });

  it("refuses a journal or segment that is not a regular file", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-journal-"));
    try {
      assert.throws(() => new AuditJournal(dir), /EISDIR|not a regular file/);
      assert.throws(() => AuditJournal.read(dir), AuditJournalError);
      // A FIFO: an open that waited for its other end would hold the kernel's thread for ever.
      const fifo = join(dir, "audit.journal");
      assert.equal(spawnSync("mkfifo", [fifo]).status, 0);
      assert.throws(() => AuditJournal.read(fifo), AuditJournalError);
      assert.throws(
        () => new AuditJournal(fifo),
        (e: Error) => e instanceof AuditJournalError || /ENXIO/.test(e.message),
      );
      // The same as a segment: the newest segment file a FIFO.
      const segs = join(dir, "audit");
      mkdirSync(segs);
      assert.equal(spawnSync("mkfifo", [join(segs, segmentName(1))]).status, 0);
      const s = new SqliteStore(join(dir, "k.db"));
      try {
        assert.throws(
          () => s.useAuditSegments(segs),
          (e: Error) => e instanceof AuditJournalError || /ENXIO/.test(e.message),
        );
      } finally {
        s.close();
      }
    } finally {
      removeHome(dir);
    }
  });

  it("rotates to a new segment (named after its first record) past the size bound, reads across them, and retention drops whole segments one prune later", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-seg-"));
    const dir = join(home, "audit");
    const s = new SqliteStore(join(home, "kernel.db"));
    try {
      s.useAuditSegments(dir, undefined, { rotateAbove: 2048, presync: false });
      const rows = chain(40);
      for (let i = 0; i < 40; i += 4) {
        s.appendAudit(rows.slice(i, i + 4) as AuditRow[]);
        s.indexAudit?.();
      }
      const segs = readdirSync(dir).sort();
      assert.ok(segs.length >= 3, segs.join(","));
      assert.equal(segs[0], segmentName(1));
      assert.equal(s.countAudit(), 40);
      assert.deepEqual(
        s.scanAudit(1, 100).map((r) => r.seq),
        rows.map((r) => r.seq),
      );
      assert.equal(verifyAudit(s).ok, true);
      // Retention through record 30: every segment wholly below it goes, the rest of a span is hidden.
      const second = Number((segs[1] as string).slice(0, 16));
      assert.equal(s.pruneAudit(30), 30);
      assert.equal(s.firstAuditSeq(), 31);
      assert.equal(s.countAudit(), 10);
      assert.deepEqual(
        s.scanAudit(1, 100).map((r) => r.seq),
        rows.slice(30).map((r) => r.seq),
      );
      assert.equal(s.auditHashAt(30), undefined);
      assert.deepEqual(
        readdirSync(dir).sort(),
        segs,
        "the files stay until the next prune (a live reader's snapshot may name them)",
      );
      assert.equal(s.pruneAudit(30), 0);
      const left = readdirSync(dir).sort();
      assert.ok(!left.includes(segmentName(1)), "the first segment is gone");
      assert.ok(left.length < segs.length && second <= 31);
      s.close();
      // The next open goes on from the retained records.
      const again = new SqliteStore(join(home, "kernel.db"));
      try {
        again.useAuditSegments(dir);
        assert.equal(again.firstAuditSeq(), 31);
        assert.equal(again.countAudit(), 10);
      } finally {
        again.close();
      }
    } finally {
      s.close();
      removeHome(home);
    }
  });
});

describe("a full segment's sync off the kernel's thread", () => {
  const batch = (rows: JournalRecord[]): JournalBatch => ({ rows, dedupe: [], journalUpTo: 0, checkpoints: [] });

  it("past the bound appends go on into the full segment until its background sync is done, then the next batch rotates; at twice the bound it rotates without waiting", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-seg-"));
    const dir = join(home, "audit");
    const w = new SegmentWriter(dir, 1, { rotateAbove: 2048 });
    try {
      const rows = chain(200);
      let i = 0;
      const next = () => w.append(batch([rows[i++] as JournalRecord]));
      for (let a = next(); a.offset + a.length < 2048; a = next());
      // The bound is passed: the next batch starts the background sync and still lands in segment 1.
      const first = next();
      assert.equal(first.segment, 1);
      assert.deepEqual(readdirSync(dir), [segmentName(1)]);
      await w.presynced;
      const rotated = next();
      assert.equal(rotated.segment, i, "the batch after the sync starts a segment named after its record");
      assert.equal(rotated.offset, 0);
      assert.deepEqual(readdirSync(dir).sort(), [segmentName(1), segmentName(i)]);
      // A sync that does not come back in time: at twice the bound the rotation syncs on the thread.
      const second = i;
      let at = next();
      while (at.segment === second) at = next();
      assert.ok(at.offset === 0 && at.segment === i);
      const { size } = statSync(join(dir, segmentName(second)));
      assert.ok(size >= 4096 && size < 4096 + 512, `rotated at ${size} bytes`);
      assert.equal(parseSpan(readFileSync(join(dir, segmentName(1))), "1").rows.length, rotated.segment - 1);
    } finally {
      w.close();
      removeHome(home);
    }
  });

  it("a rotation whose sync fails (on the kernel's thread) fails every later append too: the next rotation's sync would pass", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-seg-"));
    const dir = join(home, "audit");
    const w = new SegmentWriter(dir, 1, { rotateAbove: 1024, presync: false });
    const mutable = nodeFs as unknown as { fdatasyncSync: (fd: number) => void };
    const real = mutable.fdatasyncSync;
    try {
      const rows = chain(40);
      let i = 0;
      for (
        let a = w.append(batch([rows[i++] as JournalRecord]));
        a.offset + a.length < 1024;
        a = w.append(batch([rows[i++] as JournalRecord]))
      );
      mutable.fdatasyncSync = () => {
        throw Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" });
      };
      syncBuiltinESMExports();
      assert.throws(() => w.append(batch([rows[i] as JournalRecord])), /EIO/);
      mutable.fdatasyncSync = real;
      syncBuiltinESMExports();
      assert.throws(() => w.append(batch([rows[i] as JournalRecord])), /could not be synced \(EIO.*takes no more/);
      assert.deepEqual(readdirSync(dir), [segmentName(1)], "no new segment after the full one's failed sync");
    } finally {
      mutable.fdatasyncSync = real;
      syncBuiltinESMExports();
      w.close();
      removeHome(home);
    }
  });

  it("a background sync that fails (a writeback error the disk reports once) fails every later append: the audit fails closed", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-seg-"));
    const dir = join(home, "audit");
    const w = new SegmentWriter(dir, 1, { rotateAbove: 1 << 20 });
    // The default export is node:fs's mutable object; syncBuiltinESMExports carries a change to the named imports.
    const mutable = nodeFs as unknown as { fdatasync: (fd: number, cb: (e: NodeJS.ErrnoException | null) => void) => void };
    const real = mutable.fdatasync;
    try {
      const rows = chain(4);
      w.append(batch([rows[0] as JournalRecord]));
      // The periodic sync meets EIO; a sync after it would succeed (the error is reported once).
      mutable.fdatasync = (_fd, cb) => {
        setImmediate(() => cb(Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" })));
      };
      syncBuiltinESMExports();
      await w.sync();
      mutable.fdatasync = real;
      syncBuiltinESMExports();
      assert.throws(
        () => w.append(batch([rows[1] as JournalRecord])),
        (e: Error) => e instanceof AuditJournalError && /could not be synced \(EIO.*takes no more/.test(e.message),
      );
      assert.throws(() => w.append(batch([rows[1] as JournalRecord])), AuditJournalError);
      assert.equal(parseSpan(readFileSync(join(dir, segmentName(1))), "1").rows.length, 1, "nothing appended after it");
    } finally {
      mutable.fdatasync = real;
      syncBuiltinESMExports();
      w.close();
      removeHome(home);
    }
  });
});

const kernelModule = new URL("../src/index.js", import.meta.url).href;

/**
 * A home whose kernel was SIGKILLed with all of this run's records only in its journal (the
 * child never indexes: its `indexAudit` does nothing), after `writes` answered storage.writes.
 */
async function homeKilledWithJournal(writes: number): Promise<string> {
  const home = mkdtempSync(join(tmpdir(), "kpip-journal-kill-"));
  // A first start on its own: the admin persona's creation is indexed before the child runs.
  await (await startKernel({}, home)).stop();
  const code = `const { Kernel, SqliteStore } = await import(process.argv[1]);
SqliteStore.prototype.indexAudit = function () {};
const k = new Kernel({ home: process.argv[2], logLevel: "silent" });
await k.start();
process.stdout.write("ready\\n");
setInterval(() => {}, 1000);`;
  const child = await spawnReady(["--input-type=module", "-e", code, kernelModule, home], "ready");
  const exited = new Promise((r) => child.once("exit", r));
  try {
    const c = await connectAdminOf(home);
    for (let i = 0; i < writes; i++) await c.call("storage.write", `obj://ws/j${i}`, { data: Buffer.from(`v${i}`) });
    child.kill("SIGKILL");
    await exited;
    await c.close().catch(() => {});
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
  }
  return home;
}

describe("a kernel home's audit segments, tampered with while no kernel ran", () => {
  it("a record changed past the index, or a batch cut out there: the kernel does not start, the audit reader says why, the segment stays as it was", async () => {
    const home = await homeKilledWithJournal(6);
    const dir = join(home, "audit");
    const path = onlySegment(dir);
    try {
      const segment = readFileSync(path);
      const db = new Database(join(home, "kernel.db"), { readonly: true });
      const end = (db.prepare("SELECT max(offset + length) AS e FROM audit_batches").get() as { e: number }).e;
      db.close();
      const tail = decodeBatches(segment.subarray(end));
      assert.ok(tail.length >= 6, `${tail.length} batches past the index`);
      const tampered: [string, Buffer, RegExp][] = [];
      // One byte of the newest record's bytes (its target's last character), hash left as it was.
      const changed = Buffer.from(segment);
      changed[changed.length - 4 - 40] = (changed[changed.length - 4 - 40] as number) ^ 0x01;
      tampered.push(["a changed record", changed, /does not hash to its hash|not a record/]);
      // The third batch past the index cut out: the records after it no longer follow on.
      let at = end;
      const ends = tail.map((b) => {
        at += encodeBatch(b).length;
        return at;
      });
      const cut = Buffer.concat([segment.subarray(0, ends[1]), segment.subarray(ends[2])]);
      tampered.push(["a batch cut out", cut, /skips from record/]);
      for (const [what, bytes, reason] of tampered) {
        writeFileSync(path, bytes);
        await assert.rejects(new Kernel({ home, logLevel: "silent" }).start(), reason, what);
        assert.throws(
          () => openAuditReader(join(home, "kernel.db")),
          (e: Error) => e instanceof HomeReadError && reason.test(e.message),
          what,
        );
        assert.deepEqual(readFileSync(path), bytes, `${what}: the segment was changed`);
      }
      // The segment as the kernel left it: the next kernel indexes every answered write's records.
      writeFileSync(path, segment);
      const t = await startKernel({}, home);
      try {
        assert.equal(verifyAudit(t.k.inspect).ok, true);
        const written = t.k.inspect.queryAudit({ op: "storage.write", limit: 100 }).filter((r) => r.phase === "outcome");
        assert.equal(written.length, 6);
      } finally {
        await t.stop();
      }
    } finally {
      removeHome(home);
    }
  });
});

describe("a kernel home's newest segment cut short while no kernel ran", () => {
  it("the next kernel starts over the cut, and its kernel.start record says which records and checkpoints the cut took", async () => {
    const first = await startKernel({ auditCheckpointEvery: 4 });
    const home = first.home;
    try {
      const c = await first.admin();
      for (let i = 0; i < 8; i++) await c.storage.write(`obj://ws/t${i}`, `v${i}`);
      await first.stop();
      const s = new SqliteStore(join(home, "kernel.db"));
      const head = s.lastAudit()?.seq ?? 0;
      const signed = s.checkpoints().length;
      s.close();
      // Cut inside the batch of the sixth record from the head: what an OS crash before the
      // segment's sync leaves, or someone with the home who wants the last requests gone.
      const at = locate(home, head - 5);
      truncateSync(at.file, at.at + 1);
      const t = await startKernel({}, home);
      try {
        const starts = t.k.inspect.queryAudit({ op: "kernel.start", limit: 10 });
        const start = starts.at(-1);
        assert.ok(start, "a kernel.start record");
        const lost = (JSON.parse(start.detail ?? "{}") as { lost?: Record<string, number> }).lost;
        assert.ok(lost, `kernel.start names the cut: ${start.detail}`);
        // The start's own record takes the first seq the cut freed.
        assert.equal(lost.from, start.seq);
        assert.equal(lost.to, head);
        assert.equal(lost.records, head - start.seq + 1);
        assert.ok((lost.checkpoints ?? 0) >= 1, "the stop's checkpoint went with the cut");
        assert.ok(t.k.inspect.checkpoints().length < signed + 1);
        assert.match(start.message ?? "", /records \d+\.\.\d+ .*gone/);
        // The chain itself agrees with itself: only this record says what went.
        assert.equal(verifyAudit(t.k.inspect).ok, true);
      } finally {
        await t.stop();
      }
    } finally {
      removeHome(home);
    }
  });
});

/** Where record `seq`'s bytes are in a stopped home's segment (via the index), and the segment file. */
function locate(
  home: string,
  seq: number,
): { file: string; at: number; length: number; span: { offset: number; length: number } } {
  const db = new Database(join(home, "kernel.db"), { readonly: true });
  try {
    const span = db
      .prepare("SELECT segment, offset, length FROM audit_batches WHERE first_seq <= ? ORDER BY first_seq DESC LIMIT 1")
      .get(seq) as { segment: number; offset: number; length: number };
    const file = join(home, "audit", segmentName(span.segment));
    const bytes = readFileSync(file).subarray(span.offset, span.offset + span.length);
    const row = parseSpan(bytes, "test").rows.find((r) => r.seq === seq);
    if (!row) throw new Error(`record ${seq} not in its span`);
    return { file, at: span.offset + row.at, length: row.record.length, span };
  } finally {
    db.close();
  }
}

describe("a stopped home's segment bytes tampered with: audit verify finds each", () => {
  let source = "";
  let head = 0;
  before(async () => {
    const t = await startKernel({ auditCheckpointEvery: 1000 });
    const c = await t.admin();
    for (let i = 0; i < 6; i++) await c.storage.write(`obj://ws/t${i}`, `v${i}`);
    await t.stop();
    source = t.home;
    const s = new SqliteStore(join(source, "kernel.db"));
    head = s.lastAudit()?.seq ?? 0;
    s.close();
  });
  after(() => removeHome(source));

  /** A copy of the home with `tamper` run on it; verify's result there (the store's and the CLI reader's agree). */
  const verifyTampered = async (tamper: (home: string) => void) => {
    const home = mkdtempSync(join(tmpdir(), "kpip-seg-tamper-"));
    cpSync(source, home, { recursive: true });
    try {
      tamper(home);
      const reader = openAuditReader(join(home, "kernel.db"));
      let viaReader: ReturnType<typeof verifyAudit>;
      try {
        viaReader = verifyAudit(reader);
      } finally {
        reader.close();
      }
      const viaFile = await verifyAuditFile(join(home, "kernel.db"));
      assert.deepEqual(viaFile, viaReader);
      return viaReader;
    } finally {
      removeHome(home);
    }
  };

  it("the untouched copy verifies", async () => {
    const v = await verifyTampered(() => {});
    assert.equal(v.ok, true, v.firstBad?.reason);
    assert.equal(v.records, head);
  });

  it("a record's bytes changed in its segment (hash left as it was)", async () => {
    const v = await verifyTampered((home) => {
      const { file, at, length } = locate(home, 4);
      const fd = openSync(file, "r+");
      const b = Buffer.alloc(1);
      readSync(fd, b, 0, 1, at + length - 1);
      b[0] = (b[0] as number) ^ 1;
      writeSync(fd, b, 0, 1, at + length - 1);
      closeSync(fd);
    });
    assert.equal(v.ok, false);
    assert.equal(v.firstBad?.seq, 4);
    assert.match(v.firstBad?.reason ?? "", /content/);
  });

  it("a batch removed from the segment (its bytes cut out, the index left as it was)", async () => {
    const v = await verifyTampered((home) => {
      // The batch holding record 3: cut from the file at its framing.
      const { file, at } = locate(home, 3);
      const bytes = readFileSync(file);
      let start = 0;
      let end = 0;
      for (let p = 0; p < bytes.length; ) {
        const len = 12 + bytes.readUInt32LE(p + 4) + 4;
        if (p <= at && at < p + len) {
          start = p;
          end = p + len;
          break;
        }
        p += len;
      }
      writeFileSync(file, Buffer.concat([bytes.subarray(0, start), bytes.subarray(end)]));
    });
    assert.equal(v.ok, false);
    assert.ok((v.firstBad?.seq ?? 0) <= 3, JSON.stringify(v.firstBad));
    assert.match(v.firstBad?.reason ?? "", /missing|cannot be read|cut short|link/);
  });

  it("a record's length forged (longer than its batch, and past MAX_RECORD_BYTES)", async () => {
    for (const forged of [1_000_000, MAX_RECORD_BYTES + 1]) {
      const v = await verifyTampered((home) => {
        const { file, at } = locate(home, 5);
        const fd = openSync(file, "r+");
        const b = Buffer.alloc(4);
        b.writeUInt32LE(forged);
        writeSync(fd, b, 0, 4, at - 4);
        closeSync(fd);
      });
      assert.equal(v.ok, false);
      assert.equal(v.firstBad?.seq, 5, v.firstBad?.reason);
      assert.match(v.firstBad?.reason ?? "", forged > MAX_RECORD_BYTES ? /more than the .*not read/ : /cannot be read/);
    }
  });

  it("a segment file truncated inside the indexed records, or removed", async () => {
    const cut = await verifyTampered((home) => {
      const { file, at } = locate(home, 4);
      truncateSync(file, at + 3);
    });
    assert.equal(cut.ok, false);
    assert.ok((cut.firstBad?.seq ?? 0) <= 4, JSON.stringify(cut.firstBad));
    assert.match(cut.firstBad?.reason ?? "", /cut short|cannot be read|missing/);
    const gone = await verifyTampered((home) => {
      for (const f of readdirSync(join(home, "audit"))) rmSync(join(home, "audit", f));
    });
    assert.equal(gone.ok, false);
    assert.match(gone.firstBad?.reason ?? "", /missing|cannot be read/);
  });
});

describe("a home made before segment files", () => {
  it("moves its audit table's rows (and what its journal held) into segments once, at the kernel's start; verify and the readers agree before and after", async () => {
    // A home as kpip before segments left it: records in the audit table, unindexed batches in audit.journal.
    const t = await startKernel({ auditCheckpointEvery: 5 });
    const c = await t.admin();
    for (let i = 0; i < 8; i++) await c.storage.write(`obj://ws/m${i}`, `v${i}`);
    await t.stop();
    const home = t.home;
    try {
      const dbPath = join(home, "kernel.db");
      unsegment(dbPath);
      // Its last two records only in the journal (a kernel killed before it indexed them).
      const db = new Database(dbPath);
      const last = db.prepare("SELECT seq, hash, record FROM audit ORDER BY seq DESC LIMIT 2").all() as JournalRecord[];
      db.prepare("DELETE FROM audit WHERE seq >= ?").run((last[1] as JournalRecord).seq);
      db.close();
      writeFileSync(
        join(home, "audit.journal"),
        bytesOf([{ rows: last.reverse(), dedupe: [], journalUpTo: 0, checkpoints: [] }]),
        { mode: 0o600 },
      );
      const old = openAuditReader(dbPath);
      const before = { v: verifyAudit(old), rows: [...old.records()].map((r) => [r.seq, Buffer.from(r.hash).toString("hex")]) };
      old.close();
      assert.equal(before.v.ok, true, before.v.firstBad?.reason);
      const lines: string[] = [];
      const logger = pino({ level: "info" }, { write: (l: string) => lines.push(l) });
      const t2 = await startKernel({ logger }, home);
      await t2.stop();
      assert.ok(!existsSync(join(home, "audit.journal")), "the journal is gone");
      const after = openAuditReader(dbPath);
      try {
        const v = verifyAudit(after);
        assert.equal(v.ok, true, v.firstBad?.reason);
        const rows = [...after.records()].map((r) => [r.seq, Buffer.from(r.hash).toString("hex")]);
        assert.deepEqual(rows.slice(0, before.rows.length), before.rows, "every record moved as it was");
        assert.deepEqual(after.db.prepare("SELECT seq FROM audit").pluck().all(), [0], "only the sentinel is left");
      } finally {
        after.close();
      }
      assert.ok(
        lines.some((l) => /moved the audit records out of the database into segment files/.test(l)),
        lines.join("\n"),
      );
    } finally {
      removeHome(home);
    }
  });
});
