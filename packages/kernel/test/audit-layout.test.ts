import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createPrivateKey, createPublicKey } from "node:crypto";
import { copyFileSync, mkdtempSync, readFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";
import { encodeIntent, intentHash, rawPublicKey } from "@kpip/protocol";
import Database from "better-sqlite3";
import type { AuditEntry } from "../src/audit/log.js";
import { openAuditReader } from "../src/audit/reader.js";
import { recordBytesGeneric, recordHashGeneric } from "../src/audit/record.js";
import { verifyAudit } from "../src/audit/verify.js";
import { migrateAuditLayout } from "../src/store/sqlite/audit-layout.js";
import { SqliteStore } from "../src/store/sqlite.js";
import { COLUMN_LAYOUT_DDL, fillAuditFile, tamperedCopy, toColumnLayout } from "./audit-fill.js";
import { removeHome, startKernel } from "./harness.js";

/** Texts and integers at every CBOR head size, non-ASCII text, empty and large blobs, absent fields. */
const TEXTS = [
  "",
  "a",
  "x".repeat(23),
  "y".repeat(24),
  "z".repeat(255),
  "é".repeat(128),
  "日本語 🙂",
  "w".repeat(70_000),
  "nul\u0000in",
];
const UINTS = [0, 23, 24, 255, 256, 65_535, 65_536, 2 ** 32 - 1, 2 ** 32, Number.MAX_SAFE_INTEGER];
const N = 120;

describe("the record layout: a record's stored bytes are its generic encoding, and a home of the column layout moves to it with every tamper still found", () => {
  let dir: string;
  let good: string;
  let old: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "kpip-verify-raw-"));
    good = join(dir, "good.db");
    const row = (i: number): AuditEntry => {
      const t = (k: number) => TEXTS[(i + k) % TEXTS.length] as string;
      const intent = encodeIntent({ op: "storage.write", target: "obj://ws/k", args: { data: t(1).slice(0, 300) } });
      return {
        session: t(0) || "s",
        persona: "p",
        phase: i % 3 === 0 ? "intent" : "complete",
        requestId: i % 4 === 0 ? null : (UINTS[i % UINTS.length] as number),
        op: i % 5 === 0 ? null : "storage.write",
        target: t(2),
        intentHash: i % 6 === 0 ? null : intentHash(intent),
        intent: i % 7 === 0 ? null : i % 7 === 1 ? new Uint8Array(0) : intent,
        caps: t(3),
        status: i % 2 ? "SUCCESS" : null,
        errorClass: i % 9 === 0 ? "NotFound" : null,
        message: t(4),
        durationUs: UINTS[(i + 3) % UINTS.length] as number,
        traceparent: i % 8 === 0 ? null : `00-${"ab".repeat(16)}-${"cd".repeat(8)}-01`,
        execution: i % 10 === 0 ? null : t(5),
        domain: i % 11 === 0 ? null : t(6),
        measurements: i % 12 === 0 ? Buffer.from([0xa1, 0x61, 0x6b, 0x01]) : null,
        detail: i % 13 === 0 ? null : `{"n":${i},"t":${JSON.stringify(t(7).slice(0, 40))}}`,
      };
    };
    await fillAuditFile(good, N, (i) => row(i - 1), { batchMax: 64, checkpointEvery: 50 });
    old = join(dir, "old.db");
    copyFileSync(good, old);
    toColumnLayout(old);
  });
  after(() => removeHome(dir));

  /** verify as `kpip audit verify` reads a file (a private copy, moved to the record layout when old), and as a kernel's store does. */
  const readerVerify = (path: string) => {
    const reader = openAuditReader(path);
    try {
      return verifyAudit(reader);
    } finally {
      reader.close();
    }
  };
  const recordPath = (path: string) => {
    const s = new SqliteStore(path);
    try {
      return verifyAudit(s);
    } finally {
      s.close();
    }
  };

  it("every record the kernel writes is stored as the generic definition's bytes, and hashes to its hash", () => {
    const reader = openAuditReader(good, { direct: true });
    const stored = reader.db.prepare("SELECT seq, record FROM audit ORDER BY seq").raw(true).all() as [number, Buffer][];
    const rows = reader.scanAudit(1, N);
    assert.equal(rows.length, N);
    for (const r of rows) {
      assert.deepEqual(recordBytesGeneric(r), stored[r.seq - 1]?.[1]);
      assert.deepEqual(recordHashGeneric(r), Buffer.from(r.hash));
    }
    const full = verifyAudit(reader);
    reader.close();
    assert.equal(full.ok, true);
    assert.equal(full.records, N);
    assert.ok(full.checkpoints >= 2);
    assert.deepEqual(full, recordPath(good));
  });

  it("a home of the column layout verifies, is read the same, and is moved once by the kernel's store", () => {
    const before = openAuditReader(good, { direct: true });
    const want = before.scanAudit(1, N);
    before.close();
    const copy = tamperedCopy(old, dir, "intact old", "SELECT 1");
    assert.equal(readerVerify(copy).ok, true);
    // Read in place (as beside a running kernel of the old version): the same records, nothing moved.
    const inPlace = openAuditReader(copy, { direct: true });
    try {
      assert.equal(inPlace.columnLayout, true);
      const read = [...inPlace.records()];
      assert.equal(read.length, want.length);
      for (let i = 0; i < read.length; i++)
        assert.ok(isDeepStrictEqual(read[i], want[i]), `record ${i + 1} reads differently in place`);
      assert.equal(verifyAudit(inPlace).ok, true);
    } finally {
      inPlace.close();
    }
    // Neither reader moved the file.
    const plain = new Database(copy, { readonly: true });
    assert.ok((plain.pragma("table_info(audit)") as { name: string }[]).some((c) => c.name === "persona"));
    plain.close();
    const s = new SqliteStore(copy);
    try {
      const got = s.scanAudit(1, N);
      assert.equal(got.length, want.length);
      for (let i = 0; i < got.length; i++) assert.ok(isDeepStrictEqual(got[i], want[i]), `record ${i + 1} reads differently`);
      assert.equal(verifyAudit(s).ok, true);
      const cols = (s.db.pragma("table_info(audit)") as { name: string }[]).map((c) => c.name);
      assert.deepEqual(cols, ["seq", "hash", "record"]);
      assert.equal(
        (s.db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name = 'audit_persona'").get() as { n: number }).n,
        0,
      );
    } finally {
      s.close();
    }
  });

  // [what, sql on the old columns, seq found bad, (unused)]
  const cases: [string, string, number, boolean][] = [
    ["a text field changed", "UPDATE audit SET message = 'forged' WHERE seq = 40", 40, true],
    [
      "one byte of an intent changed",
      "UPDATE audit SET intent = CAST(X'00' AS BLOB) || substr(intent, 2) WHERE seq = 41",
      41,
      true,
    ],
    ["an integer changed", "UPDATE audit SET duration_us = duration_us + 1 WHERE seq = 42", 42, true],
    ["a null field filled", "UPDATE audit SET status = 'SUCCESS' WHERE seq = 57", 57, true],
    ["a field nulled", "UPDATE audit SET caps = NULL WHERE seq = 45", 45, true],
    ["an intent stored as text of the same bytes", "UPDATE audit SET intent = CAST(intent AS TEXT) WHERE seq = 46", 46, true],
    ["a text stored as a blob of the same bytes", "UPDATE audit SET target = CAST(target AS BLOB) WHERE seq = 50", 50, false],
    ["the hash stored as its own hex text", "UPDATE audit SET hash = lower(hex(hash)) WHERE seq = 47", 47, true],
    ["the previous hash shortened", "UPDATE audit SET prev_hash = substr(prev_hash, 1, 31) WHERE seq = 48", 48, true],
    ["an integer field stored as a fraction", "UPDATE audit SET duration_us = 24.5 WHERE seq = 49", 49, false],
    ["a negative integer", "UPDATE audit SET time = -time WHERE seq = 51", 51, true],
    ["an integer beyond 2^53", "UPDATE audit SET request_id = 9007199254740993 WHERE seq = 53", 53, false],
    ["a text field holding an integer", "UPDATE audit SET persona = 7 WHERE seq = 54", 54, false],
  ];
  it("every tamper of a home of the column layout is found at its record after the move", () => {
    for (const [what, sql, seq] of cases) {
      const p = tamperedCopy(old, dir, what, sql);
      const full = readerVerify(p);
      assert.equal(full.ok, false, what);
      assert.equal(full.firstBad?.seq, seq, `${what}: ${full.firstBad?.reason}`);
      assert.deepEqual(full, recordPath(p), what);
    }
  });

  it("an intact record outside the kernel's types (a negative integer, written by the generic encoder) verifies and reads back", async () => {
    const p = join(dir, "negative.db");
    const entry = (i: number): AuditEntry => ({ session: "s", persona: "p", phase: "complete", requestId: i === 3 ? -3 : i - 1 });
    await fillAuditFile(p, 5, entry, { batchMax: 8, checkpointEvery: 50 });
    assert.equal(readerVerify(p).ok, true);
    const s = new SqliteStore(p);
    try {
      assert.equal(s.scanAudit(3, 1)[0]?.requestId, -3);
    } finally {
      s.close();
    }
    toColumnLayout(p);
    assert.equal(readerVerify(p).ok, true);
  });

  it("a kernel started on a home of the column layout moves it, checks the chain it inherits, and appends to it: the whole log verifies with the kernel key", async () => {
    const t = await startKernel({ auditCheckpointEvery: 10 });
    try {
      const c = await t.admin();
      for (let i = 0; i < 12; i++) await c.storage.write(`obj://ws1/old/${i}`, `v${i}`);
    } finally {
      await t.stop();
    }
    const db = join(t.home, "kernel.db");
    try {
      toColumnLayout(db);
      const plain = new Database(db, { readonly: true });
      const before = (plain.prepare("SELECT max(seq) AS s FROM audit").get() as { s: number }).s;
      const persona = (plain.prepare("SELECT persona FROM audit WHERE seq = 2").get() as { persona: string }).persona;
      plain.close();
      const again = await startKernel({ auditCheckpointEvery: 10 }, t.home);
      try {
        await (await again.admin()).storage.read("obj://ws1/old/3");
      } finally {
        await again.stop();
      }
      const key = rawPublicKey(createPublicKey(createPrivateKey(readFileSync(join(t.home, "kernel.key")))));
      const reader = openAuditReader(db);
      try {
        const v = verifyAudit(reader, { trustedKey: key, maxUnsigned: 10 });
        assert.equal(v.ok, true, v.firstBad?.reason);
        assert.ok(v.records > before + 2, "the new kernel's records follow the moved ones");
        assert.equal(reader.record(2)?.persona, persona, "a moved record reads as it did");
        assert.ok(reader.scanAudit(before + 1, 100).some((r) => r.op === "storage.read"));
      } finally {
        reader.close();
      }
    } finally {
      removeHome(t.home);
    }
  });
  it("the move is committed in batches: killed mid-way it leaves the old layout (read and verified the same), and the next open finishes it", () => {
    const before = openAuditReader(good, { direct: true });
    const want = [...before.records()];
    before.close();
    const copy = tamperedCopy(old, dir, "killed move", "PRAGMA journal_mode = WAL");
    const mover = new URL("../src/store/sqlite/audit-layout.js", import.meta.url).href;
    const child = spawnSync(
      process.execPath,
      [
        "--input-type=module",
        "-e",
        `import Database from "better-sqlite3";
         import { migrateAuditLayout } from ${JSON.stringify(mover)};
         const db = new Database(${JSON.stringify(copy)});
         migrateAuditLayout(db, 10, (moved) => { if (moved >= 40) process.kill(process.pid, "SIGKILL"); });`,
      ],
      { cwd: fileURLToPath(new URL("..", import.meta.url)), encoding: "utf8" },
    );
    assert.equal(child.signal, "SIGKILL", child.stderr);
    const plain = new Database(copy, { readonly: true });
    try {
      assert.ok(
        (plain.pragma("table_info(audit)") as { name: string }[]).some((c) => c.name === "persona"),
        "still the old layout",
      );
      assert.equal(
        (plain.prepare("SELECT count(*) FROM audit_new").pluck().get() as number) >= 40,
        true,
        "batches were committed",
      );
    } finally {
      plain.close();
    }
    const reader = openAuditReader(copy);
    try {
      assert.equal(reader.columnLayout, true);
      assert.ok(isDeepStrictEqual([...reader.records()], want), "the old layout reads as before");
      assert.equal(verifyAudit(reader).ok, true);
    } finally {
      reader.close();
    }
    const s = new SqliteStore(copy);
    try {
      assert.ok(isDeepStrictEqual(s.scanAudit(1, N), want), "the next open moved every record");
      assert.equal(verifyAudit(s).ok, true);
      assert.equal(s.db.prepare("SELECT count(*) FROM sqlite_master WHERE name = 'audit_new'").pluck().get() as number, 0);
    } finally {
      s.close();
    }
  });

  it("the move's WAL stays about one batch, not the table's size", () => {
    const p = join(dir, "large-old.db");
    const db = new Database(p);
    try {
      db.pragma("journal_mode = WAL");
      db.exec(COLUMN_LAYOUT_DDL);
      const put = db.prepare(
        "INSERT INTO audit (seq, time, kernel, session, persona, phase, intent, prev_hash, hash) VALUES (?, 1, 'k', 's', 'p', 'intent', zeroblob(1048576), zeroblob(32), zeroblob(32))",
      );
      for (let i = 1; i <= 64; i++) put.run(i);
      db.pragma("wal_checkpoint(TRUNCATE)");
      assert.equal(migrateAuditLayout(db), 64);
      const wal = statSync(`${p}-wal`).size;
      assert.ok(wal < 40 * 1024 * 1024, `the WAL grew to ${wal} bytes moving 64 MiB`);
      assert.equal(db.prepare("SELECT count(*) FROM audit WHERE length(record) > 1048576").pluck().get(), 64);
    } finally {
      db.close();
    }
  });
});
