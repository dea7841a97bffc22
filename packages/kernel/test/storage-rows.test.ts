// storage.bytes counts what an object costs the database, not only its body: its path's bytes and
// a fixed overhead for its row (store/object-cost.ts, PROTOCOL §12). Counting bodies alone, an
// empty object cost nothing however long its path (docs/security.md case 522).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import Database from "better-sqlite3";
import { HOME_FILES } from "../src/index.js";
import { OBJECT_ROW_BYTES, objectCost } from "../src/store/object-cost.js";
import { klass, removeHome, startKernel, type TestKernel, withKernel } from "./harness.js";

/** A path of `n` bytes, told apart by `i` (the attack's ~2,000-byte paths fit a 2,048-byte target). */
const longPath = (i: number, n = 2000) => `p${i}-`.padEnd(n, "x");

const rw = (ws: string) => [
  { ops: ["storage.write", "storage.delete", "storage.read"], targets: [`obj://${ws}/**`] },
  { ops: ["resource.query"], targets: ["persona://**"] },
];

const bytesOf = async (c: KernelClient, target: string) => (await c.resources.query(target)).usage["storage.bytes"] ?? 0;

/** Uploads `data` to `target` through begin, one chunk and commit. */
async function upload(c: KernelClient, target: string, data: Buffer): Promise<void> {
  const { upload: id } = (await c.call("storage.upload.begin", target, { size: data.length })).payload as { upload: string };
  if (data.length > 0) await c.call("storage.upload.chunk", target, { upload: id, offset: 0, data });
  const sha256 = createHash("sha256").update(data).digest();
  await c.call("storage.upload.commit", target, { upload: id, sha256, size: data.length });
}

describe("storage.bytes counts objects' rows (case 522)", () => {
  it("empty objects with 2,000-byte paths cost their paths and rows: the attack is refused RESOURCE at the limit", async () => {
    const cost = objectCost(longPath(0), 0);
    assert.equal(cost, 2000 + OBJECT_ROW_BYTES);
    await withKernel({}, async (t) => {
      // The red team's persona: a token limited to storage.bytes 1 wrote 4,000 of these at a usage of 0.
      const m = await t.persona("mallory", rw("mws"), { limits: { "storage.bytes": 1 } });
      const cm = await t.connect(m.identity, [m.token]);
      await assert.rejects(
        cm.storage.write(`obj://mws/${longPath(0)}`, ""),
        klass("RESOURCE", "storage.bytes exceeded for mallory"),
      );
      // Nor through an upload's begin (an empty declared size), nor its commit.
      await assert.rejects(
        cm.call("storage.upload.begin", `obj://mws/${longPath(0)}`, { size: 0 }),
        klass("RESOURCE", "storage.bytes"),
      );
      assert.equal(await bytesOf(cm, "persona://mallory"), 0);

      // A limit of ten such objects holds exactly ten, whatever their bodies (none).
      const e = await t.persona("eve", rw("ews"), { limits: { "storage.bytes": 10 * cost } });
      const ce = await t.connect(e.identity, [e.token]);
      let written = 0;
      for (let i = 0; i < 20; i++) {
        const r = await ce.storage.write(`obj://ews/${longPath(i)}`, "").then(
          () => "ok",
          (err: Error) => err,
        );
        if (r !== "ok") {
          assert.ok(
            klass("RESOURCE", `storage.bytes exceeded for eve: ${10 * cost} used + ${cost} > limit ${10 * cost}`)(r),
            String(r),
          );
          break;
        }
        written++;
      }
      assert.equal(written, 10, "refused at the limit");
      assert.equal(await bytesOf(ce, "persona://eve"), 10 * cost);
      // An upload's commit counts the row as a write does: one more is refused at its begin.
      await assert.rejects(upload(ce, "obj://ews/u", Buffer.alloc(0)), klass("RESOURCE", "storage.bytes exceeded for eve"));
    });
    // The workspace quota counts them too, whoever writes (the admin has no token limit).
    await withKernel({ workspaceStorageBytes: 3 * cost }, async (t) => {
      const admin = await t.admin();
      for (let i = 0; i < 3; i++) await admin.storage.write(`obj://qws/${longPath(i)}`, "");
      await assert.rejects(admin.storage.write(`obj://qws/${longPath(3)}`, ""), klass("RESOURCE", "workspace qws"));
      await assert.rejects(admin.call("storage.upload.begin", "obj://qws/u", { size: 0 }), klass("RESOURCE", "workspace qws"));
      assert.equal(await bytesOf(admin, "obj://qws"), 3 * cost);
    });
  });

  it("a write, an overwrite by another persona, an upload and a delete each move an object's cost: a cycle returns usage to where it was", async () => {
    await withKernel({}, async (t) => {
      const admin = await t.admin();
      const a = await t.persona("alice", rw("ws"), { limits: { "storage.bytes": 1_000_000 } });
      const b = await t.persona("alice/bob", rw("ws"));
      const ca = await t.connect(a.identity, [a.token]);
      const cb = await t.connect(b.identity, [b.token]);
      await ca.storage.write("obj://ws/kept", "k".repeat(10));
      const kept = objectCost("kept", 10);
      const before = { alice: await bytesOf(admin, "persona://alice"), ws: await bytesOf(admin, "obj://ws") };
      assert.deepEqual(before, { alice: kept, ws: kept });

      await ca.storage.write("obj://ws/dir/a", "a".repeat(100));
      assert.equal(await bytesOf(admin, "persona://alice"), kept + objectCost("dir/a", 100));
      // An overwrite moves the row's cost with the body's, to the new owner (alice's tree still holds it).
      await cb.storage.write("obj://ws/dir/a", "b".repeat(30));
      assert.equal(await bytesOf(admin, "persona://alice/bob"), objectCost("dir/a", 30));
      assert.equal(await bytesOf(admin, "persona://alice"), kept + objectCost("dir/a", 30));
      // An upload, inline and not, as a write.
      await upload(ca, "obj://ws/up", Buffer.from("u".repeat(7)));
      await upload(ca, "obj://ws/up2", Buffer.alloc(0));
      const all = kept + objectCost("dir/a", 30) + objectCost("up", 7) + objectCost("up2", 0);
      assert.equal(await bytesOf(admin, "persona://alice"), all);
      assert.equal(await bytesOf(admin, "obj://ws"), all);
      // A refused compare-and-set charges nothing.
      await assert.rejects(ca.storage.write("obj://ws/up", "zz", { ifGeneration: 9 }), klass("SEMANTIC"));
      assert.equal(await bytesOf(admin, "persona://alice"), all);

      for (const p of ["dir/a", "up", "up2"]) await ca.storage.delete(`obj://ws/${p}`);
      // The deleted paths' generation rows are kept (case 346) and charged to no one.
      assert.deepEqual({ alice: await bytesOf(admin, "persona://alice"), ws: await bytesOf(admin, "obj://ws") }, before);
      assert.equal(await bytesOf(admin, "persona://alice/bob"), 0);
      assert.deepEqual((await admin.resources.query("persona://alice/bob")).usage, {}, "no row left at 0");
      await ca.storage.delete("obj://ws/kept");
      assert.deepEqual((await admin.resources.query("obj://ws")).usage, {});
      assert.deepEqual((await admin.resources.query("persona://alice")).usage, {});
    });
  });

  it("a restart keeps the figures, and an older home's body-only figures are recounted once to the same ones", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-rows-"));
    let t: TestKernel | undefined = await startKernel({}, home);
    const scopes = ["persona://alice", "persona://alice/helper", "persona://bob", "obj://ws1", "obj://ws2"];
    const figures = async (k: TestKernel) => {
      const admin = await k.admin();
      const out: Record<string, number> = {};
      for (const s of scopes) out[s] = await bytesOf(admin, s);
      return out;
    };
    try {
      const a = await t.persona("alice", [...rw("ws1"), ...rw("ws2")]);
      const h = await t.persona("alice/helper", rw("ws1"));
      const b = await t.persona("bob", rw("ws2"));
      const ca = await t.connect(a.identity, [a.token]);
      await ca.storage.write("obj://ws1/a/one", "1".repeat(50));
      await ca.storage.write("obj://ws2/long", "");
      await ca.storage.write("obj://ws1/gone", "g");
      await ca.storage.delete("obj://ws1/gone");
      await (await t.connect(h.identity, [h.token])).storage.write("obj://ws1/h", "h".repeat(200_000));
      const cb = await t.connect(b.identity, [b.token]);
      await cb.storage.write(`obj://ws2/${longPath(1, 1500)}`, "b");
      await cb.storage.write("obj://ws2/long", "over alice's");
      const expected = {
        "persona://alice": objectCost("a/one", 50) + objectCost("h", 200_000),
        "persona://alice/helper": objectCost("h", 200_000),
        "persona://bob": objectCost(longPath(1, 1500), 1) + objectCost("long", 12),
        "obj://ws1": objectCost("a/one", 50) + objectCost("h", 200_000),
        "obj://ws2": objectCost(longPath(1, 1500), 1) + objectCost("long", 12),
      };
      assert.deepEqual(await figures(t), expected);
      await t.stop();
      t = await startKernel({}, home);
      assert.deepEqual(await figures(t), expected, "a restart keeps them");
      await t.stop();
      t = undefined;

      // As an older kernel left the home: storage.bytes counted bodies only, and the recount not yet done.
      const db = new Database(join(home, HOME_FILES.database));
      db.exec("DELETE FROM meta WHERE key = 'usage_counts_object_rows'");
      const bodies: Record<string, number> = {
        "persona:alice": 200_050,
        "persona:alice/helper": 200_000,
        "persona:bob": 13,
        "workspace:ws1": 200_050,
        "workspace:ws2": 13,
      };
      const set = db.prepare("UPDATE usage SET amount = ? WHERE scope = ? AND resource = 'storage.bytes'");
      for (const [scope, n] of Object.entries(bodies)) assert.equal(set.run(n, scope).changes, 1, scope);
      db.close();
      t = await startKernel({}, home);
      assert.deepEqual(await figures(t), expected, "the older home's recount gives the ledger's figures");
      await t.stop();
      t = undefined;

      // Recounting a current home changes nothing.
      const db2 = new Database(join(home, HOME_FILES.database));
      db2.exec("DELETE FROM meta WHERE key = 'usage_counts_object_rows'");
      db2.close();
      t = await startKernel({}, home);
      assert.deepEqual(await figures(t), expected, "a second recount keeps them");
      // And the kernel goes on charging from them: deleting everything leaves nothing.
      const admin = await t.admin();
      for (const o of ["ws1/a/one", "ws1/h", "ws2/long", `ws2/${longPath(1, 1500)}`]) await admin.storage.delete(`obj://${o}`);
      for (const s of scopes) assert.deepEqual((await admin.resources.query(s)).usage, {}, s);
    } finally {
      await t?.stop();
      removeHome(home);
    }
  });
});
