import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import fc from "fast-check";
import { UploadHasher } from "../src/primitives/upload-hasher.js";
import { sha256 } from "../src/store/blobs.js";

/* The object's SHA-256 of a chunked upload is made off the kernel's thread, from the partial file (issue #22). */

const withFile = async (data: Buffer, f: (fd: number) => Promise<void>) => {
  const dir = mkdtempSync(join(tmpdir(), "kpip-uphash-"));
  const path = join(dir, "partial");
  writeFileSync(path, data);
  const fd = openSync(path, "r");
  try {
    await f(fd);
  } finally {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
};

/** Cuts [0, n) into consecutive ranges at the given points. */
const rangesOf = (n: number, cuts: number[]) => {
  const at = [...new Set(cuts.map((c) => c % (n + 1)))].filter((c) => c > 0 && c < n).sort((a, b) => a - b);
  const out: [number, number][] = [];
  let from = 0;
  for (const c of [...at, n]) {
    out.push([from, c - from]);
    from = c;
  }
  return n === 0 ? [] : out;
};

describe("the upload hasher: the SHA-256 of the partial file, range by range, off the kernel's thread", () => {
  it("gives exactly sha256 of the bytes, however the upload was cut into chunks (worker, property)", async () => {
    const hasher = new UploadHasher();
    try {
      await fc.assert(
        fc.asyncProperty(
          fc.integer({ min: 0, max: 3 * 1024 * 1024 + 5 }),
          fc.array(fc.nat(4 * 1024 * 1024), { maxLength: 6 }),
          fc.nat(255),
          async (n, cuts, seed) => {
            const data = Buffer.alloc(n);
            for (let i = 0; i < n; i += 997) data[i] = (seed + i) & 0xff;
            await withFile(data, async (fd) => {
              const key = `u-${seed}-${n}`;
              await Promise.all(rangesOf(n, cuts).map(([off, len]) => hasher.range(key, fd, off, len)));
              assert.deepEqual(await hasher.digest(key, n), sha256(data));
            });
          },
        ),
        { numRuns: 12 },
      );
    } finally {
      hasher.close();
    }
  });

  it("refuses a range that does not follow the last one, and a range past the file's end", async () => {
    const hasher = new UploadHasher();
    try {
      await withFile(Buffer.alloc(1000, 3), async (fd) => {
        await hasher.range("a", fd, 0, 100);
        await assert.rejects(hasher.range("a", fd, 200, 100), /expected 100/);
        await assert.rejects(hasher.range("b", fd, 0, 2000), /ends at 1000/);
      });
    } finally {
      hasher.close();
    }
  });

  it("a worker that fails fails the uploads it was hashing; later ones are hashed on the kernel's thread, correctly", async () => {
    // A module that exits at once stands for a worker that dies.
    const dir = mkdtempSync(join(tmpdir(), "kpip-uphash-mod-"));
    const module = join(dir, "dies.mjs");
    writeFileSync(module, "process.exit(3);\n");
    const hasher = new UploadHasher(new URL(`file://${module}`));
    try {
      const data = Buffer.alloc(300_000, 7);
      await withFile(data, async (fd) => {
        await assert.rejects(hasher.range("a", fd, 0, 1000), /exited with 3/);
        await hasher.range("b", fd, 0, 100_000);
        await hasher.range("b", fd, 100_000, 200_000);
        assert.deepEqual(await hasher.digest("b", data.length), sha256(data));
      });
    } finally {
      hasher.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a worker that dies after hashing an upload's ranges takes their hash with it: the digest is refused, never the hash of no bytes", async () => {
    // Acknowledges ranges (as if hashed) and dies on the first `forget`: the upload's ranges were
    // all answered before it died, so nothing waiting on it is rejected.
    const dir = mkdtempSync(join(tmpdir(), "kpip-uphash-mod-"));
    const module = join(dir, "hashes-then-dies.mjs");
    writeFileSync(
      module,
      'import { parentPort } from "node:worker_threads";\n' +
        'parentPort.on("message", (m) => { if (m.kind === "forget") process.exit(3); parentPort.postMessage({ seq: m.seq }); });\n',
    );
    const hasher = new UploadHasher(new URL(`file://${module}`));
    try {
      const data = Buffer.alloc(1000, 9);
      await withFile(data, async (fd) => {
        await hasher.range("a", fd, 0, 600);
        await hasher.range("a", fd, 600, 400);
        hasher.forget("other");
        // Sent after the forget: the worker is gone before it reads this, and its exit fails it.
        await assert.rejects(hasher.range("z", fd, 0, 1), /exited with 3/);
        await assert.rejects(hasher.digest("a", data.length), /covers 0 bytes, not its 1000/);
      });
    } finally {
      hasher.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("once closed (the kernel stops), nothing more is hashed", async () => {
    const hasher = new UploadHasher();
    await withFile(Buffer.alloc(10, 1), async (fd) => {
      await hasher.range("a", fd, 0, 10);
      hasher.close();
      await assert.rejects(hasher.digest("a", 10), /stopping/);
    });
  });
});
