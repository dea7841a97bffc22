import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { KpipError } from "@kpip/client";
import { generateIdentity } from "@kpip/protocol";
import Database from "better-sqlite3";
import { recordHash } from "../src/audit/record.js";
import { AuditChainError, HOME_FILES, Kernel, SqliteStore, verifyAudit } from "../src/index.js";
import type { AuditRow } from "../src/store/types.js";
import { resegment, unsegment } from "./audit-fill.js";
import { addPersonaKey, removeHome, startKernel, until, withKernel } from "./harness.js";

const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));
const kpip = (...args: string[]) => spawnSync(process.execPath, [MAIN, ...args], { encoding: "utf8" });
const openDb = (home: string) => new SqliteStore(join(home, HOME_FILES.database));

/** A home whose config file sets `settings` (so the CLI's verify reads the same bound as the kernel). */
function homeWith(settings: Record<string, unknown>): string {
  const home = mkdtempSync(join(tmpdir(), "kpip-integrity-"));
  writeFileSync(join(home, "config.json"), JSON.stringify(settings), { mode: 0o600 });
  return home;
}

/**
 * The attack without the key: erase records `from`..`to`, renumber and re-hash every record
 * after them, and delete the checkpoints from the edit on (they would no longer match).
 */
function rewriteWithoutKey(home: string, from: number, to: number): void {
  // As rows of the `audit` table, then moved back into the segment files as a kernel's start would.
  unsegment(join(home, HOME_FILES.database));
  const s = openDb(home);
  try {
    const rows = s.scanAudit(1, 1_000_000);
    const keep = rows.filter((r) => r.seq < from);
    let prev = keep.at(-1)?.hash as Uint8Array;
    const forged: AuditRow[] = rows
      .filter((r) => r.seq > to)
      .map((r, i) => {
        const row: AuditRow = { ...r, seq: from + i, prevHash: prev };
        row.hash = recordHash(row);
        prev = row.hash;
        return row;
      });
    s.db.prepare("DELETE FROM audit WHERE seq >= ?").run(from);
    s.db.prepare("DELETE FROM audit_checkpoints WHERE seq >= ?").run(from);
    s.appendAudit(forged);
  } finally {
    s.close();
  }
  resegment(join(home, HOME_FILES.database));
}

describe("audit integrity without the key, and audit growth", () => {
  it("a chain rewritten without the key fails verify, and no kernel signs over it", async () => {
    const home = homeWith({ auditCheckpointEvery: 20 });
    try {
      const t = await startKernel({}, home);
      const admin = await t.admin();
      for (let i = 0; i < 60; i++) await admin.system.health();
      await t.stop();
      const before = openDb(home);
      assert.ok(verifyAudit(before, { maxUnsigned: 20 }).ok, "the kernel never leaves more than 20 records unsigned");
      const signed = before.checkpoints().length;
      before.close();

      rewriteWithoutKey(home, 10, 14);
      const after = openDb(home);
      assert.ok(verifyAudit(after).ok, "the rewrite is internally consistent: only the checkpoint bound exposes it");
      const v = verifyAudit(after, { maxUnsigned: 20 });
      assert.equal(v.ok, false);
      assert.match(v.firstBad?.reason ?? "", /checkpoints were removed/);
      const cps = after.checkpoints().length;
      after.close();
      const cli = kpip("audit", "verify", "--home", home);
      assert.equal(cli.status, 1, cli.stdout + cli.stderr);
      assert.match(cli.stdout, /BROKEN at record \d+: .*signed checkpoint/);

      await assert.rejects(new Kernel({ home, logLevel: "silent" }).start(), (e) => e instanceof AuditChainError);
      const k = kpip("kernel", "--home", home, "--log-level", "silent");
      assert.equal(k.status, 2, k.stderr);
      assert.match(k.stderr, /^kpip kernel: the audit chain in this home does not verify/);
      const end = openDb(home);
      assert.equal(end.checkpoints().length, cps, "nothing was signed over the forged chain");
      assert.ok(cps < signed);
      end.close();
    } finally {
      removeHome(home);
    }
  });

  it("a checkpoint is signed within auditCheckpointIntervalMs of a record, however few records arrive", async () => {
    await withKernel({ auditCheckpointEvery: 10_000, auditCheckpointIntervalMs: 100 }, async (t) => {
      const admin = await t.admin();
      for (let round = 0; round < 2; round++) {
        await admin.system.health();
        const head = t.k.inspect.lastAudit()?.seq ?? 0;
        await until(() => (t.k.inspect.checkpoints().at(-1)?.seq ?? 0) >= head, 10_000, "a checkpoint over the head");
      }
      assert.ok(verifyAudit(t.k.inspect, { maxUnsigned: 10_000 }).ok);
    });
  });

  it("refusals keep no bulk bytes, are recorded within a rate and aggregated beyond it, and a flood ends the session", async () => {
    await withKernel({ auditRefusalRate: 2, auditRefusalPersonaRate: 2, auditRefusalFloodMax: 150 }, async (t) => {
      const identity = generateIdentity("nocap");
      addPersonaKey(t, "nocap", identity.publicKey);
      const c = await t.connect(identity, []);
      const big = Buffer.alloc(60_000, 7);
      const sent = 100;
      const started = Date.now();
      for (let i = 0; i < sent; i++) {
        await assert.rejects(c.storage.write("obj://ws1/x", big), (e) => e instanceof KpipError && e.errorClass === "CAPABILITY");
      }
      const mine = () => t.k.inspect.queryAudit({ persona: "nocap", limit: 10_000 }).filter((r) => r.phase === "refused");
      const counted = (rows: AuditRow[]) =>
        rows.reduce((n, r) => n + (r.op === "audit.suppressed" ? Number(/^(\d+) refusals/.exec(r.message ?? "")?.[1]) : 1), 0);
      const rows = await until(() => (counted(mine()) === sent ? mine() : undefined), 10_000, "every refusal accounted for");
      const single = rows.filter((r) => r.op !== "audit.suppressed");
      // A burst of 5× the rate, then the rate (2 per second) while the refusals lasted.
      const allowance = 10 + 2 * Math.ceil((Date.now() - started) / 1000);
      assert.ok(single.length >= 10 && single.length <= allowance, `${single.length} single records (at most ${allowance})`);
      for (const r of single) {
        assert.equal(r.intent, null, "no bulk bytes in a refusal record");
        assert.equal(r.intentHash?.length, 32);
      }
      assert.ok(rows.some((r) => r.op === "audit.suppressed" && /CAPABILITY \d+/.test(r.message ?? "")));
      const bytes = rows.reduce((n, r) => n + (r.intent?.length ?? 0) + (r.message?.length ?? 0) + 200, 0);
      assert.ok(bytes < 100_000, `${sent} refusals of 60 KB intents cost ${bytes} bytes of audit`);

      // A flood that goes on: the session is ended (fatal RESOURCE/REFUSAL_FLOOD), audited.
      const ended = await (async () => {
        for (let i = 0; i < 200; i++) {
          const e = await c.system.health().catch((x: unknown) => x);
          if (!(e instanceof KpipError && e.errorClass === "CAPABILITY")) return e;
        }
        return undefined;
      })();
      assert.ok(ended instanceof Error, "the session was ended");
      await until(() =>
        t.k.inspect.queryAudit({ persona: "nocap", limit: 10_000 }).some((r) => /REFUSAL_FLOOD/.test(r.message ?? "")),
      );
      const admin = await t.admin();
      assert.equal((await admin.system.health()).status, "ok");
    });
  });

  it("retention prunes only behind a signed checkpoint; verify and the next kernel accept the pruned log", async () => {
    const home = homeWith({ auditCheckpointEvery: 10, auditRetainRecords: 25 });
    try {
      let t = await startKernel({}, home);
      const admin = await t.admin();
      for (let i = 0; i < 80; i++) await admin.system.health();
      await t.stop();
      t = await startKernel({}, home);
      const first = await until(
        () => {
          const n = t.k.inspect.firstAuditSeq() ?? 1;
          return n > 1 ? n : undefined;
        },
        10_000,
        "the first pruning pass",
      );
      const cps = t.k.inspect.checkpoints();
      assert.equal(cps[0]?.seq, first - 1, "the pruned log starts right after a signed checkpoint, which is kept");
      assert.ok((t.k.inspect.lastAudit()?.seq ?? 0) - first + 1 >= 25, "at least auditRetainRecords are kept");
      await (await t.admin()).system.health();
      await t.stop();
      const v = kpip("audit", "verify", "--home", home, "--json");
      assert.equal(v.status, 0, v.stdout + v.stderr);
      const out = JSON.parse(v.stdout);
      assert.equal(out.prunedThrough, first - 1);
      assert.equal(out.prunedBy?.through, first - 1, "the kernel's audit.pruned record accounts for the pruned start");
      assert.ok(!out.warnings.some((w: string) => /audit\.pruned/.test(w)), out.warnings.join("\n"));
      const again = await startKernel({}, home);
      await again.stop();
    } finally {
      removeHome(home);
    }
  });

  it("the log's start moved to a signed checkpoint by someone with the home: verify warns that no pruning of the kernel's removed those records", async () => {
    // No retention: every record is kept. The attacker raises the retained point to a signed checkpoint.
    const home = homeWith({ auditCheckpointEvery: 5 });
    try {
      const t = await startKernel({}, home);
      const admin = await t.admin();
      for (let i = 0; i < 20; i++) await admin.system.health();
      await t.stop();
      const db = new Database(join(home, HOME_FILES.database));
      const cut = (db.prepare("SELECT seq FROM audit_checkpoints ORDER BY seq LIMIT 1 OFFSET 2").get() as { seq: number }).seq;
      db.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES ('audit_retained_through', ?)").run(String(cut));
      db.close();
      const v = kpip("audit", "verify", "--home", home, "--json");
      const out = JSON.parse(v.stdout);
      // The chain alone accepts it: a log that starts right after a signed checkpoint.
      assert.equal(out.ok, true, v.stdout);
      assert.equal(out.prunedThrough, cut);
      assert.equal(out.prunedBy, undefined);
      assert.ok(
        out.warnings.some((w: string) =>
          new RegExp(`records 1\\.\\.${cut} are not in this log, and no audit\\.pruned record.*auditRetainRecords 0`).test(w),
        ),
        out.warnings.join("\n"),
      );
      const text = kpip("audit", "verify", "--home", home);
      assert.match(text.stdout, /pruned by whom: see the warning/);
      assert.doesNotMatch(text.stdout, /pruned by retention/);
    } finally {
      removeHome(home);
    }
  });
});
