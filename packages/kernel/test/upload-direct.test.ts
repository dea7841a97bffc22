import assert from "node:assert/strict";
import { closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { UploadTable } from "../src/primitives/storage-uploads.js";
import { type MemRange, UploadHasher } from "../src/primitives/upload-hasher.js";
import { BlobStore, sha256 } from "../src/store/blobs.js";
import { pattern } from "./storage-files.js";

/* Upload chunks past the page cache, hashed from the memory they were written from (issue #22, round twenty-one). */

/** Whether the file system of `dir` takes O_DIRECT (tmpfs and some others do not: the page cache serves). */
function directWorks(dir: string): boolean {
  const p = join(dir, "probe");
  try {
    closeSync(openSync(p, constants.O_CREAT | constants.O_WRONLY | constants.O_DIRECT, 0o600));
    unlinkSync(p);
    return true;
  } catch {
    return false;
  }
}

/** A real hasher that notes, per range, whether it was given the bytes in memory. */
class SpyHasher extends UploadHasher {
  ranges: { offset: number; length: number; mem: boolean }[] = [];
  held: (() => void)[] | undefined;
  override range(key: string, fd: number, offset: number, length: number, owner?: string, mem?: MemRange): Promise<void> {
    this.ranges.push({ offset, length, mem: mem !== undefined });
    const go = () => super.range(key, fd, offset, length, owner, mem);
    if (this.held === undefined) return go();
    return new Promise((resolve, reject) => this.held?.push(() => go().then(resolve, reject)));
  }
  let(): void {
    const h = this.held ?? [];
    this.held = undefined;
    for (const f of h) f();
  }
}

const withTable = async (
  opts: { direct?: boolean },
  f: (table: UploadTable, hasher: SpyHasher, root: string) => Promise<void>,
) => {
  const root = mkdtempSync(join(tmpdir(), "kpip-updirect-"));
  const hasher = new SpyHasher();
  const table = new UploadTable(
    new BlobStore(join(root, "objects"), { sync: false }),
    { perPersona: 16, total: 16, totalBytes: 1 << 30, idleMs: 60_000, ...opts },
    () => 0,
    Date.now,
    hasher,
  );
  try {
    await table.directReady;
    await f(table, hasher, root);
  } finally {
    hasher.let();
    table.close();
    rmSync(root, { recursive: true, force: true });
  }
};

describe("upload chunks written with direct I/O", () => {
  it("an aligned chunk goes past the page cache and is hashed from memory, any other through the page cache; the file and the digest are the bytes sent", async () => {
    // Aligned chunks, one of an unaligned length, then chunks at unaligned offsets.
    const cuts = [1 << 20, 1 << 20, 4096, 5000, 4096, 100];
    const data = pattern(
      cuts.reduce((a, b) => a + b, 0),
      7,
    );
    for (const direct of [true, false]) {
      await withTable({ direct }, async (table, hasher, root) => {
        const u = table.begin("alice", "obj://ws/x", data.length);
        const can = direct && directWorks(join(root, "objects", "tmp"));
        assert.equal(u.direct !== undefined, can, "a direct descriptor exactly where the file system allows one");
        let off = 0;
        const acks: Promise<void>[] = [];
        for (const n of cuts) {
          acks.push(table.chunk(u, off, Buffer.from(data.subarray(off, off + n))));
          off += n;
        }
        await Promise.all(acks);
        await table.settled(u);
        assert.deepEqual((await table.digest(u)).toString("hex"), sha256(data).toString("hex"));
        assert.ok(readFileSync(u.path).equals(data), "the partial file holds the bytes sent");
        const inMemory = hasher.ranges.map((r) => r.mem);
        assert.deepEqual(inMemory, can ? [true, true, true, false, false, false] : cuts.map(() => false));
      });
    }
  });

  it("chunks beyond the staging slots go through the page cache, and a slot is reused only once its write and hash are done", async () => {
    await withTable({}, async (table, hasher, root) => {
      if (!directWorks(join(root, "objects", "tmp"))) return;
      hasher.held = [];
      const n = 1 << 20;
      const uploads = Array.from({ length: 6 }, (_, i) => ({
        u: table.begin(`p${i}`, `obj://ws/x${i}`, 2 * n),
        data: pattern(2 * n, i + 1),
      }));
      // Hashing held: the first chunk of each of six uploads; four slots, so two go through the page cache.
      const first = uploads.map(({ u, data }) => table.chunk(u, 0, Buffer.from(data.subarray(0, n))));
      await Promise.all(first);
      await new Promise((r) => setImmediate(r));
      assert.equal(hasher.ranges.filter((r) => r.mem).length, 4, "four slots");
      assert.equal(hasher.ranges.filter((r) => !r.mem).length, 2, "the rest through the page cache");
      hasher.let();
      for (const { u } of uploads) await u.hashed;
      // Slots free again: the second chunks are direct once more.
      await Promise.all(uploads.map(({ u, data }) => table.chunk(u, n, Buffer.from(data.subarray(n)))));
      for (const { u, data } of uploads) {
        await table.settled(u);
        assert.equal((await table.digest(u)).toString("hex"), sha256(data).toString("hex"));
        assert.ok(readFileSync(u.path).equals(data));
      }
      assert.equal(hasher.ranges.slice(6).filter((r) => r.mem).length, 4);
    });
  });
});

describe("the upload hasher given ranges in memory", () => {
  it("hashes a range from memory, and reads the file before it no further than its start (its write may be under way)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-uphashmem-"));
    const data = pattern(300_000, 3);
    // The file holds the first range; where the second goes it holds other bytes (its write not done).
    const path = join(dir, "partial");
    writeFileSync(path, Buffer.concat([data.subarray(0, 100_000), Buffer.alloc(200_000, 0xee)]));
    const fd = openSync(path, "r");
    const hasher = new UploadHasher();
    try {
      const view = new Uint8Array(new SharedArrayBuffer(200_000));
      view.set(data.subarray(100_000));
      const mem: MemRange = { view, written: false };
      // Another upload's two turns keep the worker busy: both of k's ranges are asked before its first turn.
      const busy = join(dir, "busy");
      writeFileSync(busy, Buffer.alloc(2 << 20, 1));
      const bfd = openSync(busy, "r");
      const z = hasher.range("busy", bfd, 0, 2 << 20, "b");
      const a = hasher.range("k", fd, 0, 100_000);
      const b = hasher.range("k", fd, 100_000, 200_000, "k", mem);
      await Promise.all([a, b, z]);
      closeSync(bfd);
      assert.equal((await hasher.digest("k", 300_000)).toString("hex"), sha256(data).toString("hex"));
    } finally {
      hasher.close();
      closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
