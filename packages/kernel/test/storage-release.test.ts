import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { KernelServices } from "../src/kernel/compose.js";
import type { Kernel } from "../src/kernel.js";
import { UploadTable } from "../src/primitives/storage-uploads.js";
import { BlobStore, RELEASE_BYTES } from "../src/store/blobs.js";
import { connectAdminOf, klass, removeHome, spawnReady, startKernel, type TestKernel, until, withKernel } from "./harness.js";
import { bodies, pattern, SMALL_FRAMES, sha } from "./storage-files.js";

/* A body a change stops naming goes at the housekeeping tick, after one WAL sync for the batch, not in the request. */

const services = (k: Kernel) => (k as unknown as { services: KernelServices }).services;
const hex = (b: Buffer) => sha(b).toString("hex");
const LARGE = { ...SMALL_FRAMES, objectInlineBytes: 4096 };

/** Counts the kernel's WAL syncs: those a flush of released bodies asked, and every other (a request's). */
function watchSyncs(s: KernelServices): { flush: number; other: number } {
  const seen = { flush: 0, other: 0 };
  let flushing = false;
  const sync = s.store.syncWal.bind(s.store);
  s.store.syncWal = () => {
    if (flushing) seen.flush++;
    else seen.other++;
    sync();
  };
  const flush = s.blobs.flushReleased.bind(s.blobs);
  s.blobs.flushReleased = () => {
    flushing = true;
    try {
      return flush();
    } finally {
      flushing = false;
    }
  };
  return seen;
}

/** Holds the tick's flushes (and the batch bound's) off: the test flushes when it means to. */
function holdFlushes(blobs: BlobStore): { flush(): number } {
  const flush = blobs.flushReleased.bind(blobs);
  blobs.flushReleased = () => 0;
  return { flush };
}

async function writer(t: TestKernel) {
  const p = await t.persona("writer", [
    { ops: ["storage.write", "storage.delete", "storage.read", "storage.upload.*"], targets: ["obj://ws/**"] },
  ]);
  return t.connect(p.identity, [p.token]);
}

describe("released file-store bodies", () => {
  it("a delete or an overwrite of a file-store object answers without a WAL sync on the request path; the tick syncs once and removes the bodies", async () => {
    await withKernel(LARGE, async (t) => {
      const s = services(t.k);
      const c = await writer(t);
      const [a, b, kept] = [pattern(200_000, 1), pattern(200_000, 2), pattern(200_000, 3)];
      await c.storage.write("obj://ws/a", a);
      await c.storage.write("obj://ws/b", b);
      await c.storage.write("obj://ws/kept", kept);
      const syncs = watchSyncs(s);
      const before = s.blobs.flushed.flushes;
      await c.storage.delete("obj://ws/a");
      await c.storage.write("obj://ws/b", "small");
      assert.equal(syncs.other, 0, "no WAL sync on the request path");
      // Until a flush has run, the bodies are still on disk: the requests did not remove them.
      if (s.blobs.flushed.flushes === before) {
        assert.ok(bodies(t.home).includes(hex(a)) && bodies(t.home).includes(hex(b)));
        assert.equal(s.blobs.pendingReleases, 2);
      }
      await until(() => !bodies(t.home).includes(hex(a)) && !bodies(t.home).includes(hex(b)), 60_000, "the tick's removal");
      assert.equal(syncs.other, 0);
      assert.ok(syncs.flush >= 1, "the removal was made durable first");
      assert.equal(s.blobs.flushed.syncs, s.blobs.flushed.flushes, "one WAL sync a flush");
      assert.deepEqual(bodies(t.home), [hex(kept)]);
      assert.ok(Buffer.from((await c.storage.read("obj://ws/kept")).data).equals(kept));

      // Many releases between two ticks: one sync for all of them.
      const held = holdFlushes(s.blobs);
      const many = [4, 5, 6, 7, 8].map((i) => pattern(200_000, i));
      for (const [i, m] of many.entries()) await c.storage.write(`obj://ws/m${i}`, m);
      const syncsBefore = syncs.flush + syncs.other;
      for (const i of many.keys()) await c.storage.delete(`obj://ws/m${i}`);
      assert.equal(syncs.flush + syncs.other, syncsBefore, "no sync while the deletes were answered");
      assert.equal(held.flush(), 5);
      assert.equal(syncs.flush + syncs.other, syncsBefore + 1, "five bodies removed after one sync");
      assert.deepEqual(bodies(t.home), [hex(kept)]);
      assert.equal(syncs.other, 0);
    });
  });

  it("a body whose bytes are written again between its release and the tick stays, and reads back", async () => {
    await withKernel(LARGE, async (t) => {
      const s = services(t.k);
      const c = await writer(t);
      const held = holdFlushes(s.blobs);
      const data = pattern(200_000, 21);
      // Deleted, then the same bytes at another path and at the same one: one body, named again.
      await c.storage.write("obj://ws/x", data);
      await c.storage.delete("obj://ws/x");
      await c.storage.write("obj://ws/y", data);
      await c.storage.write("obj://ws/z", data);
      await c.storage.delete("obj://ws/z");
      await c.storage.write("obj://ws/z", data);
      assert.equal(s.blobs.pendingReleases, 1);
      assert.equal(held.flush(), 0, "named again: kept");
      assert.deepEqual(bodies(t.home), [hex(data)]);
      for (const p of ["y", "z"]) assert.ok(Buffer.from((await c.storage.read(`obj://ws/${p}`)).data).equals(data));
      // Unnamed at the tick: it goes.
      await c.storage.delete("obj://ws/y");
      await c.storage.delete("obj://ws/z");
      assert.equal(held.flush(), 1);
      assert.deepEqual(bodies(t.home), []);
    });
  });

  it("a body an upload in progress holds (pinned) stays at the tick though no row names it", async () => {
    const digest = UploadTable.prototype.digest;
    try {
      await withKernel(LARGE, async (t) => {
        const s = services(t.k);
        const c = await writer(t);
        const held = holdFlushes(s.blobs);
        const data = pattern(200_000, 31);
        await c.storage.write("obj://ws/x", data);
        // An upload of the same bytes whose commit a racing write refuses once its body is
        // installed: the upload keeps the body, pinned, for a retry.
        const { upload } = (await c.call("storage.upload.begin", "obj://ws/y", { size: data.length })).payload as {
          upload: string;
        };
        await c.call("storage.upload.chunk", "obj://ws/y", { upload, offset: 0, data });
        let races = 1;
        UploadTable.prototype.digest = async function (this: UploadTable, u) {
          if (races-- > 0) await c.storage.write(u.target, "raced");
          return digest.call(this, u);
        };
        const commit = (ifGeneration: number) =>
          c.call("storage.upload.commit", "obj://ws/y", { upload, size: data.length, sha256: sha(data), ifGeneration });
        await assert.rejects(commit(0), klass("SEMANTIC", "generation conflict"));
        // The only row naming the bytes goes; the upload's pin is all that holds the body.
        await c.storage.delete("obj://ws/x");
        assert.equal(s.store.countBodyRefs(sha(data)), 0);
        assert.equal(held.flush(), 0, "pinned: kept");
        assert.deepEqual(bodies(t.home), [hex(data)]);
        // The retry commits the kept body, which reads back.
        await commit(1);
        assert.ok(Buffer.from((await c.storage.read("obj://ws/y")).data).equals(data));
        // Aborted uploads and deleted objects leave nothing once flushed.
        await c.storage.delete("obj://ws/y");
        assert.equal(held.flush(), 1);
        assert.deepEqual(bodies(t.home), []);
      });
    } finally {
      UploadTable.prototype.digest = digest;
    }
  });

  it("a kernel killed between a delete and the tick leaves an unnamed body, which the next start removes; every other object reads back", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-release-"));
    // A kernel whose flushes never run: the kill always falls between the release and its removal.
    const code = `const { Kernel } = await import(process.argv[1]);
const { BlobStore } = await import(process.argv[3]);
BlobStore.prototype.flushReleased = () => 0;
const k = new Kernel({ home: process.argv[2], logLevel: "silent" });
await k.start();
process.stdout.write("ready\\n");
setInterval(() => {}, 1000);`;
    const modules = [new URL("../src/index.js", import.meta.url).href, new URL("../src/store/blobs.js", import.meta.url).href];
    const child = await spawnReady(
      ["--input-type=module", "-e", code, modules[0] as string, home, modules[1] as string],
      "ready",
    );
    let t: TestKernel | undefined;
    try {
      const exited = new Promise((r) => child.once("exit", r));
      const admin = await connectAdminOf(home);
      const [gone, over, kept] = [pattern(200_000, 41), pattern(200_000, 42), pattern(200_000, 43)];
      await admin.storage.write("obj://ws/gone", gone);
      await admin.storage.write("obj://ws/over", over);
      await admin.storage.write("obj://ws/kept", kept);
      await admin.storage.delete("obj://ws/gone");
      await admin.storage.write("obj://ws/over", "small");
      assert.deepEqual(bodies(home).sort(), [hex(gone), hex(over), hex(kept)].sort(), "released, not yet removed");
      child.kill("SIGKILL");
      await exited;
      await admin.close().catch(() => {});

      t = await startKernel({}, home);
      const s = services(t.k);
      // The orphans went at the start; the bodies on disk are exactly those rows name.
      assert.deepEqual(bodies(home), [hex(kept)]);
      assert.deepEqual(
        [...s.store.namedBodies()].map((b) => Buffer.from(b.hash).toString("hex")),
        [hex(kept)],
        "no row names a body that is gone",
      );
      const c = await t.admin();
      assert.ok(Buffer.from((await c.storage.read("obj://ws/kept")).data).equals(kept));
      assert.equal(Buffer.from((await c.storage.read("obj://ws/over")).data).toString(), "small");
      await assert.rejects(c.storage.read("obj://ws/gone"), klass("SEMANTIC", "no object"));
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await t?.stop();
      removeHome(home);
    }
  });

  it("releases past the batch bound (256 bodies, or 256 MiB) are removed before the tick, a batch a turn, one WAL sync each", async () => {
    const root = mkdtempSync(join(tmpdir(), "kpip-release-batch-"));
    try {
      let syncs = 0;
      const blobs = new BlobStore(join(root, "objects"), { sync: false, durable: () => void syncs++, named: () => 0 });
      const hashes: Buffer[] = [];
      for (let i = 0; i < 300; i++) {
        const h = await blobs.put(Buffer.from(`body ${i}`));
        blobs.unpin(h);
        hashes.push(h);
      }
      for (const h of hashes) blobs.release(h, 8);
      assert.equal(syncs, 0, "nothing in the turn that released them");
      await until(() => blobs.pendingReleases === 0, 30_000, "the batches");
      assert.deepEqual([syncs, blobs.flushed.flushes, blobs.flushed.removed], [2, 2, 300]);
      assert.deepEqual(bodies(root), []);
      // One body as large as the byte bound starts a flush before the tick too.
      const big = await blobs.put(Buffer.from("large"));
      blobs.unpin(big);
      blobs.release(big, RELEASE_BYTES);
      await until(() => blobs.pendingReleases === 0, 30_000, "the byte bound's flush");
      assert.deepEqual([syncs, blobs.flushed.removed], [3, 301]);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("a flush makes the database durable while the batch's bodies are still at their addresses; a body a row names stays", async () => {
    const root = mkdtempSync(join(tmpdir(), "kpip-release-durable-"));
    try {
      const seen: boolean[] = [];
      let rows = 1;
      let hash: Uint8Array = new Uint8Array(0);
      const blobs: BlobStore = new BlobStore(join(root, "objects"), {
        sync: false,
        durable: () => seen.push(existsSync(blobs.pathOf(hash))),
        named: () => rows,
      });
      hash = await blobs.put(Buffer.alloc(200_000, 3));
      blobs.unpin(hash); // as a write does once its row committed
      assert.equal(blobs.flushReleased(), 0, "nothing released: nothing to flush");
      assert.deepEqual(seen, [], "and no sync for it");
      blobs.release(hash, 200_000);
      assert.equal(blobs.flushReleased(), 0, "still named by a row: kept");
      assert.ok(existsSync(blobs.pathOf(hash)));
      rows = 0;
      blobs.release(hash, 200_000);
      assert.equal(blobs.flushReleased(), 1);
      assert.deepEqual(seen, [true, true], "each flush synced first, while the body was still at its address");
      assert.ok(!existsSync(blobs.pathOf(hash)), "then the body left it");
      blobs.release(hash, 200_000);
      assert.equal(blobs.flushReleased(), 0, "already gone: nothing to do");
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("a clean stop removes the bodies released since the last tick", async () => {
    const t = await startKernel(LARGE);
    try {
      const s = services(t.k);
      const c = await writer(t);
      holdFlushes(s.blobs);
      const data = pattern(200_000, 51);
      await c.storage.write("obj://ws/x", data);
      await c.storage.delete("obj://ws/x");
      assert.deepEqual(bodies(t.home), [hex(data)]);
      // The stop's own flush (closeStorage), not the held tick's.
      s.blobs.flushReleased = Object.getPrototypeOf(s.blobs).flushReleased;
      await t.stop();
      assert.deepEqual(bodies(t.home), []);
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
