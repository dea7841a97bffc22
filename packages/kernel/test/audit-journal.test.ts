import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { KernelClient, loadIdentity } from "@kpip/client";
import { sha256 } from "@kpip/protocol";
import Database from "better-sqlite3";
import fc from "fast-check";
import { AuditLog } from "../src/audit/log.js";
import { GENESIS_HASH, recordBytes } from "../src/audit/record.js";
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
import { MAX_UNINDEXED_ROWS } from "../src/store/sqlite/audit.js";
import type { AuditCheckpoint, AuditRow, DedupeRow } from "../src/store/types.js";
import { removeHome, spawnReady, startKernel } from "./harness.js";

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

/** A store in a fresh directory with its journal (`audit.journal` beside it) open; closed and removed after `fn`. */
async function withJournalStore(fn: (s: SqliteStore, path: string) => void | Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "kpip-journal-"));
  const path = join(dir, "audit.journal");
  const s = new SqliteStore(join(dir, "kernel.db"));
  try {
    s.useAuditJournal(path);
    await fn(s, path);
  } finally {
    s.close();
    removeHome(dir);
  }
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

describe("the audit journal in front of SQLite", () => {
  it("a commit is in the journal at once and in SQLite after indexAudit; every read indexes first; close empties the journal", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-journal-"));
    const path = join(dir, "audit.journal");
    const s = new SqliteStore(join(dir, "k.db"));
    try {
      assert.equal(s.useAuditJournal(path), 0);
      const other = new Database(join(dir, "k.db"), { readonly: true });
      const inSqlite = () => (other.prepare("SELECT count(*) AS n FROM audit").get() as { n: number }).n;
      const [b1, b2] = batches([2, 3], [false, true]) as [JournalBatch, JournalBatch];
      s.appendAudit(b1.rows as AuditRow[]);
      // A dedupe lookup (every new request with effects makes one) indexes nothing while no dedupe row waits.
      assert.equal(s.lookupDedupe((b2.dedupe[0] as DedupeRow).key, 0), undefined);
      assert.equal(inSqlite(), 0);
      s.appendAudit(b2.rows as AuditRow[], [...b2.dedupe], 0, [...b2.checkpoints]);
      assert.equal(inSqlite(), 0, "nothing in SQLite before the index");
      assert.equal(s.auditUnindexed, 5);
      assert.deepEqual(decodeBatches(readFileSync(path)).length, 2);
      // With one waiting it indexes first, so the answer recorded there is found.
      assert.deepEqual(s.lookupDedupe((b2.dedupe[0] as DedupeRow).key, 0)?.response, (b2.dedupe[0] as DedupeRow).response);
      assert.equal(inSqlite(), 5);
      assert.equal(s.auditUnindexed, 0);
      s.appendAudit(chain(1, 6, (b2.rows.at(-1) as JournalRecord).hash) as AuditRow[]);
      // Any read of the records indexes what waits.
      assert.equal(s.countAudit(), 6);
      assert.equal(inSqlite(), 6);
      other.close();
      s.close();
      assert.equal(statSync(path).size, 0, "a clean stop leaves an empty journal");
    } finally {
      removeHome(dir);
    }
  });

  it("the next open indexes what a killed kernel journalled (and a stopped home's audit reader reads it without changing the home)", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-journal-"));
    const path = join(dir, "audit.journal");
    try {
      const bs = batches([4, 2, 3], [true, false, false]);
      const rows = bs.flatMap((b) => b.rows);
      const s = new SqliteStore(join(dir, "kernel.db"));
      s.appendAudit(rows.slice(0, 4) as AuditRow[]); // the first batch reached SQLite before the kill
      s.close();
      writeFileSync(path, bytesOf(bs), { mode: 0o600 });
      const before = readFileSync(path);
      // The audit tools' reader: a private copy with the journal's unindexed batches in it.
      const reader = openAuditReader(join(dir, "kernel.db"));
      try {
        assert.equal(reader.headSeq(), 9);
        assert.deepEqual(readFileSync(path), before, "the reader changed the home's journal");
      } finally {
        reader.close();
      }
      const again = new SqliteStore(join(dir, "kernel.db"));
      try {
        assert.equal(again.useAuditJournal(path), 5);
        assert.equal(again.countAudit(), 9);
        assert.equal(statSync(path).size, 0);
        assert.deepEqual(
          again.scanAudit(1, 100).map((r) => Buffer.from(r.hash).toString("hex")),
          rows.map((r) => Buffer.from(r.hash).toString("hex")),
        );
      } finally {
        again.close();
      }
    } finally {
      removeHome(dir);
    }
  });

  it("a journal that does not continue the database's chain stops the open, and the reader, with the reason", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-journal-"));
    const path = join(dir, "audit.journal");
    try {
      const s = new SqliteStore(join(dir, "kernel.db"));
      s.appendAudit(chain(2) as AuditRow[]);
      s.close();
      // Another chain's records 3–4.
      writeFileSync(path, bytesOf([{ rows: chain(2, 3, randomBytes(32)), dedupe: [], journalUpTo: 0, checkpoints: [] }]));
      const again = new SqliteStore(join(dir, "kernel.db"));
      try {
        assert.throws(() => again.useAuditJournal(path), /does not continue the chain/);
        assert.equal(again.countAudit(), 2, "nothing of it was indexed");
      } finally {
        again.close();
      }
      assert.throws(() => openAuditReader(join(dir, "kernel.db")), /does not continue the chain/);
    } finally {
      removeHome(dir);
    }
  });

  it("a journal write that fails answers nobody and rewinds the chain: the next commits continue the durable chain", async () => {
    const append = AuditJournal.prototype.append;
    await withJournalStore(async (s) => {
      const { log, rec } = logOn(s, { batchMax: 8, checkpointEvery: 5 });
      await Promise.all([rec(), rec(), rec()]);
      AuditJournal.prototype.append = () => {
        throw new Error("ENOSPC: no space left on device");
      };
      await assert.rejects(Promise.all([rec(), rec(), rec()]), /audit commit failed: ENOSPC/);
      AuditJournal.prototype.append = append;
      await Promise.all(Array.from({ length: 7 }, rec));
      assert.equal(log.headSeq, 10);
      assert.equal(s.countAudit(), 10);
      const v = verifyAudit(s);
      assert.equal(v.ok, true, JSON.stringify(v));
      log.close();
    }).finally(() => {
      AuditJournal.prototype.append = append;
    });
  });

  it("SQLite that cannot index keeps the batches journalled, and past MAX_UNINDEXED_ROWS waiting a commit fails instead of growing the backlog", async () => {
    await withJournalStore((s, path) => {
      const rows = chain(MAX_UNINDEXED_ROWS + 2);
      // Record 1 already in the table: every index of the batches fails on its key.
      s.db.prepare("INSERT INTO audit (seq, hash, record) VALUES (?, ?, ?)").run(1, rows[0]?.hash, rows[0]?.record);
      s.appendAudit([rows[0] as AuditRow]);
      s.appendAudit(rows.slice(1, MAX_UNINDEXED_ROWS) as AuditRow[]);
      assert.throws(() => s.indexAudit?.(), /UNIQUE|PRIMARY KEY/);
      assert.equal(s.auditUnindexed, MAX_UNINDEXED_ROWS, "kept for the next try");
      const size = statSync(path).size;
      assert.throws(() => s.appendAudit([rows[MAX_UNINDEXED_ROWS] as AuditRow]), /UNIQUE|PRIMARY KEY/);
      assert.equal(statSync(path).size, size, "the refused commit wrote nothing");
      assert.equal(decodeBatches(readFileSync(path)).length, 2);
      assert.throws(() => s.countAudit(), /UNIQUE|PRIMARY KEY/, "a read does not skip what is not indexed");
      // Once SQLite can take them, the next read indexes them all.
      s.db.prepare("DELETE FROM audit WHERE seq = 1").run();
      assert.equal(s.countAudit(), MAX_UNINDEXED_ROWS);
      assert.equal(s.auditUnindexed, 0);
    });
  });

  it("a store closed while SQLite cannot index leaves the batches in the journal, and the next open indexes them", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-journal-"));
    const path = join(dir, "audit.journal");
    try {
      const rows = chain(4);
      const s = new SqliteStore(join(dir, "kernel.db"));
      s.useAuditJournal(path);
      s.appendAudit(rows.slice(0, 1) as AuditRow[]);
      s.indexAudit?.();
      // Record 3 already in the table: the index of 2–4 fails on its key.
      s.db.prepare("INSERT INTO audit (seq, hash, record) VALUES (?, ?, ?)").run(3, rows[2]?.hash, rows[2]?.record);
      s.appendAudit(rows.slice(1) as AuditRow[]);
      s.close();
      assert.equal(decodeBatches(readFileSync(path)).length, 2, "the journal kept what SQLite could not take");
      const fix = new Database(join(dir, "kernel.db"));
      fix.prepare("DELETE FROM audit WHERE seq = 3").run();
      fix.close();
      const again = new SqliteStore(join(dir, "kernel.db"));
      try {
        assert.equal(again.useAuditJournal(path), 3);
        assert.deepEqual(
          again.scanAudit(1, 10).map((r) => r.seq),
          [1, 2, 3, 4],
        );
        assert.equal(verifyAudit(again).ok, true);
      } finally {
        again.close();
      }
    } finally {
      removeHome(dir);
    }
  });

  it("a read inside a caller's transaction that rolls back never takes journalled batches with it", async () => {
    await withJournalStore((s) => {
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
    await withJournalStore(async (s) => {
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

  it("refuses a journal that is not a regular file", () => {
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
      const s = new SqliteStore(join(dir, "k.db"));
      try {
        assert.throws(() => s.useAuditJournal(fifo), AuditJournalError);
      } finally {
        s.close();
      }
    } finally {
      removeHome(dir);
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
    const c = await KernelClient.connect({
      socket: new Kernel({ home, logLevel: "silent" }).socketPath,
      identity: loadIdentity(join(home, "admin.identity")),
      tokens: [readFileSync(join(home, "admin.token"), "utf8").trim()],
      reconnect: false,
    });
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

describe("a kernel home's audit journal, tampered with while no kernel ran", () => {
  it("a record changed in the journal, or a batch cut out of it: the kernel does not start, the audit reader says why, the journal stays as it was", async () => {
    const home = await homeKilledWithJournal(6);
    const path = join(home, "audit.journal");
    try {
      const journal = readFileSync(path);
      const batches = decodeBatches(journal);
      assert.ok(batches.length >= 6, `${batches.length} batches journalled`);
      const tampered: [string, Buffer, RegExp][] = [];
      // One byte of the newest record's bytes (its target's last character), hash left as it was.
      const changed = Buffer.from(journal);
      changed[changed.length - 4 - 40] = (changed[changed.length - 4 - 40] as number) ^ 0x01;
      tampered.push(["a changed record", changed, /does not hash to its hash|not a record/]);
      // The third batch cut out: the records after it no longer follow on.
      let at = 0;
      const ends = batches.map((b) => {
        at += encodeBatch(b).length;
        return at;
      });
      const cut = Buffer.concat([journal.subarray(0, ends[1]), journal.subarray(ends[2])]);
      tampered.push(["a batch cut out", cut, /skips from record/]);
      for (const [what, bytes, reason] of tampered) {
        writeFileSync(path, bytes);
        await assert.rejects(new Kernel({ home, logLevel: "silent" }).start(), reason, what);
        assert.throws(
          () => openAuditReader(join(home, "kernel.db")),
          (e: Error) => e instanceof HomeReadError && reason.test(e.message),
          what,
        );
        assert.deepEqual(readFileSync(path), bytes, `${what}: the journal was changed`);
      }
      // The journal as the kernel left it: the next kernel indexes every answered write's records.
      writeFileSync(path, journal);
      const t = await startKernel({}, home);
      try {
        assert.equal(verifyAudit(t.k.inspect).ok, true);
        const written = t.k.inspect.queryAudit({ op: "storage.write", limit: 100 }).filter((r) => r.phase === "outcome");
        assert.equal(written.length, 6);
      } finally {
        await t.stop();
      }
      assert.equal(statSync(path).size, 0);
    } finally {
      removeHome(home);
    }
  });
});
