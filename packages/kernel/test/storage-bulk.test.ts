import assert from "node:assert/strict";
import fs, { existsSync, readFileSync, statSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { KernelClient } from "@kpip/client";
import { decodeIntent } from "@kpip/protocol";
import { whileStuck } from "@kpip/protocol/testing";
import { BlobStore } from "../src/store/blobs.js";
import { klass, removeHome, startKernel, type TestKernel, until, withKernel } from "./harness.js";

const _MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

import { bodies, flushReleased, MiB, pattern, SMALL_FRAMES, sha, tmpFiles } from "./storage-files.js";

describe("large objects: the file store and the chunked upload", () => {
  let t: TestKernel;
  let c: KernelClient;
  before(async () => {
    t = await startKernel({ ...SMALL_FRAMES, objectInlineBytes: 4096, uploadIdleMs: 60_000 });
    c = await t.admin();
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  it("round-trips an object larger than 16 MiB through the chunked upload and ranged reads", async () => {
    const data = pattern(17 * MiB + 12_345);
    const r = await c.storage.putLarge("obj://big/a.bin", data, { chunkBytes: 512 * 1024 });
    assert.deepEqual([r.generation, r.size, Buffer.from(r.sha256).toString("hex")], [1, data.length, sha(data).toString("hex")]);
    const back = await c.storage.getLarge("obj://big/a.bin", { chunkBytes: 700 * 1024 });
    assert.ok(back.equals(data), "the bytes read back are the bytes written");
    // An iterable source of uneven pieces is cut into chunks the same way.
    const pieces = [data.subarray(0, 3), data.subarray(3, 2 * MiB + 7), data.subarray(2 * MiB + 7, 3 * MiB)];
    await c.storage.putLarge("obj://big/b.bin", pieces, { size: 3 * MiB });
    const range = await c.storage.readRange("obj://big/b.bin", MiB - 5, 10);
    assert.ok(Buffer.from(range.data).equals(data.subarray(MiB - 5, MiB + 5)));
    assert.equal(range.size, 3 * MiB);
    assert.deepEqual(tmpFiles(t.home), [], "no partial file is left after a commit");
  });

  it("keeps bodies at their SHA-256 in 0700 directories as 0600 files, once per content", async () => {
    const data = pattern(300_000, 7);
    await c.storage.write("obj://big/one", data);
    await c.storage.write("obj://big/two", data);
    const hex = sha(data).toString("hex");
    const file = join(t.home, "objects", "sha256", hex.slice(0, 2), hex.slice(2));
    assert.ok(readFileSync(file).equals(data), "the body is the file named by its hash");
    assert.equal(statSync(file).mode & 0o777, 0o600);
    for (const d of ["objects", "objects/sha256", `objects/sha256/${hex.slice(0, 2)}`, "objects/tmp"])
      assert.equal(statSync(join(t.home, d)).mode & 0o777, 0o700, d);
    // Two objects share one body; it goes when the last one stops naming it.
    // (Released bodies go at the housekeeping tick, run here.)
    await c.storage.delete("obj://big/one");
    flushReleased(t.k);
    assert.ok(existsSync(file), "still named by obj://big/two");
    await c.storage.write("obj://big/two", "now small and inline");
    flushReleased(t.k);
    assert.ok(!existsSync(file), "removed once no object names it");
    assert.equal(Buffer.from((await c.storage.read("obj://big/two")).data).toString(), "now small and inline");
    // A write that loses its compare-and-set leaves no body behind: the body it wrote is named by nothing.
    const before = bodies(t.home).length;
    await c.storage.write("obj://big/cas", pattern(200_000, 31), { ifGeneration: 0 });
    await assert.rejects(c.storage.write("obj://big/cas", pattern(200_000, 37), { ifGeneration: 0 }), klass("SEMANTIC"));
    flushReleased(t.k);
    assert.equal(bodies(t.home).length, before + 1, "only the winning write's body is kept");
    assert.ok(!bodies(t.home).includes(sha(pattern(200_000, 37)).toString("hex")));
  });

  it("writes every chunk to the partial file when it is acknowledged (the kernel holds no object in memory)", async () => {
    const chunk = pattern(200_000, 3);
    const begun = (await c.call("storage.upload.begin", "obj://big/s", { size: 3 * chunk.length })).payload as { upload: string };
    assert.equal(tmpFiles(t.home).length, 1);
    const partial = join(t.home, "objects", "tmp", tmpFiles(t.home)[0] as string);
    for (let i = 0; i < 3; i++) {
      const r = await c.call("storage.upload.chunk", "obj://big/s", {
        upload: begun.upload,
        offset: i * chunk.length,
        data: chunk,
      });
      assert.equal((r.payload as { received: number }).received, (i + 1) * chunk.length);
      assert.equal(statSync(partial).size, (i + 1) * chunk.length, "the acknowledged bytes are in the file already");
      assert.equal(statSync(partial).mode & 0o777, 0o600);
    }
    await c.call("storage.upload.abort", "obj://big/s", { upload: begun.upload });
    assert.ok(!existsSync(partial), "an aborted upload leaves no partial file");
  });

  it("an aborted upload whose partial file the file system refuses to move out (EIO, a full disk) is still aborted, its file removed", async () => {
    const chunk = pattern(200_000, 5);
    const begun = (await c.call("storage.upload.begin", "obj://big/eio", { size: 2 * chunk.length })).payload as {
      upload: string;
    };
    await c.call("storage.upload.chunk", "obj://big/eio", { upload: begun.upload, offset: 0, data: chunk });
    const partial = join(t.home, "objects", "tmp", tmpFiles(t.home)[0] as string);
    // The kernel's own renameSync (a named import of node:fs, kept in step by syncBuiltinESMExports).
    const real = fs.renameSync;
    fs.renameSync = (from, to) => {
      if (String(to).includes("gone-")) throw Object.assign(new Error("EIO: i/o error, rename"), { code: "EIO" });
      real(from, to);
    };
    syncBuiltinESMExports();
    try {
      // It answered INTERNAL, the upload gone from the table and its file left until the next start.
      await c.call("storage.upload.abort", "obj://big/eio", { upload: begun.upload });
    } finally {
      fs.renameSync = real;
      syncBuiltinESMExports();
    }
    await until(() => !existsSync(partial), 30_000, "the partial file removed");
    await assert.rejects(
      c.call("storage.upload.abort", "obj://big/eio", { upload: begun.upload }),
      klass("SEMANTIC", "no upload"),
    );
  });

  it("a small upload whose partial file the file system refuses to move or remove once read (EIO) still commits: the bytes were read", async () => {
    const data = pattern(3000, 11);
    const { upload } = (await c.call("storage.upload.begin", "obj://big/small-eio", { size: data.length })).payload as {
      upload: string;
    };
    await c.call("storage.upload.chunk", "obj://big/small-eio", { upload, offset: 0, data });
    const partial = join(t.home, "objects", "tmp", tmpFiles(t.home)[0] as string);
    await whileStuck(partial, async () => {
      // It answered INTERNAL (EIO), the upload left in the table with its file closed.
      const r = (await c.call("storage.upload.commit", "obj://big/small-eio", { upload, sha256: sha(data), size: data.length }))
        .payload as { generation: number };
      assert.equal(r.generation, 1);
    });
    assert.ok(Buffer.from((await c.storage.read("obj://big/small-eio")).data).equals(data), "the object is the bytes uploaded");
    await assert.rejects(
      c.call("storage.upload.abort", "obj://big/small-eio", { upload }),
      klass("SEMANTIC", "no upload"),
      "the upload is done",
    );
    // Its file, left in tmp/, goes at the next start (the store's tmp/ is emptied then).
    fs.unlinkSync(partial);
  });

  it("refuses a commit whose size is not the declared one (SEMANTIC, the upload stays) or whose SHA-256 is not the uploaded bytes' (SEMANTIC, the upload is discarded)", async () => {
    const data = pattern(100_000, 9);
    const { upload } = (await c.call("storage.upload.begin", "obj://big/h", { size: data.length })).payload as { upload: string };
    await c.call("storage.upload.chunk", "obj://big/h", { upload, offset: 0, data });
    await assert.rejects(
      c.call("storage.upload.commit", "obj://big/h", { upload, sha256: sha(data), size: data.length - 1 }),
      klass("SEMANTIC", "the commit says"),
    );
    const wrong = sha(Buffer.from("other bytes"));
    await assert.rejects(
      c.call("storage.upload.commit", "obj://big/h", { upload, sha256: wrong, size: data.length }),
      klass("SEMANTIC", "SHA-256"),
    );
    await assert.rejects(c.storage.stat("obj://big/h"), klass("SEMANTIC"), "no object was made");
    await assert.rejects(
      c.call("storage.upload.commit", "obj://big/h", { upload, sha256: sha(data), size: data.length }),
      klass("SEMANTIC", "no upload"),
      "the upload is gone: its bytes never become the object",
    );
    assert.deepEqual(tmpFiles(t.home), []);
  });

  it("refuses chunks out of order, overlapping, empty or beyond the declared size (SEMANTIC); the upload goes on", async () => {
    const data = pattern(30_000, 5);
    const target = "obj://big/order";
    const { upload } = (await c.call("storage.upload.begin", target, { size: data.length })).payload as { upload: string };
    const chunk = (offset: number, bytes: Uint8Array) => c.call("storage.upload.chunk", target, { upload, offset, data: bytes });
    await assert.rejects(chunk(10_000, data.subarray(10_000, 20_000)), klass("SEMANTIC", "expected 0"), "a gap");
    await chunk(0, data.subarray(0, 10_000));
    await assert.rejects(chunk(5_000, data.subarray(5_000, 15_000)), klass("SEMANTIC", "expected 10000"), "an overlap");
    await assert.rejects(chunk(0, data.subarray(0, 10_000)), klass("SEMANTIC", "expected 10000"), "a chunk sent twice");
    await assert.rejects(chunk(10_000, Buffer.alloc(0)), klass("SEMANTIC", "at least one byte"));
    await assert.rejects(chunk(10_000, pattern(20_001, 5)), klass("SEMANTIC", "beyond the declared size"));
    await chunk(10_000, data.subarray(10_000));
    const r = await c.call("storage.upload.commit", target, { upload, sha256: sha(data), size: data.length });
    assert.equal((r.payload as { size: number }).size, data.length);
    assert.ok((await c.storage.getLarge(target)).equals(data));
  });

  it("answers ranged reads within the object and refuses a whole read larger than a frame (SEMANTIC: a retry cannot help)", async () => {
    const data = pattern(2 * MiB, 11);
    const w = await c.storage.putLarge("obj://big/r", data);
    await assert.rejects(c.storage.read("obj://big/r"), klass("SEMANTIC", "in ranges"));
    await assert.rejects(c.storage.readRange("obj://big/r", 2 * MiB + 1, 1), klass("SEMANTIC", "beyond"));
    assert.equal((await c.storage.readRange("obj://big/r", 2 * MiB, 10)).data.length, 0, "a read at the end is empty");
    await assert.rejects(
      c.storage.readRange("obj://big/r", 0, 10, { ifGeneration: w.generation + 1 }),
      klass("SEMANTIC", "generation conflict"),
    );
  });

  it("records the whole object's SHA-256 and size in the commit's audited intent", async () => {
    const data = pattern(50_000, 13);
    await c.storage.putLarge("obj://big/audited", data);
    const rec = t.k.inspect
      .queryAudit({ op: "storage.upload.commit", limit: 100 })
      .find((r) => r.phase === "intent" && r.target === "obj://big/audited");
    assert.ok(rec?.intent, "the commit's intent is on the record with its bytes");
    const intent = decodeIntent(rec.intent);
    assert.deepEqual(
      [Buffer.from(intent.args.sha256 as Uint8Array).toString("hex"), intent.args.size],
      [sha(data).toString("hex"), data.length],
    );
  });
});

describe("chunked upload: capabilities and bounds", () => {
  it("authorizes every upload op as storage.write on the target, and ids are no use to another persona", async () => {
    await withKernel({ ...SMALL_FRAMES, maxUploadsPerPersona: 2 }, async (t) => {
      const w = await t.persona("writer", [{ ops: ["storage.write", "storage.read"], targets: ["obj://w/**"] }]);
      const r = await t.persona("reader", [{ ops: ["storage.read"], targets: ["obj://w/**"] }]);
      const o = await t.persona("other", [{ ops: ["storage.write"], targets: ["obj://w/**"] }]);
      const cw = await t.connect(w.identity, [w.token]);
      const cr = await t.connect(r.identity, [r.token]);
      const co = await t.connect(o.identity, [o.token]);
      await assert.rejects(cw.call("storage.upload.begin", "obj://elsewhere/x", { size: 10 }), klass("PERMISSION"));
      await assert.rejects(cr.call("storage.upload.begin", "obj://w/x", { size: 10 }), klass("PERMISSION"));
      const { upload } = (await cw.call("storage.upload.begin", "obj://w/x", { size: 4 })).payload as { upload: string };
      // The same answer as for an id that never existed: another persona learns nothing from it.
      await assert.rejects(
        co.call("storage.upload.chunk", "obj://w/x", { upload, offset: 0, data: Buffer.from("evil") }),
        klass("SEMANTIC", "no upload"),
      );
      await assert.rejects(co.call("storage.upload.abort", "obj://w/x", { upload }), klass("SEMANTIC", "no upload"));
      await assert.rejects(
        cw.call("storage.upload.chunk", "obj://w/y", { upload, offset: 0, data: Buffer.from("abcd") }),
        klass("SEMANTIC", "no upload"),
        "another target",
      );
      await assert.rejects(
        cr.call("storage.upload.chunk", "obj://w/x", { upload, offset: 0, data: Buffer.from("abcd") }),
        klass("PERMISSION"),
      );
      await cw.call("storage.upload.chunk", "obj://w/x", { upload, offset: 0, data: Buffer.from("abcd") });
      await cw.call("storage.upload.commit", "obj://w/x", { upload, sha256: sha(Buffer.from("abcd")), size: 4 });
      assert.equal(Buffer.from((await cr.storage.read("obj://w/x")).data).toString(), "abcd");
      // At most maxUploadsPerPersona in progress, counted per persona.
      await cw.call("storage.upload.begin", "obj://w/1", { size: 1 });
      await cw.call("storage.upload.begin", "obj://w/2", { size: 1 });
      await assert.rejects(cw.call("storage.upload.begin", "obj://w/3", { size: 1 }), klass("RESOURCE", "uploads in progress"));
      await co.call("storage.upload.begin", "obj://w/3", { size: 1 });
      await assert.rejects(
        cw.call("storage.upload.begin", "obj://w/big", { size: 65 * MiB }),
        klass("RESOURCE", "exceeds the limit"),
      );
      // A quota the object could never fit is refused at the start, before any byte is stored.
      // 1000 bytes at obj://w/q: the body, the path's byte and the row's 512.
      const q = await t.persona("small", [{ ops: ["storage.write"], targets: ["obj://w/**"] }], {
        limits: { "storage.bytes": 1513 },
      });
      const cq = await t.connect(q.identity, [q.token]);
      await assert.rejects(cq.call("storage.upload.begin", "obj://w/q", { size: 1001 }), klass("RESOURCE", "storage.bytes"));
      await cq.call("storage.upload.begin", "obj://w/q", { size: 1000 });
    });
  });

  it("counts the bytes uploads in progress declare: against the persona's quota and the kernel's maxUploadBytes", async () => {
    await withKernel({ ...SMALL_FRAMES, maxUploadBytes: 150_000 }, async (t) => {
      // An object of 100,000 bytes at a 1-byte path, with its row's 512.
      const q = await t.persona("quota", [{ ops: ["storage.write"], targets: ["obj://u/**"] }], {
        limits: { "storage.bytes": 100_513 },
      });
      const cq = await t.connect(q.identity, [q.token]);
      await cq.call("storage.upload.begin", "obj://u/a", { size: 100_000 });
      // a second upload the quota could hold alone, but not beside the first
      await assert.rejects(cq.call("storage.upload.begin", "obj://u/b", { size: 100_000 }), klass("RESOURCE", "storage.bytes"));
      await assert.rejects(cq.call("storage.upload.begin", "obj://u/c", { size: 1 }), klass("RESOURCE", "storage.bytes"));
      // the kernel's bound on declared bytes, whoever declares them
      const admin = await t.admin();
      await assert.rejects(admin.call("storage.upload.begin", "obj://u/d", { size: 60_000 }), klass("RESOURCE", "declare"));
      await admin.call("storage.upload.begin", "obj://u/e", { size: 50_000 });
    });
  });

  it("one persona tree cannot declare the kernel's whole maxUploadBytes: past maxUploadBytesPerPersona it is RESOURCE, and others still begin", async () => {
    // No admin reserve: the two trees share all of maxUploadBytes (the reserve: upload-admin-reserve.test.ts).
    const bounds = { ...SMALL_FRAMES, maxUploadBytes: 600_000, maxUploadBytesPerPersona: 400_000, adminReserve: 0 };
    await withKernel(bounds, async (t) => {
      const rights = (ws: string) => [{ ops: ["storage.write"], targets: [`obj://${ws}/**`] }];
      const m = await t.persona("mallory", rights("mws"));
      const v = await t.persona("victim", rights("vws"));
      const cm = await t.connect(m.identity, [m.token]);
      const cv = await t.connect(v.identity, [v.token]);
      // the attack: one upload declaring all the tree may, then more (without the share, all of maxUploadBytes)
      await cm.call("storage.upload.begin", "obj://mws/big", { size: 400_000 });
      await assert.rejects(cm.call("storage.upload.begin", "obj://mws/more", { size: 1 }), klass("RESOURCE", "share of 400000"));
      await assert.rejects(cm.call("storage.upload.begin", "obj://mws/all", { size: 200_000 }), klass("RESOURCE", "share"));
      // what is left of the kernel's bytes is another persona's to use
      await cv.call("storage.upload.begin", "obj://vws/small", { size: 200_000 });
      // the kernel-wide bound still holds over all trees
      await assert.rejects(cv.call("storage.upload.begin", "obj://vws/more", { size: 1 }), klass("RESOURCE", "declare"));
    });
  });

  it("a commit refused by its compare-and-set keeps the upload: it can be committed right, or aborted", async () => {
    await withKernel(SMALL_FRAMES, async (t) => {
      const c = await t.admin();
      await c.storage.write("obj://u/cas", "v1");
      const data = Buffer.from("the new body");
      const { upload } = (await c.call("storage.upload.begin", "obj://u/cas", { size: data.length })).payload as {
        upload: string;
      };
      await c.call("storage.upload.chunk", "obj://u/cas", { upload, offset: 0, data });
      await assert.rejects(
        c.call("storage.upload.commit", "obj://u/cas", { upload, sha256: sha(data), size: data.length, ifGeneration: 7 }),
        klass("SEMANTIC", "generation conflict"),
      );
      const done = await c.call("storage.upload.commit", "obj://u/cas", {
        upload,
        sha256: sha(data),
        size: data.length,
        ifGeneration: 1,
      });
      assert.equal((done.payload as { generation: number }).generation, 2);
      assert.equal(Buffer.from((await c.storage.read("obj://u/cas")).data).toString(), "the new body");
    });
  });

  it("a commit that loses its compare-and-set to a write racing its sync keeps the upload and its body (until a commit names other bytes)", async () => {
    const t = await startKernel(SMALL_FRAMES);
    const install = BlobStore.prototype.install;
    try {
      const c = await t.admin();
      const other = await t.admin();
      await c.storage.write("obj://u/race", "v1");
      const data = pattern(200_000, 9);
      const begin = async () => {
        const { upload } = (await c.call("storage.upload.begin", "obj://u/race", { size: data.length })).payload as {
          upload: string;
        };
        await c.call("storage.upload.chunk", "obj://u/race", { upload, offset: 0, data });
        return upload;
      };
      // Another session writes the object while the commit is moving the body to its address,
      // after the commit's own checks passed: the commit's compare-and-set then fails in its row.
      let races = 0;
      BlobStore.prototype.install = async function (this: BlobStore, path: string, hash: Uint8Array) {
        if (races-- > 0) await other.storage.write("obj://u/race", `raced ${races}`);
        return install.call(this, path, hash);
      };
      const commit = (upload: string, ifGeneration: number) =>
        c.call("storage.upload.commit", "obj://u/race", { upload, sha256: sha(data), size: data.length, ifGeneration });

      races = 1;
      const kept = await begin();
      await assert.rejects(commit(kept, 1), klass("SEMANTIC", "generation conflict"));
      assert.deepEqual(bodies(t.home), [sha(data).toString("hex")], "the verified body stays, held by the upload");
      const done = await commit(kept, 2);
      assert.equal((done.payload as { generation: number }).generation, 3, "the retry commits without the bytes again");
      assert.ok(sha((await c.storage.read("obj://u/race")).data).equals(sha(data)));

      races = 1;
      const aborted = await begin();
      await c.storage.write("obj://u/race", "small again"); // nothing names the body now
      await assert.rejects(commit(aborted, 4), klass("SEMANTIC", "generation conflict"));
      await c.call("storage.upload.abort", "obj://u/race", { upload: aborted });
      await until(() => bodies(t.home).length === 0, 30_000, "the aborted upload's body freed");
      await assert.rejects(commit(aborted, 5), klass("SEMANTIC", "no upload"));

      // Kept with its body, then committed naming other bytes: discarded as at a first commit.
      races = 1;
      const mismatched = await begin();
      await assert.rejects(commit(mismatched, 5), klass("SEMANTIC", "generation conflict"));
      const other32 = sha(Buffer.from("other bytes"));
      await assert.rejects(
        c.call("storage.upload.commit", "obj://u/race", {
          upload: mismatched,
          sha256: other32,
          size: data.length,
          ifGeneration: 6,
        }),
        klass("SEMANTIC", "SHA-256"),
      );
      await until(() => bodies(t.home).length === 0, 30_000, "the discarded upload's body freed");
      await assert.rejects(commit(mismatched, 6), klass("SEMANTIC", "no upload"));
    } finally {
      BlobStore.prototype.install = install;
      await t.stop();
      removeHome(t.home);
    }
  });

  it("cuts chunks and ranges to fit the smallest frame the protocol allows", async () => {
    await withKernel({ maxBodyBytes: 8192 }, async (t) => {
      const c = await t.admin();
      const data = pattern(50_000, 41);
      await c.storage.putLarge("obj://tiny/x", data);
      assert.ok((await c.storage.getLarge("obj://tiny/x")).equals(data));
    });
  });

  it("expires an idle upload and removes its partial file", async () => {
    await withKernel({ ...SMALL_FRAMES, uploadIdleMs: 300 }, async (t) => {
      const c = await t.admin();
      const { upload } = (await c.call("storage.upload.begin", "obj://e/x", { size: 10 })).payload as { upload: string };
      await c.call("storage.upload.chunk", "obj://e/x", { upload, offset: 0, data: Buffer.from("12345") });
      assert.equal(tmpFiles(t.home).length, 1);
      await until(() => tmpFiles(t.home).length === 0, 30_000, "the expired upload's partial file to go");
      await assert.rejects(
        c.call("storage.upload.chunk", "obj://e/x", { upload, offset: 5, data: Buffer.from("67890") }),
        klass("SEMANTIC", "no upload"),
      );
    });
  });
});
