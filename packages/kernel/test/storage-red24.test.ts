import assert from "node:assert/strict";
import { closeSync, openSync, writeSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { Kernel } from "../src/kernel.js";
import { UploadTable } from "../src/primitives/storage-uploads.js";
import type { BlobStore } from "../src/store/blobs.js";
import { klass, withKernel } from "./harness.js";
import { bodies, pattern, SMALL_FRAMES, sha, tmpFiles } from "./storage-files.js";

/**
 * Counts the kernel's syncs of its database WAL (what the file store asks before a body leaves its
 * address), and holds the tick's flushes of released bodies: `flush` runs one when the test means to.
 */
function countWalSyncs(k: Kernel): { n: number; flush(): number } {
  const s = (k as unknown as { services: { store: { syncWal(): void }; blobs: BlobStore } }).services;
  const store = s.store;
  const real = store.syncWal.bind(store);
  const flush = s.blobs.flushReleased.bind(s.blobs);
  s.blobs.flushReleased = () => 0;
  const seen = { n: 0, flush };
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
      // What each probe costs, for bytes someone else holds and for bytes no one does: in the
      // request (no sync: the body is only released), and at the tick that removes what it released.
      const probe = async (guess: Buffer, how: "delete" | "overwrite" | "refused") => {
        let request: number;
        if (how === "refused") {
          await cm.storage.write("obj://mws/taken", "x").catch(() => {});
          syncs.flush();
          const before = syncs.n;
          await assert.rejects(cm.storage.write("obj://mws/taken", guess, { ifGeneration: 0 }), klass("SEMANTIC"));
          request = syncs.n - before;
        } else {
          await cm.storage.write("obj://mws/probe", guess);
          syncs.flush();
          const before = syncs.n;
          if (how === "delete") await cm.storage.delete("obj://mws/probe");
          else await cm.storage.write("obj://mws/probe", "small");
          request = syncs.n - before;
        }
        const before = syncs.n;
        syncs.flush();
        const tick = syncs.n - before;
        if (how === "overwrite") await cm.storage.delete("obj://mws/probe");
        return { request, tick };
      };
      for (const how of ["delete", "overwrite", "refused"] as const) {
        const held = await probe(secret, how);
        const free = await probe(unheld, how);
        assert.deepEqual(held, free, `${how}: a WAL sync only when the body went told that the victim stores those bytes`);
        assert.equal(free.request, 0, `${how}: no sync in the request`);
        // A write refused by its ifGeneration is refused before its body is stored: nothing to remove.
        if (how === "refused") assert.equal(free.tick, 0, "refused before its body was written");
        else assert.equal(free.tick, 1, `${how}: the body's removal is made durable first`);
      }
      // The victim's body is still there and right.
      assert.ok(Buffer.from((await cv.storage.read("obj://vws/payslip")).data).equals(secret));
    });
  });

  it("uploads over an object as large as each still count each other's declared bytes: against storage.bytes and the workspace quota", async () => {
    // Each object costs its body, its path's bytes and its row's 512: mine 100,516, big 200,515.
    await withKernel({ ...SMALL_FRAMES, workspaceStorageBytes: 301_031 }, async (t) => {
      const rights = [{ ops: ["storage.write"], targets: ["obj://w/**"] }];
      // A persona at its storage.bytes limit, holding one object of all of it.
      const q = await t.persona("quota", rights, { limits: { "storage.bytes": 100_516 } });
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
      // the workspace holds its quota and 100,000 more are declared.
      const admin = await t.admin();
      await admin.storage.write("obj://w/big", pattern(200_000, 2));
      const m = await t.persona("mallory", rights);
      const cm = await t.connect(m.identity, [m.token]);
      await assert.rejects(cm.call("storage.upload.begin", "obj://w/big", { size: 200_000 }), klass("RESOURCE", "workspace w"));
      // An upload that shrinks what it replaces still fits (the quota + 100,000 − 199,999).
      await cm.call("storage.upload.begin", "obj://w/big", { size: 1 });
      // A commit that adds nothing is never refused by what others have declared.
      await cq.call("storage.upload.chunk", "obj://w/mine", { upload, offset: 0, data: body });
      const done = await cq.call("storage.upload.commit", "obj://w/mine", { upload, size: body.length, sha256: sha(body) });
      assert.equal((done.payload as { generation: number }).generation, 2);
    });
  });

  it("an upload below the inline size is kept in the database as a write's body is: no file per few bytes charged", async () => {
    const digest = UploadTable.prototype.digest;
    try {
      await withKernel(SMALL_FRAMES, async (t) => {
        // Eight objects of 4 bytes at 2-byte paths, each with its row's 512.
        const q = await t.persona("tiny", [{ ops: ["storage.write", "storage.read"], targets: ["obj://w/**"] }], {
          limits: { "storage.bytes": 8 * (4 + 2 + 512) },
        });
        const cq = await t.connect(q.identity, [q.token]);
        const upload = async (path: string, data: Buffer) => {
          const { upload } = (await cq.call("storage.upload.begin", path, { size: data.length })).payload as { upload: string };
          await cq.call("storage.upload.chunk", path, { upload, offset: 0, data });
          return upload;
        };
        const commit = (path: string, upload: string, data: Buffer, more: { ifGeneration?: number } = {}) =>
          cq.call("storage.upload.commit", path, { upload, size: data.length, sha256: sha(data), ...more });
        // Each commit of four distinct bytes was a body file (a 4 KiB block and an inode) for 4 bytes charged.
        for (let i = 0; i < 8; i++) {
          const data = Buffer.from(`b${i}..`);
          const path = `obj://w/o${i}`;
          const done = await commit(path, await upload(path, data), data);
          assert.ok(Buffer.from((done.payload as { sha256: Uint8Array }).sha256).equals(sha(data)));
          assert.ok(Buffer.from((await cq.storage.read(path)).data).equals(data));
        }
        assert.deepEqual(bodies(t.home), [], "no body file for bytes the database keeps");
        assert.deepEqual(tmpFiles(t.home), [], "nor partial files");
        await assert.rejects(upload("obj://w/more", Buffer.from("x")), klass("RESOURCE", "storage.bytes"));

        // A write racing the commit (after its checks, while it reads the bytes): the compare-and-set
        // fails in the row, and the upload stays with its verified bytes for a retry.
        const admin = await t.admin();
        const data = Buffer.from("new!");
        const kept = await upload("obj://w/o0", data);
        let races = 1;
        UploadTable.prototype.digest = async function (this: UploadTable, u) {
          if (races-- > 0) await admin.storage.write(u.target, "raced");
          return digest.call(this, u);
        };
        await assert.rejects(commit("obj://w/o0", kept, data, { ifGeneration: 1 }), klass("SEMANTIC", "generation conflict"));
        const done = await commit("obj://w/o0", kept, data, { ifGeneration: 2 });
        assert.equal((done.payload as { generation: number }).generation, 3, "the retry commits without the bytes again");
        assert.equal(Buffer.from((await cq.storage.read("obj://w/o0")).data).toString(), "new!");
        assert.equal(Buffer.from((await admin.storage.read("obj://w/o0")).data).toString(), "new!");
        // Kept, then aborted: nothing on disk either way.
        races = 1;
        const aborted = await upload("obj://w/o1", data);
        await assert.rejects(commit("obj://w/o1", aborted, data, { ifGeneration: 1 }), klass("SEMANTIC", "generation conflict"));
        await cq.call("storage.upload.abort", "obj://w/o1", { upload: aborted });
        await assert.rejects(commit("obj://w/o1", aborted, data), klass("SEMANTIC", "no upload"));
        assert.deepEqual([bodies(t.home), tmpFiles(t.home)], [[], []]);
      });
    } finally {
      UploadTable.prototype.digest = digest;
    }
  });

  it("a write of bytes whose body changed on disk stores the bytes written, not the changed body at their address", async () => {
    await withKernel({ ...SMALL_FRAMES, objectInlineBytes: 4096 }, async (t) => {
      const rights = (ws: string) => [{ ops: ["storage.write", "storage.read"], targets: [`obj://${ws}/**`] }];
      const a = await t.persona("alice", rights("aws"));
      const b = await t.persona("bob", rights("bws"));
      const ca = await t.connect(a.identity, [a.token]);
      const cb = await t.connect(b.identity, [b.token]);
      const data = pattern(200_000, 21);
      await ca.storage.write("obj://aws/x", data);
      const hex = sha(data).toString("hex");
      const file = join(t.home, "objects", "sha256", hex.slice(0, 2), hex.slice(2));
      // The body changes on disk (a bad sector, a stray process of the kernel's user): same size, other bytes.
      const spoil = () => {
        const fd = openSync(file, "r+");
        writeSync(fd, Buffer.from("spoiled"), 0, 7, 1000);
        closeSync(fd);
      };
      spoil();
      // Bob writes those very bytes: his write succeeds, and must read back as what he wrote.
      await cb.storage.write("obj://bws/y", data);
      assert.ok(Buffer.from((await cb.storage.read("obj://bws/y")).data).equals(data), "the write kept the changed body");
      // The same through an upload, whose answer names the object's SHA-256.
      spoil();
      const { upload } = (await cb.call("storage.upload.begin", "obj://bws/z", { size: data.length })).payload as {
        upload: string;
      };
      await cb.call("storage.upload.chunk", "obj://bws/z", { upload, offset: 0, data });
      const done = await cb.call("storage.upload.commit", "obj://bws/z", { upload, size: data.length, sha256: sha(data) });
      assert.ok(Buffer.from((done.payload as { sha256: Uint8Array }).sha256).equals(sha(data)));
      assert.ok(sha((await cb.storage.read("obj://bws/z")).data).equals(sha(data)), "the upload kept the changed body");
      // One body per content still: the address holds the bytes last written, which every object naming it reads.
      assert.deepEqual(bodies(t.home), [hex]);
      assert.ok(Buffer.from((await ca.storage.read("obj://aws/x")).data).equals(data));
    });
  });

  it("a quota's refusal does not tell a persona what the workspace (or a tree above it) holds of others' bytes", async () => {
    await withKernel({ ...SMALL_FRAMES, workspaceStorageBytes: 1_000_000 }, async (t) => {
      const admin = await t.admin();
      const theirs = 123_457;
      await admin.storage.write("obj://ws/theirs", pattern(theirs, 5));
      // Write rights on one object only: resource.query obj://ws would be PERMISSION (case 326).
      const m = await t.persona("mallory", [{ ops: ["storage.write"], targets: ["obj://ws/mine"] }]);
      const cm = await t.connect(m.identity, [m.token]);
      // A begin declaring the whole quota sends no bytes, and was answered with the workspace's usage.
      const refused = await cm.call("storage.upload.begin", "obj://ws/mine", { size: 1_000_000 }).catch((e: Error) => e);
      assert.ok(klass("RESOURCE", "workspace ws")(refused));
      // Neither their bodies' bytes nor what the workspace counts for them (with the path and the row's 512).
      for (const n of [theirs, theirs + 6 + 512])
        assert.ok(!(refused as Error).message.includes(String(n)), (refused as Error).message);
      // A sub-persona acting under its parent's token (usable by the personas under it): the limit
      // is over the parent's tree, whose bytes are the parent's.
      const p = await t.persona("parent", [{ ops: ["storage.write"], targets: ["obj://pws/**"] }], {
        limits: { "storage.bytes": 500_000 },
      });
      const cp = await t.connect(p.identity, [p.token]);
      await cp.storage.write("obj://pws/parents", pattern(theirs, 6));
      const sub = await t.persona("parent/sub", [{ ops: ["storage.read"], targets: ["obj://nowhere/x"] }]);
      const cs = await t.connect(sub.identity, [p.token]);
      const refusedSub = await cs.storage.write("obj://pws/subs", pattern(400_000, 7)).catch((e: Error) => e);
      assert.ok(klass("RESOURCE", "storage.bytes exceeded for parent (over parent/sub)")(refusedSub));
      const parents = theirs + "parents".length + 512;
      for (const n of [theirs, parents])
        assert.ok(!(refusedSub as Error).message.includes(String(n)), (refusedSub as Error).message);
      const refusedOwn = await cp.storage.write("obj://pws/more", pattern(400_000, 7)).catch((e: Error) => e);
      assert.ok((refusedOwn as Error).message.includes(`${parents} used`), "its own usage it may be told");
    });
  });
});
