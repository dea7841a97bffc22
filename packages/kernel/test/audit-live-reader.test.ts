import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { AuditLog } from "../src/audit/log.js";
import { openAuditReader } from "../src/audit/reader.js";
import { verifyAuditReader } from "../src/audit/verify-parallel.js";
import { acquireHome } from "../src/home.js";
import { SqliteStore, verifyAudit } from "../src/index.js";
import { segmentName } from "../src/store/audit-segments.js";
import { removeHome, startKernel, until, withKernel } from "./harness.js";

// Pins the SQLite locking mode: with locking_mode=EXCLUSIVE (6 fewer syscalls a commit) a
// running kernel's database cannot be opened by anyone else — `kpip audit tail/query/verify`
// on a live home failed with "database is locked" (BENCHMARKS.md, "Fewer syscalls a commit").
describe("the read-only audit reader beside a running kernel", () => {
  it("opens the live database (no copy), verifies it, and the kernel keeps committing while it is open", async () => {
    await withKernel({}, async (t) => {
      const c = await t.admin();
      for (let i = 0; i < 20; i++) await c.call("system.health", "kernel://");
      const reader = openAuditReader(join(t.home, "kernel.db"));
      try {
        assert.equal(reader.snapshot, false, "read beside the kernel, not from a private copy");
        // The index step runs a turn or ~2 ms after the answers: the reader sees them once it has.
        const before = await until(
          () => {
            const n = reader.countAudit();
            return n >= 20 ? n : undefined;
          },
          10_000,
          "the reader to see the 20 answered calls",
        );
        const v = await verifyAuditReader(reader);
        assert.equal(v.ok, true, v.firstBad?.reason);
        for (let i = 0; i < 5; i++) await c.call("system.health", "kernel://");
        // SQLite indexes the journalled records within ~2 ms of their answers.
        await until(() => reader.countAudit() >= before + 5, 10_000, "the reader to see the commits made while it is open");
      } finally {
        reader.close();
      }
    });
  });

  it("verifies a log another connection commits to in one snapshot: a commit between the count and the walk is no false failure", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-live-"));
    const { privateKey } = generateKeyPairSync("ed25519");
    const writer = new SqliteStore(join(dir, "kernel.db"));
    const log = new AuditLog(writer, "k", privateKey, { batchMax: 8, checkpointEvery: 1000 });
    const rec = () => log.append({ session: "s", persona: "p", phase: "session" });
    const reader = new SqliteStore(join(dir, "kernel.db"));
    try {
      for (let i = 0; i < 5; i++) await rec();
      // The writer (a live kernel) commits right after the verifier counted.
      const count = reader.countAudit.bind(reader);
      let committed = false;
      reader.countAudit = () => {
        const n = count();
        if (!committed) {
          committed = true;
          void rec();
          log.flush();
        }
        return n;
      };
      const v = verifyAudit(reader);
      assert.ok(committed);
      assert.equal(v.ok, true, v.firstBad?.reason);
      assert.equal(v.records, 5, "the snapshot of the count");
      assert.equal(verifyAudit(reader).records, 6);
    } finally {
      log.close();
      reader.close();
      writer.close();
      removeHome(dir);
    }
  });
  it("verifies beside a kernel whose retention removes segment files its snapshot names: they are read still, no false failure", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-live-"));
    // Held as a kernel holds it: the reader reads the live database, not a private copy.
    const release = acquireHome(home);
    const { privateKey } = generateKeyPairSync("ed25519");
    const writer = new SqliteStore(join(home, "kernel.db"));
    writer.useAuditSegments(join(home, "audit"), undefined, { rotateAbove: 2048, presync: false });
    const log = new AuditLog(writer, "k", privateKey, { batchMax: 4, checkpointEvery: 1000 });
    let live: ReturnType<typeof openAuditReader> | undefined;
    try {
      for (let i = 0; i < 40; i++) await log.append({ session: "s", persona: "p", phase: "session" });
      writer.indexAudit?.();
      live = openAuditReader(join(home, "kernel.db"));
      assert.equal(live.snapshot, false, "read beside the kernel");
      // Two retention passes (a kernel prunes once a minute; a verify of millions of records on a
      // busy home outlasts two) commit right after the verify's snapshot began: the second unlinks
      // the segment files wholly below the first one's retained point, which the snapshot still names.
      const count = live.countAudit;
      let pruned = false;
      live.countAudit = () => {
        const n = count();
        if (!pruned) {
          pruned = true;
          writer.pruneAudit(30);
          writer.pruneAudit(30);
        }
        return n;
      };
      const v = verifyAudit(live);
      assert.ok(pruned);
      assert.ok(!existsSync(join(home, "audit", segmentName(1))), "retention removed the first segment meanwhile");
      assert.equal(v.ok, true, v.firstBad?.reason);
      assert.equal(v.records, 40, "the snapshot's records, all read");
    } finally {
      live?.close();
      log.close();
      writer.close();
      release();
      removeHome(home);
    }
  });
});

describe("the private copy a reader makes of a stopped home", () => {
  it("is named after its reader's pid; a copy left by a reader that died (kpip audit killed) is removed by the next, a live reader's is kept", async () => {
    const tmp = mkdtempSync(join(tmpdir(), "kpip-tmpdir-"));
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    const before = process.env.TMPDIR;
    try {
      const t = await startKernel({}, home);
      await t.stop();
      const dead = spawnSync("true").pid as number;
      const ns = /\[(\d+)\]/.exec(readlinkSync("/proc/self/ns/pid"))?.[1];
      const left = join(tmp, `kpip-audit-${ns}.${dead}-aB3dE9`);
      const live = join(tmp, `kpip-audit-${ns}.${process.ppid}-zY1xW2`);
      const older = join(tmp, "kpip-audit-Q1w2E3");
      // A reader in another container sharing the temp directory: its pids are not ours to judge.
      const elsewhere = join(tmp, `kpip-audit-1.${dead}-cD4eF5`);
      for (const d of [left, live, older, elsewhere]) {
        mkdirSync(d);
        writeFileSync(join(d, "kernel.db"), "a copy");
      }
      process.env.TMPDIR = tmp;
      const reader = openAuditReader(join(home, "kernel.db"));
      try {
        assert.equal(reader.snapshot, true);
        assert.match(reader.path, new RegExp(`/kpip-audit-${ns}\\.${process.pid}-[^/]+/kernel\\.db$`));
        assert.equal(existsSync(left), false, "the dead reader's copy is removed");
        assert.equal(existsSync(live), true, "a live process's copy is kept");
        assert.equal(existsSync(older), true, "a copy whose reader is not named is kept");
        assert.equal(existsSync(elsewhere), true, "a copy made in another pid namespace is kept");
      } finally {
        reader.close();
      }
      assert.deepEqual(readdirSync(tmp).sort(), [older, live, elsewhere].map((d) => d.slice(tmp.length + 1)).sort());
    } finally {
      if (before === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = before;
      removeHome(home);
      removeHome(tmp);
    }
  });
});
