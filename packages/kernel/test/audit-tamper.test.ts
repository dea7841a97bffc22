import assert from "node:assert/strict";
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { rawPublicKey, signBytes } from "@kpip/protocol";
import { checkpointMessage } from "../src/audit/record.js";
import { SqliteStore, verifyAudit } from "../src/index.js";
import { rechain as rechainDb, rewriteRecord, tamperedStore } from "./audit-fill.js";
import { removeHome, startKernel } from "./harness.js";
import { RawPeer, requestFrame } from "./wire.js";

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest();

/** A stopped kernel home whose log holds accepted writes and reads and several kinds of refusal. */
async function history(): Promise<string> {
  const t = await startKernel({ auditCheckpointEvery: 8 });
  const c = await t.admin();
  for (let i = 0; i < 6; i++) await c.storage.write(`obj://ws1/h/${i}`, `v${i}`);
  await c.storage.read("obj://ws1/h/1");
  await c.call("nope.op", "kernel://").catch(() => {});
  const p = await RawPeer.admin(t);
  p.send(requestFrame(900, { op: "system.health", target: "kernel://", args: {} }, { persona: "mallory" }));
  await p.response(900);
  p.send(requestFrame(901, { op: "system.health", target: "kernel://", args: {} }, { caps: [] }));
  await p.response(901);
  p.close();
  await t.stop();
  return t.home;
}

const open = (home: string) => new SqliteStore(join(home, "kernel.db"));
const rechain = (s: SqliteStore, fromSeq: number) => rechainDb(s.db, fromSeq);

describe("audit log: per-request records and tamper evidence", () => {
  it("each request has the right records: refused → one 'refused'; with effects → 'intent' then 'outcome'", async () => {
    const home = await history();
    const s = open(home);
    const rows = s.scanAudit(1, 100_000).filter((r) => r.requestId !== null);
    const byRequest = new Map<string, typeof rows>();
    for (const r of rows) {
      const k = `${r.session}:${r.requestId}`;
      byRequest.set(k, [...(byRequest.get(k) ?? []), r]);
    }
    const writes = [...byRequest.values()].filter((rs) => rs[0]?.op === "storage.write");
    assert.equal(writes.length, 6);
    for (const rs of writes) {
      assert.deepEqual(
        rs.map((r) => r.phase),
        ["intent", "outcome"],
      );
      const [i, o] = rs as [(typeof rows)[0], (typeof rows)[0]];
      assert.ok(i.seq < o.seq);
      assert.deepEqual(Buffer.from(i.intentHash ?? []), sha256(i.intent as Uint8Array));
      assert.deepEqual(Buffer.from(o.intentHash ?? []), Buffer.from(i.intentHash ?? []), "the outcome names the intent by hash");
      assert.equal(o.status, "SUCCESS");
    }
    const refused = [...byRequest.values()].filter((rs) => rs.some((r) => r.phase === "refused"));
    assert.ok(refused.length >= 2);
    for (const rs of refused) assert.equal(rs.length, 1, "a refused request has exactly one record");
    const auth = refused.find((rs) => rs[0]?.requestId === 900)?.[0];
    const cap = refused.find((rs) => rs[0]?.requestId === 901)?.[0];
    assert.deepEqual([auth?.errorClass, cap?.errorClass], ["AUTH", "CAPABILITY"]);
    const v = verifyAudit(s);
    assert.ok(v.ok, v.firstBad?.reason);
    assert.ok(v.records > 0 && v.checkpoints >= 1);
    s.close();
    removeHome(home);
  });

  const cases: [string, (s: SqliteStore) => void, number | undefined, RegExp][] = [
    ["a modified message (seq 3)", (s) => rewriteRecord(s.db, 3, (r) => (r.message = "x")), 3, /content/],
    ["a modified status", (s) => rewriteRecord(s.db, 4, (r) => (r.status = "FORGED")), 4, /content/],
    ["a deleted middle record", (s) => s.db.prepare("DELETE FROM audit WHERE seq = 5").run(), 5, /missing/],
    [
      "a forged record inserted in the middle",
      (s) => {
        s.db.prepare("UPDATE audit SET seq = seq + 100000 WHERE seq >= 6").run();
        s.db.prepare("INSERT INTO audit SELECT 6, hash, record FROM audit WHERE seq = 5").run();
        rewriteRecord(s.db, 6, (r) => {
          r.seq = 6;
          r.op = "storage.delete";
        });
        s.db.prepare("UPDATE audit SET seq = seq - 100000 + 1 WHERE seq > 100000").run();
      },
      6,
      /content|link/,
    ],
    [
      "two records' contents swapped (reordered)",
      (s) => {
        s.db.prepare("UPDATE audit SET seq = -1 WHERE seq = 4").run();
        s.db.prepare("UPDATE audit SET seq = 4 WHERE seq = 5").run();
        s.db.prepare("UPDATE audit SET seq = 5 WHERE seq = -1").run();
      },
      4,
      /link|content/,
    ],
    [
      "a tail truncated past a checkpoint",
      (s) => {
        const first = s.checkpoints()[0]?.seq as number;
        s.db.prepare("DELETE FROM audit WHERE seq >= ?").run(first);
      },
      undefined,
      /missing|truncated/,
    ],
    [
      "a modified record with the whole chain after it recomputed",
      (s) => {
        rewriteRecord(s.db, 3, (r) => (r.message = "nothing happened"));
        rechain(s, 3);
      },
      undefined,
      /checkpoint/,
    ],
    [
      "a checkpoint whose hash was edited",
      (s) => {
        const cp = s.checkpoints()[0]?.seq as number;
        s.db.prepare("UPDATE audit_checkpoints SET hash = zeroblob(32) WHERE seq = ?").run(cp);
      },
      undefined,
      /checkpoint/,
    ],
  ];
  for (const [name, tamper, seq, reason] of cases) {
    it(`detects ${name}`, async () => {
      const home = await history();
      const clean = open(home);
      assert.ok(verifyAudit(clean).ok, "clean before tampering");
      clean.close();
      // Tampered as rows, then moved back into segment files: verify reads the segments' bytes.
      const s = tamperedStore(join(home, "kernel.db"), tamper);
      const v = verifyAudit(s);
      assert.equal(v.ok, false);
      if (seq !== undefined) assert.equal(v.firstBad?.seq, seq);
      assert.match(v.firstBad?.reason ?? "", reason);
      s.close();
      removeHome(home);
    });
  }

  it("a rewritten chain with checkpoints re-signed by another key fails against the trusted kernel key", async () => {
    const home = await history();
    const clean = open(home);
    const kernelKey = rawPublicKey(createPublicKey(createPrivateKey(readFileSync(join(home, "kernel.key")))));
    assert.ok(verifyAudit(clean, { trustedKey: kernelKey }).ok, "the real kernel key verifies the untouched log");
    clean.close();
    const s = tamperedStore(join(home, "kernel.db"), (t) => {
      rewriteRecord(t.db, 3, (r) => (r.message = "nothing happened"));
      rechain(t, 3);
    });
    const attacker = generateKeyPairSync("ed25519").privateKey;
    const attackerPub = rawPublicKey(createPublicKey(attacker));
    const rows = s.scanAudit(1, 100_000);
    for (const cp of s.checkpoints()) {
      const hash = rows.find((r) => r.seq === cp.seq)?.hash as Uint8Array;
      const sig = signBytes(attacker, checkpointMessage({ ...cp, hash }));
      s.db
        .prepare("UPDATE audit_checkpoints SET hash = ?, public_key = ?, signature = ? WHERE seq = ?")
        .run(Buffer.from(hash), Buffer.from(attackerPub), sig, cp.seq);
    }
    const v = verifyAudit(s, { trustedKey: kernelKey });
    assert.equal(v.ok, false);
    assert.match(v.firstBad?.reason ?? "", /key other than/);
    s.close();
    removeHome(home);
  });

  it("without the kernel key (left out of the evidence or removed), checkpoints re-signed by another key from a rewrite on, the earlier ones the kernel's, fail: a log has one key", async () => {
    const home = await history();
    const s = tamperedStore(join(home, "kernel.db"), (t) => {
      rewriteRecord(t.db, 10, (r) => (r.message = "nothing happened"));
      rechain(t, 10);
    });
    const cps = s.checkpoints();
    assert.ok(cps.some((c) => c.seq < 10) && cps.some((c) => c.seq >= 10), `checkpoints at ${cps.map((c) => c.seq)}`);
    const attacker = generateKeyPairSync("ed25519").privateKey;
    const attackerPub = rawPublicKey(createPublicKey(attacker));
    const rows = s.scanAudit(1, 100_000);
    // Only those the rewrite broke: the earlier ones still carry the kernel's key and signature.
    for (const cp of cps.filter((c) => c.seq >= 10)) {
      const hash = rows.find((r) => r.seq === cp.seq)?.hash as Uint8Array;
      const sig = signBytes(attacker, checkpointMessage({ ...cp, hash }));
      s.db
        .prepare("UPDATE audit_checkpoints SET hash = ?, public_key = ?, signature = ? WHERE seq = ?")
        .run(Buffer.from(hash), Buffer.from(attackerPub), sig, cp.seq);
    }
    const v = verifyAudit(s);
    assert.equal(v.ok, false);
    assert.equal(v.firstBad?.seq, cps.find((c) => c.seq >= 10)?.seq);
    assert.match(v.firstBad?.reason ?? "", /key other than the log's first checkpoint's/);
    s.close();
    removeHome(home);
  });
});
