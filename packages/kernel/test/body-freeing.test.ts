import assert from "node:assert/strict";
import fs, { readdirSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { join } from "node:path";
import { describe, it } from "node:test";
import { until, withKernel } from "./harness.js";
import { bodies, pattern, SMALL_FRAMES, sha } from "./storage-files.js";

/* The blocks of a large file are freed off the kernel's thread (red team, wt-red37). */

const KiB = 1024;
/** A file this large dropped on the kernel's thread is a stall worth catching (~0.45 s a GiB here). */
const LARGE = 256 * KiB;

type Sync = "renameSync" | "unlinkSync" | "closeSync";

/**
 * Records every call on this (the kernel's) thread that drops the last name of a large file, or
 * closes the last descriptor of an unlinked one: the call that frees its blocks. Reads the file's
 * link count before each call, so it says what the call would free, not how long it took (no timing).
 */
function watchFrees(): { frees: string[]; restore(): void } {
  const frees: string[] = [];
  const real = { renameSync: fs.renameSync, unlinkSync: fs.unlinkSync, closeSync: fs.closeSync };
  const lastName = (p: fs.PathLike) => {
    try {
      const st = fs.lstatSync(p);
      return st.isFile() && st.nlink === 1 && st.size >= LARGE ? st.size : 0;
    } catch {
      return 0;
    }
  };
  const patched: Record<Sync, (...a: never[]) => unknown> = {
    renameSync: (from: fs.PathLike, to: fs.PathLike) => {
      const n = lastName(to);
      if (n) frees.push(`renameSync over ${to} (${n} bytes)`);
      return real.renameSync(from, to);
    },
    unlinkSync: (p: fs.PathLike) => {
      const n = lastName(p);
      if (n) frees.push(`unlinkSync ${p} (${n} bytes)`);
      return real.unlinkSync(p);
    },
    closeSync: (fd: number) => {
      try {
        const st = fs.fstatSync(fd);
        if (st.isFile() && st.nlink === 0 && st.size >= LARGE) frees.push(`closeSync of an unlinked file (${st.size} bytes)`);
      } catch {}
      return real.closeSync(fd);
    },
  };
  Object.assign(fs, patched);
  // The kernel's modules import these by name: the named exports follow the patched object.
  syncBuiltinESMExports();
  return {
    frees,
    restore: () => {
      Object.assign(fs, real);
      syncBuiltinESMExports();
    },
  };
}

describe("large files are freed off the kernel's thread", () => {
  it("a write or upload of bytes another persona stores, and an aborted upload (the drop an expiry or a revocation makes too), free no large file on the kernel's thread", async () => {
    await withKernel({ ...SMALL_FRAMES, objectInlineBytes: 4096 }, async (t) => {
      const rights = (ws: string) => [
        { ops: ["storage.write", "storage.read", "storage.delete", "storage.upload.*"], targets: [`obj://${ws}/**`] },
      ];
      const v = await t.persona("victim", rights("vws"));
      const m = await t.persona("mallory", rights("mws"));
      const cv = await t.connect(v.identity, [v.token]);
      const cm = await t.connect(m.identity, [m.token]);
      const doc = pattern(3 * 1024 * KiB, 7);
      const page = pattern(512 * KiB, 8);
      await cv.storage.putLarge("obj://vws/doc", doc);
      await cv.storage.write("obj://vws/page", page);
      const seen = watchFrees();
      try {
        // Mallory stores the victim's bytes (a confirm-a-file probe, or a re-upload to stall
        // the kernel): the body at their address was dropped by the rename over it, on the
        // thread, only when someone stored them already.
        await cm.storage.putLarge("obj://mws/guess", doc);
        await cm.storage.write("obj://mws/page", page);
        // An upload of megabytes (gigabytes in the attack), then aborted: its partial file freed on the thread.
        await assert.rejects(
          cm.storage.putLarge("obj://mws/big", [pattern(2 * 1024 * KiB, 9)], { size: 3 * 1024 * KiB }),
          /held 2097152 bytes, not the declared/,
        );
        // Every freed file left off the thread: nothing partial, nothing being freed, is left.
        await until(() => readdirSync(join(t.home, "objects", "tmp")).length === 0);
      } finally {
        seen.restore();
      }
      assert.deepEqual(seen.frees, [], "no large file is freed on the kernel's thread");
      // One body per content, and every object reads back whole.
      assert.equal(bodies(t.home).filter((h) => h === sha(doc).toString("hex")).length, 1);
      for (const [c, uri, bytes] of [
        [cv, "obj://vws/doc", doc],
        [cm, "obj://mws/guess", doc],
        [cv, "obj://vws/page", page],
        [cm, "obj://mws/page", page],
      ] as const) {
        assert.ok((await c.storage.getLarge(uri)).equals(bytes), uri);
      }
    });
  });
});
