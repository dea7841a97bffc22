import assert from "node:assert/strict";
import { existsSync, fstatSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { BlobStore } from "../src/store/blobs.js";

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
      blobs.release(first, body.length);
      assert.equal(blobs.flushReleased(), 1, "one body, freed once nothing names it");
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
