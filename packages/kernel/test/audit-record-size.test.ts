import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, openSync, writeSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { CborWriter } from "../src/audit/cbor-writer.js";
import { openAuditReader } from "../src/audit/reader.js";
import { batchShape, largestRecordBytes, MAX_RECORD_BYTES } from "../src/audit/record-size.js";
import { verifyAuditFile } from "../src/audit/verify-parallel.js";
import { AuditChainError, ConfigError, HOME_FILES, Kernel, resolveConfig, SqliteStore, verifyAudit } from "../src/index.js";
import { recordInSegment } from "./audit-fill.js";
import { removeHome, startKernel } from "./harness.js";

const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));
const kpip = (...args: string[]) => spawnSync(process.execPath, [MAIN, ...args], { encoding: "utf8" });

/**
 * A stored record is read only up to MAX_RECORD_BYTES (record-size.ts): a tampered home with a
 * record larger than any kernel writes is reported at that record by verify, shown as a
 * placeholder by readers, and refused by a kernel, without the record being read into memory.
 */
describe("the size bound on a stored audit record", () => {
  let home: string | undefined;
  let db: string;
  let head: number;
  let large: number;
  before(async () => {
    // One record over the default batch's record size (a kept intent of 100 KiB): read alone, not in a batch.
    const t = await startKernel({ auditCheckpointEvery: 1000, auditIntentMaxBytes: 160 * 1024 });
    home = t.home;
    try {
      const c = await t.admin();
      await c.storage.write("obj://ws1/small", "v");
      await c.storage.write("obj://ws1/large", Buffer.alloc(100 * 1024, 7));
      for (let i = 0; i < 3; i++) await c.storage.write(`obj://ws1/t/${i}`, `v${i}`);
    } finally {
      await t.stop();
    }
    db = join(t.home, HOME_FILES.database);
    const s = new SqliteStore(db);
    const rows = s.scanAudit(1, 10_000);
    s.close();
    head = (rows.at(-1) as { seq: number }).seq;
    large = (rows.find((r) => (r.intent?.length ?? 0) > batchShape().recordBytes) as { seq: number }).seq;
  });
  after(() => {
    if (home) removeHome(home);
  });

  it("a record past the batch size is read alone: it decodes and verifies like any other", async () => {
    const r = openAuditReader(db);
    try {
      assert.ok((r.record(large)?.intent?.length ?? 0) > 100 * 1024, "the large record's intent is read");
      const seen = [...r.records()].find((x) => x.seq === large);
      assert.ok((seen?.intent?.length ?? 0) > 100 * 1024, "the scan reads the large record's intent");
      assert.equal(seen?.persona, "admin");
    } finally {
      r.close();
    }
    const v = await verifyAuditFile(db);
    assert.equal(v.ok, true, v.firstBad?.reason);
  });

  it("a record over MAX_RECORD_BYTES is reported by verify, shown as a placeholder, and refused by a kernel, never read", async () => {
    // The head record (the one a starting kernel reads) declared past the bound: its length field in the segment forged.
    const size = MAX_RECORD_BYTES + 1;
    const { file, at } = recordInSegment(db, head);
    const fd = openSync(file, "r+");
    const len = Buffer.alloc(4);
    len.writeUInt32LE(size);
    writeSync(fd, len, 0, 4, at - 4);
    closeSync(fd);
    const heap = process.memoryUsage().arrayBuffers;

    const s = new SqliteStore(db);
    try {
      const v = verifyAudit(s);
      assert.equal(v.ok, false);
      assert.equal(v.firstBad?.seq, head);
      assert.match(v.firstBad?.reason ?? "", new RegExp(`${size} bytes, more than the ${MAX_RECORD_BYTES}`));
      const last = s.lastAudit();
      assert.equal(last?.seq, head);
      assert.equal(last?.persona, "?");
      assert.match(last?.message ?? "", /bytes, more than .*: it was not read/);
      assert.equal(s.scanAudit(head, 10).at(-1)?.persona, "?");
    } finally {
      s.close();
    }
    const r = openAuditReader(db, { direct: true });
    try {
      assert.match(r.record(head)?.message ?? "", /it was not read/);
      assert.equal([...r.records({ newest: true })][0]?.persona, "?");
    } finally {
      r.close();
    }
    assert.ok(process.memoryUsage().arrayBuffers - heap < MAX_RECORD_BYTES / 4, "the record was never allocated");

    const cli = kpip("audit", "verify", "--home", home as string, "--json");
    assert.equal(cli.status, 1, cli.stderr);
    assert.equal(JSON.parse(cli.stdout).firstBad.seq, head);
    const shown = kpip("audit", "show", String(head), "--home", home as string, "--json");
    assert.equal(shown.status, 0, shown.stderr);
    assert.match(JSON.parse(shown.stdout).record.message, /it was not read/);

    await assert.rejects(
      new Kernel({ home, logLevel: "silent" }).start(),
      (e) => e instanceof AuditChainError && new RegExp(`record ${head}: .*${size} bytes`).test(e.message),
    );
  });

  it("the config refuses limits under which the kernel could write a record over the bound", () => {
    const ok = resolveConfig({ flags: { home } });
    assert.ok(largestRecordBytes(ok) <= MAX_RECORD_BYTES);
    assert.throws(
      () => resolveConfig({ flags: { home, maxBodyBytes: MAX_RECORD_BYTES - 1024 * 1024, auditIntentMaxBytes: 1024 * 1024 } }),
      (e) => e instanceof ConfigError && /more than the \d+ readers accept/.test(e.message),
    );
  });

  it("the record encoder gives back its buffer after an unusually large record", () => {
    class Probe extends CborWriter {
      write(n: number): void {
        this.restart();
        this.ensure(n);
        this.pos = n;
      }
      get size(): number {
        return this.buf.length;
      }
    }
    const p = new Probe();
    p.write(8 * 1024 * 1024);
    assert.ok(p.size >= 8 * 1024 * 1024);
    p.write(100);
    assert.ok(p.size <= 64 * 1024, `kept ${p.size} bytes after a small record`);
  });
});
