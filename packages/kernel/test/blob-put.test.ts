import assert from "node:assert/strict";
import { closeSync, constants, existsSync, fstatSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import fc from "fast-check";
import { HASH_SLICE, sha256InSlices } from "../src/sliced-hash.js";
import { BlobStore, sha256 } from "../src/store/blobs.js";

/* BlobStore.put writes and syncs a body on libuv's threads while it hashes it in slices (issue #22). */

const withRoot = async (f: (root: string) => Promise<void>) => {
  const root = mkdtempSync(join(tmpdir(), "kpip-blobput-"));
  try {
    await f(root);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
};

/**
 * After a put of `body` into `blobs` (the store at `dir`) failed: no body at its address, and no pin
 * left behind — the store still works, and the same bytes stored later are freed as soon as nothing names them.
 */
async function assertNothingKept(blobs: BlobStore, dir: string, body: Buffer): Promise<void> {
  const hash = sha256(body);
  assert.ok(!blobs.has(hash), "no body at the address");
  const ok = new BlobStore(dir, { sync: false });
  ok.unpin(await ok.put(body));
  blobs.release(hash, body.length);
  assert.equal(blobs.flushReleased(), 1, "the failed put left no pin behind");
}

describe("the file store's put: hash and write overlap, nothing else changes", () => {
  it("hashes in slices exactly as in one pass, at every size around the slice boundaries", async () => {
    const sizes = fc.oneof(
      fc.integer({ min: 0, max: 3 * HASH_SLICE + 7 }),
      fc.constantFrom(0, 1, HASH_SLICE - 1, HASH_SLICE, HASH_SLICE + 1, 2 * HASH_SLICE),
    );
    await fc.assert(
      fc.asyncProperty(sizes, fc.integer({ min: 0, max: 255 }), async (n, seed) => {
        const data = Buffer.alloc(n);
        for (let i = 0; i < n; i += 4093) data[i] = (seed + i) & 0xff;
        assert.deepEqual(await sha256InSlices(data), sha256(data));
      }),
      { numRuns: 16 },
    );
  });

  it("lets the event loop run between slices (other sessions are served while a large body is hashed)", async () => {
    let turns = 0;
    let spinning = true;
    const spin = () => {
      if (!spinning) return;
      turns++;
      setImmediate(spin);
    };
    setImmediate(spin);
    // No I/O here: every turn the spinner gets is one the hashing gave back.
    await sha256InSlices(Buffer.alloc(3 * HASH_SLICE + 1, 1));
    spinning = false;
    assert.ok(turns >= 3, `the event loop ran between the slices (${turns} turns)`);
  });

  it("stores a large body at its SHA-256, written and synced whole before it is named", async () => {
    await withRoot(async (root) => {
      const order: string[] = [];
      class Watched extends BlobStore {
        override async syncFile(fd: number): Promise<void> {
          order.push(`sync ${fstatSync(fd).size}`);
          await super.syncFile(fd);
        }
        override async install(tempPath: string, hash: Uint8Array): Promise<void> {
          order.push("install");
          await super.install(tempPath, hash);
        }
      }
      const blobs = new Watched(join(root, "objects"), { sync: true });
      const body = Buffer.alloc(3 * HASH_SLICE + 5, 0x42);
      body.write("first", 0);
      body.write("last", body.length - 4);
      const hash = await blobs.put(body);
      assert.deepEqual(hash, sha256(body));
      assert.deepEqual(order, [`sync ${body.length}`, "install"], "every byte written and synced, then renamed");
      assert.ok(readFileSync(blobs.pathOf(hash)).equals(body));
      assert.deepEqual(readdirSync(join(root, "objects", "tmp")), [], "no temp file left");
      blobs.unpin(hash);
      blobs.release(hash, body.length);
      assert.equal(blobs.flushReleased(), 1, "unpinned once: freed when nothing names it");
    });
  });

  it("a write that fails leaves no temp file, no body and no pin", async () => {
    await withRoot(async (root) => {
      let temp = "";
      class ReadOnlyTemp extends BlobStore {
        override createTemp(prefix: string): { fd: number; path: string } {
          const t = super.createTemp(prefix);
          temp = t.path;
          closeSync(t.fd);
          // The same file, open for reading only: the write fails (EBADF) as a full disk would.
          return { fd: openSync(t.path, constants.O_RDONLY), path: t.path };
        }
      }
      const blobs = new ReadOnlyTemp(join(root, "objects"), { sync: true });
      const body = Buffer.alloc(2 * HASH_SLICE + 1, 9);
      await assert.rejects(blobs.put(body), (e: NodeJS.ErrnoException) => e.code === "EBADF");
      assert.ok(temp !== "" && !existsSync(temp), "the temp file is removed");
      await assertNothingKept(blobs, join(root, "objects"), body);
    });
  });

  it("a hash that fails removes the temp file at once, not at the next start, and pins nothing", async () => {
    await withRoot(async (root) => {
      const temps: string[] = [];
      class FailingHash extends BlobStore {
        override createTemp(prefix: string): { fd: number; path: string } {
          const t = super.createTemp(prefix);
          temps.push(t.path);
          return t;
        }
        protected override async hashBody(data: Uint8Array): Promise<Buffer> {
          // Fails after the write began, as a hash that throws mid-body would.
          await new Promise((r) => setImmediate(r));
          if (data.length > 0) throw new RangeError("hash failed");
          return super.hashBody(data);
        }
      }
      const dir = join(root, "objects");
      const blobs = new FailingHash(dir, { sync: true });
      const body = Buffer.alloc(HASH_SLICE + 3, 7);
      await assert.rejects(blobs.put(body), (e: Error) => e instanceof RangeError && e.message === "hash failed");
      assert.equal(temps.length, 1);
      assert.ok(!existsSync(temps[0] as string), "the temp file is gone when put rejects");
      assert.deepEqual(readdirSync(join(dir, "tmp")), [], "nothing is left in the temp directory");
      await assertNothingKept(blobs, dir, body);
    });
  });

  it("an install that fails (no room for the body's address on a full disk) removes the temp file at once, and pins nothing", async () => {
    await withRoot(async (root) => {
      class FullAtAddress extends BlobStore {
        override async install(): Promise<void> {
          // As mkdir of the address's directory on a full disk: the temp file was written and synced.
          throw Object.assign(new Error("ENOSPC: no space left on device, mkdir"), { code: "ENOSPC" });
        }
      }
      const dir = join(root, "objects");
      const blobs = new FullAtAddress(dir, { sync: true });
      const body = Buffer.alloc(HASH_SLICE + 5, 4);
      await assert.rejects(blobs.put(body), (e: NodeJS.ErrnoException) => e.code === "ENOSPC");
      assert.deepEqual(readdirSync(join(dir, "tmp")), [], "nothing is left in the temp directory");
      await assertNothingKept(blobs, dir, body);
    });
  });
});
