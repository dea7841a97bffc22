import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { pathToFileURL } from "node:url";
import fc from "fast-check";
import { pino } from "pino";
import { UploadHasher } from "../src/primitives/upload-hasher.js";
import { RangeHashes } from "../src/primitives/upload-range-hashes.js";
import { sha256 } from "../src/store/blobs.js";
import { crashingWorker } from "./crashing-hash-worker.js";
import { withKernel } from "./harness.js";
import { MiB, pattern } from "./storage-files.js";

/** A logger whose lines the test reads. */
function captured() {
  const lines: Record<string, unknown>[] = [];
  return { logger: pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) }), lines };
}

/* The object's SHA-256 of a chunked upload is made off the kernel's thread, from the partial file (issue #22). */

const withFile = async (data: Buffer, f: (fd: number, path: string) => Promise<void>) => {
  const dir = mkdtempSync(join(tmpdir(), "kpip-uphash-"));
  const path = join(dir, "partial");
  writeFileSync(path, data);
  const fd = openSync(path, "r");
  try {
    await f(fd, path);
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

  it("shares the worker by persona, then by upload, a MiB a turn: another persona's small upload is digested before any of one persona's many large uploads is hashed", async () => {
    const hasher = new UploadHasher();
    const dir = mkdtempSync(join(tmpdir(), "kpip-uphash-"));
    const path = join(dir, "partial");
    writeFileSync(path, "");
    truncateSync(path, 8 * MiB);
    const fd = openSync(path, "r");
    try {
      const order: string[] = [];
      const note = (what: string) => () => void order.push(what);
      // mallory has four uploads of 8 MiB waiting (32 MiB ahead of anyone in a first-come queue);
      // alice a large one of her own, then a small one, and its digest.
      const mine = [1, 2, 3, 4].map((i) => hasher.range(`m${i}`, fd, 0, 8 * MiB, "mallory").then(note(`m${i}`)));
      const large = hasher.range("a-large", fd, 0, 8 * MiB, "alice").then(note("a-large"));
      const small = hasher.range("a-small", fd, 0, 64 * 1024, "alice").then(note("a-small"));
      const digest = hasher.digest("a-small", 64 * 1024);
      assert.deepEqual(await digest, sha256(Buffer.alloc(64 * 1024)));
      await small;
      assert.deepEqual(order, ["a-small"], "none of the large ranges was hashed through before the small upload's digest");
      await Promise.all([...mine, large]);
      assert.deepEqual(order.slice(0, 1), ["a-small"]);
      for (const key of ["m1", "m2", "m3", "m4", "a-large"])
        assert.deepEqual(await hasher.digest(key, 8 * MiB), sha256(Buffer.alloc(8 * MiB)));
    } finally {
      closeSync(fd);
      hasher.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a worker that dies mid-upload is restarted: the upload's hash is made again from its file, and the next upload uses the new worker", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-uphash-mod-"));
    const w = crashingWorker(dir, 'm.kind === "range" && m.offset > 0');
    const { logger, lines } = captured();
    const hasher = new UploadHasher({ module: w.module, log: logger });
    try {
      const data = pattern(3 * 1024 * 1024 + 17, 5);
      await withFile(data, async (fd) => {
        await hasher.range("a", fd, 0, 1024 * 1024);
        w.arm();
        // In flight together when the worker dies on the second: none is lost, none hashed twice.
        await Promise.all([
          hasher.range("a", fd, 1024 * 1024, 1024 * 1024),
          hasher.range("a", fd, 2 * 1024 * 1024, 1024 * 1024 + 17),
        ]);
        assert.deepEqual(await hasher.digest("a", data.length), sha256(data));
        await hasher.range("b", fd, 0, 1000);
        assert.deepEqual(await hasher.digest("b", 1000), sha256(data.subarray(0, 1000)));
      });
      assert.equal(w.armed(), false, "the worker died");
      assert.equal(hasher.started, 2, "one restart");
      const threads = new Map(w.trace().map(([thread, kind, key, offset]) => [`${kind} ${key} ${offset}`, thread]));
      const trace = w.trace();
      assert.deepEqual(trace[0]?.slice(1), ["range", "a", "0"]);
      assert.notEqual(threads.get("range b 0"), trace[0]?.[0], "the next upload is hashed by the new worker");
      // The new worker hashed a's first range again (from the file), then the two in flight, a MiB a turn.
      assert.deepEqual(
        trace.filter(([t]) => t === threads.get("range b 0")).map(([, kind, key, offset]) => `${kind} ${key} ${offset}`),
        ["range a 0", "range a 1048576", "range a 2097152", "range a 3145728", "digest a ", "range b 0", "digest b "],
      );
      assert.equal(threads.get("range b 0"), threads.get("digest a "), "and so is the end of the one in flight");
      const died = lines.filter((l) => l.level === 40);
      assert.equal(died.length, 1);
      assert.match(String(died[0]?.msg), /hash worker died/);
      assert.match(String((died[0]?.err as { message?: string })?.message), /exited with 7/);
    } finally {
      hasher.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a worker that keeps dying is restarted a bounded number of times, then hashing stays on the kernel's thread (logged), correctly", async () => {
    // A module that exits at once stands for a worker that cannot run.
    const dir = mkdtempSync(join(tmpdir(), "kpip-uphash-mod-"));
    const module = join(dir, "dies.mjs");
    writeFileSync(module, "process.exit(3);\n");
    const { logger, lines } = captured();
    const hasher = new UploadHasher({ module: pathToFileURL(module), log: logger, restarts: { max: 3, backoffMs: 1 } });
    try {
      const data = Buffer.alloc(300_000, 7);
      await withFile(data, async (fd) => {
        await hasher.range("a", fd, 0, 1000);
        await hasher.range("b", fd, 0, 100_000);
        await hasher.range("b", fd, 100_000, 200_000);
        assert.deepEqual(await hasher.digest("b", data.length), sha256(data));
        assert.deepEqual(await hasher.digest("a", 1000), sha256(data.subarray(0, 1000)));
      });
      assert.equal(hasher.started, 3, "started three times, never again");
      assert.deepEqual(
        lines.map((l) => l.level),
        [40, 40, 50],
      );
      assert.match(String(lines[2]?.msg), /on the kernel's thread from now on/);
    } finally {
      hasher.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a worker that dies after it answered an upload's ranges: the digest covers exactly the bytes, hashed again from the file, or is refused, never the hash of fewer bytes", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-uphash-mod-"));
    // Dies on a `forget`: every range of the upload was answered before, nothing waits on it.
    const w = crashingWorker(dir, 'm.kind === "forget"');
    const hasher = new UploadHasher({ module: w.module, restarts: { backoffMs: 1 } });
    try {
      const data = Buffer.alloc(1000, 9);
      await withFile(data, async (fd, path) => {
        await hasher.range("a", fd, 0, 600);
        await hasher.range("a", fd, 600, 400);
        w.arm();
        hasher.forget("other");
        assert.deepEqual(await hasher.digest("a", data.length), sha256(data));
        // The file lost bytes the dead worker had hashed: the new one cannot cover them again.
        await hasher.range("c", fd, 0, 1000);
        truncateSync(path, 500);
        w.arm();
        hasher.forget("other");
        await assert.rejects(hasher.digest("c", data.length), /the partial file of c ends at 500, before 1000/);
      });
      assert.equal(hasher.started, 3);
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

describe("the upload hash worker of a running kernel", () => {
  it("dies in the middle of an upload: the upload commits with its right hash, the death is logged, and a later upload uses a new worker", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-uphash-mod-"));
    const w = crashingWorker(dir, 'm.kind === "range" && m.offset > 0');
    const { logger, lines } = captured();
    try {
      await withKernel({ uploadHashWorker: w.module, logger }, async (t) => {
        const c = await t.admin();
        const data = pattern(2 * MiB + 3, 11);
        w.arm();
        const r = await c.storage.putLarge("obj://up/a", data, { chunkBytes: 256 * 1024 });
        assert.deepEqual(Buffer.from(r.sha256), sha256(data), "committed under the SHA-256 of exactly its bytes");
        assert.ok((await c.storage.getLarge("obj://up/a")).equals(data));
        assert.equal(w.armed(), false, "the worker died during the upload");
        const more = pattern(700_000, 12);
        await c.storage.putLarge("obj://up/b", more, { chunkBytes: 256 * 1024 });
        assert.ok((await c.storage.getLarge("obj://up/b")).equals(more));
      });
      const trace = w.trace();
      const [first, upload] = [trace[0]?.[0], trace[0]?.[2]];
      const later = trace.filter(([, kind, key]) => kind === "range" && key !== upload);
      assert.ok(later.length >= 3, "the later upload's chunks went to a worker");
      for (const [thread] of later) assert.notEqual(thread, first, "not the worker that died");
      const died = lines.filter((l) => /hash worker died/.test(String(l.msg)));
      assert.equal(died.length, 1, "the death is logged once");
      assert.equal(died[0]?.level, 40);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the upload hash worker of a running kernel, given up", () => {
  it("keeps dying while a 64 MiB upload waits for its digest: the replay on the kernel's thread goes a MiB a turn, and another session's request is answered while it is under way", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-uphash-mod-"));
    // Once armed, every worker dies on its first message: the fifth death leaves hashing to the kernel's thread.
    const w = crashingWorker(dir, "true", true);
    let fellBack: () => void = () => {};
    const givenUp = new Promise<void>((resolve) => {
      fellBack = resolve;
    });
    const logger = pino({ level: "info" }, { write: (s: string) => /keeps dying/.test(String(JSON.parse(s).msg)) && fellBack() });
    // What the kernel's thread hashes (a worker has its own copy of the module): counted as each range begins.
    const range = RangeHashes.prototype.range;
    let inline = 0;
    RangeHashes.prototype.range = function (this: RangeHashes, key: string, fd: number, offset: number, length: number) {
      inline += length;
      range.call(this, key, fd, offset, length);
    };
    try {
      await withKernel({ uploadHashWorker: w.module, logger }, async (t) => {
        const c = await t.admin();
        const other = await t.admin();
        const size = 64 * MiB;
        const data = pattern(size, 21);
        const target = "obj://up/big";
        const { upload } = (await c.call("storage.upload.begin", target, { size })).payload as { upload: string };
        for (let offset = 0; offset < size; offset += 4 * MiB)
          await c.call("storage.upload.chunk", target, { upload, offset, data: data.subarray(offset, offset + 4 * MiB) });
        w.arm();
        let committed = false;
        const commit = c.call("storage.upload.commit", target, { upload, sha256: sha256(data), size }).finally(() => {
          committed = true;
        });
        await givenUp;
        await other.call("system.health", "kernel://");
        const during = inline;
        assert.ok(
          during < size,
          `answered while the replay was under way (${during} of ${size} bytes hashed on the kernel's thread)`,
        );
        assert.equal(committed, false);
        const r = (await commit).payload as { sha256: Uint8Array };
        assert.deepEqual(Buffer.from(r.sha256), sha256(data), "committed under the SHA-256 of exactly its bytes");
        assert.equal(inline, size, "every byte hashed once on the kernel's thread");
        assert.ok((await c.storage.getLarge(target)).equals(data));
      });
    } finally {
      RangeHashes.prototype.range = range;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
