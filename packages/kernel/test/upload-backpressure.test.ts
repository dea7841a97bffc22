import assert from "node:assert/strict";
import nodeFs, { mkdtempSync, rmSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { UploadTable } from "../src/primitives/storage-uploads.js";
import { UploadHasher } from "../src/primitives/upload-hasher.js";
import { BlobStore } from "../src/store/blobs.js";

/** A hasher whose ranges wait until the test lets them through: a hash worker that is behind. */
class HeldHasher extends UploadHasher {
  held: (() => void)[] = [];
  override range(): Promise<void> {
    return new Promise((resolve) => this.held.push(resolve));
  }
  release(): void {
    for (const r of this.held.splice(0)) r();
  }
}

describe("an upload whose hashing falls behind", () => {
  it("has its chunks acknowledged only once hashing caught up past the bound (a flood of tiny chunks queues no unbounded work)", async () => {
    const root = mkdtempSync(join(tmpdir(), "kpip-upbp-"));
    const hasher = new HeldHasher();
    const table = new UploadTable(
      new BlobStore(join(root, "objects"), { sync: false }),
      { perPersona: 4, total: 8, totalBytes: 1 << 30, idleMs: 60_000 },
      Date.now,
      hasher,
    );
    try {
      const u = table.begin("alice", "obj://ws/x", 1000);
      let acked = 0;
      const acks: Promise<void>[] = [];
      for (let i = 0; i < 100; i++) acks.push(table.chunk(u, i, Buffer.from([i])).then(() => void acked++));
      // Every write lands; the chunks within the bound are acknowledged while hashing is held.
      await Promise.all(acks.slice(0, 64));
      await new Promise((r) => setImmediate(r));
      assert.equal(acked, 64, "chunks past the bound wait for the hash");
      // Hashing catches up (ranges go one at a time, in order): every chunk is acknowledged.
      while (acked < 100) {
        hasher.release();
        await new Promise((r) => setImmediate(r));
      }
      assert.equal(u.unhashedChunks, 0);
    } finally {
      hasher.release();
      table.close();
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe("an upload whose background flush fails", () => {
  it("fails: the disk reports a writeback error to one sync only, so the commit's own sync would pass while the bytes were lost", async () => {
    const root = mkdtempSync(join(tmpdir(), "kpip-upflush-"));
    const table = new UploadTable(new BlobStore(join(root, "objects"), { sync: false }), {
      perPersona: 4,
      total: 8,
      totalBytes: 1 << 30,
      idleMs: 60_000,
    });
    // The default export is node:fs's mutable object; syncBuiltinESMExports carries a change to the named imports.
    const mutable = nodeFs as unknown as { fdatasync: (fd: number, cb: (e: NodeJS.ErrnoException | null) => void) => void };
    const real = mutable.fdatasync;
    try {
      const size = 33 * 1024 * 1024;
      const u = table.begin("alice", "obj://ws/x", size);
      mutable.fdatasync = (_fd, cb) => {
        setImmediate(() => cb(Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" })));
      };
      syncBuiltinESMExports();
      // 32 MiB written: the upload's file is flushed in the background, and that flush fails.
      await table.chunk(u, 0, Buffer.alloc(32 * 1024 * 1024, 1));
      await assert.rejects(table.settled(u), /EIO/);
      assert.throws(() => table.chunk(u, 32 * 1024 * 1024, Buffer.alloc(16, 1)), /failed: EIO/);
    } finally {
      mutable.fdatasync = real;
      syncBuiltinESMExports();
      table.close();
      rmSync(root, { recursive: true, force: true });
    }
  });
});
