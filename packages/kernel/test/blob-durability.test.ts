import assert from "node:assert/strict";
import { existsSync, fstatSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { BlobStore } from "../src/store/blobs.js";

describe("the file store frees a body only after the commit that stopped naming it is durable", () => {
  it("makes the database durable before the body leaves its address, and not when the body stays", async () => {
    const root = mkdtempSync(join(tmpdir(), "kpip-blobs-"));
    try {
      const seen: boolean[] = [];
      let blobs: BlobStore | undefined;
      let hash: Uint8Array | undefined;
      blobs = new BlobStore(join(root, "objects"), {
        sync: false,
        durable: () => seen.push(existsSync((blobs as BlobStore).pathOf(hash as Uint8Array))),
      });
      hash = await blobs.put(Buffer.alloc(200_000, 3));
      blobs.unpin(hash); // as a write does once its row committed
      assert.ok(existsSync(blobs.pathOf(hash)));
      assert.equal(blobs.collect(hash, 1), false, "still named by a row");
      assert.deepEqual(seen, [], "nothing to make durable while the body stays");
      assert.equal(blobs.collect(hash, 0), true);
      assert.deepEqual(seen, [true], "made durable once, while the body was still at its address");
      assert.ok(!existsSync(blobs.pathOf(hash)), "then the body left it");
      assert.equal(blobs.collect(hash, 0), false, "already gone: nothing to do");
      assert.equal(seen.length, 1);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe("the file store gives no timing hint that some persona stored the same bytes", () => {
  it("writes and syncs a body whose bytes are stored already, as it does a new one", async () => {
    const root = mkdtempSync(join(tmpdir(), "kpip-blobs-"));
    try {
      const synced: number[] = [];
      class Watched extends BlobStore {
        override async syncFile(fd: number): Promise<void> {
          synced.push(fstatSync(fd).size);
          await super.syncFile(fd);
        }
      }
      const blobs = new Watched(join(root, "objects"), { sync: true });
      const body = Buffer.alloc(150_000, 7);
      const first = await blobs.put(body);
      const second = await blobs.put(body);
      assert.deepEqual(second, first, "one address for one content");
      assert.deepEqual(synced, [body.length, body.length], "the second write wrote and synced every byte too");
      assert.ok(existsSync(blobs.pathOf(first)));
      blobs.unpin(first);
      blobs.unpin(second);
      assert.equal(blobs.collect(first, 0), true, "one body, freed once nothing names it");
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
