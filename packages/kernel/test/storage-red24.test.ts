import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Kernel } from "../src/kernel.js";
import { klass, withKernel } from "./harness.js";
import { pattern, SMALL_FRAMES, sha } from "./storage-files.js";

/** Counts the kernel's syncs of its database WAL (what the file store asks before a body leaves its address). */
function countWalSyncs(k: Kernel): { n: number } {
  const store = (k as unknown as { services: { store: { syncWal(): void } } }).services.store;
  const seen = { n: 0 };
  const real = store.syncWal.bind(store);
  store.syncWal = () => {
    seen.n++;
    real();
  };
  return seen;
}

describe("storage red team (wt-red24)", () => {
  it("a delete, an overwrite or a refused write does the same work whether or not another persona stores the same bytes", async () => {
    await withKernel({ ...SMALL_FRAMES, objectInlineBytes: 4096 }, async (t) => {
      const rights = (ws: string) => [{ ops: ["storage.write", "storage.delete", "storage.read"], targets: [`obj://${ws}/**`] }];
      const v = await t.persona("victim", rights("vws"));
      const m = await t.persona("mallory", rights("mws"));
      const cv = await t.connect(v.identity, [v.token]);
      const cm = await t.connect(m.identity, [m.token]);
      // The victim's secret document: mallory can guess it (a template with a low-entropy field).
      const secret = pattern(200_000, 11);
      const unheld = pattern(200_000, 12);
      await cv.storage.write("obj://vws/payslip", secret);
      const syncs = countWalSyncs(t.k);
      // What each probe costs, for bytes someone else holds and for bytes no one does.
      const probe = async (guess: Buffer, how: "delete" | "overwrite" | "refused") => {
        if (how === "refused") {
          await cm.storage.write("obj://mws/taken", "x").catch(() => {});
          const before = syncs.n;
          await assert.rejects(cm.storage.write("obj://mws/taken", guess, { ifGeneration: 0 }), klass("SEMANTIC"));
          return syncs.n - before;
        }
        await cm.storage.write("obj://mws/probe", guess);
        const before = syncs.n;
        if (how === "delete") await cm.storage.delete("obj://mws/probe");
        else await cm.storage.write("obj://mws/probe", "small");
        const n = syncs.n - before;
        if (how === "overwrite") await cm.storage.delete("obj://mws/probe");
        return n;
      };
      for (const how of ["delete", "overwrite", "refused"] as const) {
        const held = await probe(secret, how);
        const free = await probe(unheld, how);
        assert.equal(held, free, `${how}: a WAL sync only when the body went told that the victim stores those bytes`);
        assert.ok(free >= 1, `${how}: the body's removal is made durable first`);
      }
      // The victim's body is still there and right.
      assert.ok(Buffer.from((await cv.storage.read("obj://vws/payslip")).data).equals(secret));
    });
  });

  it("uploads over an object as large as each still count each other's declared bytes: against storage.bytes and the workspace quota", async () => {
    await withKernel({ ...SMALL_FRAMES, workspaceStorageBytes: 300_000 }, async (t) => {
      const rights = [{ ops: ["storage.write"], targets: ["obj://w/**"] }];
      // A persona at its storage.bytes limit, holding one object of all of it.
      const q = await t.persona("quota", rights, { limits: { "storage.bytes": 100_000 } });
      const cq = await t.connect(q.identity, [q.token]);
      await cq.storage.write("obj://w/mine", pattern(100_000, 1));
      // One upload over it adds nothing once committed: allowed, as before.
      const body = pattern(100_000, 3);
      const { upload } = (await cq.call("storage.upload.begin", "obj://w/mine", { size: body.length })).payload as {
        upload: string;
      };
      // More would each hold its limit again in partial bytes (each added nothing alone).
      await assert.rejects(
        cq.call("storage.upload.begin", "obj://w/mine", { size: 100_000 }),
        klass("RESOURCE", "storage.bytes"),
      );
      // The workspace quota the same way, for a persona with no limit of its own, over another's object:
      // the workspace holds its 300,000 and 100,000 more are declared.
      const admin = await t.admin();
      await admin.storage.write("obj://w/big", pattern(200_000, 2));
      const m = await t.persona("mallory", rights);
      const cm = await t.connect(m.identity, [m.token]);
      await assert.rejects(cm.call("storage.upload.begin", "obj://w/big", { size: 200_000 }), klass("RESOURCE", "workspace w"));
      // An upload that shrinks what it replaces still fits (300,000 + 100,000 − 199,999).
      await cm.call("storage.upload.begin", "obj://w/big", { size: 1 });
      // A commit that adds nothing is never refused by what others have declared.
      await cq.call("storage.upload.chunk", "obj://w/mine", { upload, offset: 0, data: body });
      const done = await cq.call("storage.upload.commit", "obj://w/mine", { upload, size: body.length, sha256: sha(body) });
      assert.equal((done.payload as { generation: number }).generation, 2);
    });
  });
});
