import assert from "node:assert/strict";
import nodeFs from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { sep } from "node:path";
import { describe, it } from "node:test";
import { KpipError } from "@kpip/protocol";
import { pino } from "pino";
import type { KernelServices } from "../src/kernel/compose.js";
import type { Kernel } from "../src/kernel.js";
import type { BlobStore } from "../src/store/blobs.js";
import { removeHome, startKernel, until } from "./harness.js";
import { bodies, pattern, sha, watchPuts } from "./storage-files.js";

/**
 * Until the returned disarm: a body cannot leave its address in the file store (the rename into
 * `objects/tmp/gone-*` that frees it fails with EIO, and so does the unlink in its place that a
 * refused rename falls back to), as a clean-up after a committed change meets a failing disk.
 * Every other rename and unlink goes through.
 */
function bodiesCannotLeave(): () => void {
  const mutable = nodeFs as unknown as {
    renameSync: (from: string, to: string) => void;
    unlinkSync: (path: string) => void;
  };
  const real = { renameSync: mutable.renameSync, unlinkSync: mutable.unlinkSync };
  const eio = (op: string) => Object.assign(new Error(`EIO: i/o error, ${op}`), { code: "EIO", errno: -5 });
  mutable.renameSync = (from, to) => {
    if (String(to).includes(`${sep}objects${sep}tmp${sep}gone-`)) throw eio("rename");
    real.renameSync(from, to);
  };
  mutable.unlinkSync = (path) => {
    if (String(path).includes(`${sep}objects${sep}sha256${sep}`)) throw eio("unlink");
    real.unlinkSync(path);
  };
  syncBuiltinESMExports();
  return () => {
    mutable.renameSync = real.renameSync;
    mutable.unlinkSync = real.unlinkSync;
    syncBuiltinESMExports();
  };
}

const blobsOf = (k: Kernel) => (k as unknown as { services: KernelServices }).services.blobs;

/** Holds the housekeeping tick's removals of released bodies while `held` is set: `flush` runs one now. */
function holdFlushes(blobs: BlobStore): { held: boolean; flush(): number } {
  const flush = blobs.flushReleased.bind(blobs);
  const h = { held: true, flush };
  blobs.flushReleased = () => (h.held ? 0 : flush());
  return h;
}

describe("work after a committed effect fails", () => {
  it("a body that cannot be freed after storage.write, storage.delete or an upload's commit: the answer is the committed SUCCESS, and the next start frees the body", async () => {
    let t = await startKernel({ objectInlineBytes: 0 });
    const home = t.home;
    let disarm: (() => void) | undefined;
    try {
      // No retries: the first answer is the one under test (a retry would get the recorded SUCCESS).
      const c = await t.admin({ maxAttempts: 1 });
      const [first, second, replaced, uploaded] = [pattern(5000, 1), pattern(5000, 2), pattern(5000, 3), pattern(5000, 4)];
      await c.storage.write("obj://ws/a", first);
      await c.storage.write("obj://ws/b", second);
      // The bodies the changes stop naming go at the housekeeping tick: held, and run below.
      const tick = holdFlushes(blobsOf(t.k));
      disarm = bodiesCannotLeave();

      // Each change committed, then freeing the body it stopped naming failed: SUCCESS all the same.
      assert.equal((await c.storage.write("obj://ws/a", replaced)).generation, 2);
      assert.equal((await c.call("storage.delete", "obj://ws/b")).status, "SUCCESS");
      const { upload } = (await c.call("storage.upload.begin", "obj://ws/a", { size: uploaded.length })).payload as {
        upload: string;
      };
      await c.call("storage.upload.chunk", "obj://ws/a", { upload, offset: 0, data: uploaded });
      const commit = await c.call("storage.upload.commit", "obj://ws/a", {
        upload,
        sha256: sha(uploaded),
        size: uploaded.length,
      });
      assert.equal(commit.status, "SUCCESS");
      // The committed upload is gone, as after any commit (not kept for a retry of a commit that happened).
      await assert.rejects(c.call("storage.upload.abort", "obj://ws/a", { upload }));

      // The record says what the answers said.
      const outcomes = t.k.inspect
        .queryAudit({ limit: 100 })
        .filter(
          (r) => r.phase === "outcome" && ["storage.write", "storage.delete", "storage.upload.commit"].includes(r.op ?? ""),
        );
      assert.ok(outcomes.length >= 5, JSON.stringify(outcomes));
      for (const r of outcomes) assert.equal(r.status, "SUCCESS", `${r.op} ${r.target}: ${r.message}`);
      assert.equal(Buffer.compare(Buffer.from((await c.storage.read("obj://ws/a")).data), uploaded), 0);
      await assert.rejects(c.storage.read("obj://ws/b"));

      // The tick that removes them fails (after the answers, off the requests' path); the bodies no
      // row names are left behind, and the next start removes them.
      assert.throws(() => tick.flush(), /EIO/);
      disarm();
      disarm = undefined;
      assert.equal(blobsOf(t.k).pendingReleases, 0, "not tried again: a second sync could pass with the WAL's pages lost");
      assert.deepEqual(bodies(home).sort(), [first, second, replaced, uploaded].map((b) => sha(b).toString("hex")).sort());
      await t.stop();
      t = await startKernel({ objectInlineBytes: 0 }, home);
      assert.deepEqual(bodies(home), [sha(uploaded).toString("hex")]);
      const again = await t.admin();
      assert.equal(Buffer.compare(Buffer.from((await again.storage.read("obj://ws/a")).data), uploaded), 0);
    } finally {
      disarm?.();
      await t.stop();
      removeHome(home);
    }
  });

  it("a write refused at its commit (a generation conflict: the object changed while its body was stored) whose new body then cannot be freed: the refusal is the real one, SEMANTIC, not INTERNAL; the failure is logged and the next start frees the body", async () => {
    const lines: Record<string, unknown>[] = [];
    const logger = pino({ level: "info" }, { write: (l: string) => void lines.push(JSON.parse(l)) });
    let t = await startKernel({ objectInlineBytes: 0, logger });
    const home = t.home;
    let disarm: (() => void) | undefined;
    const puts = watchPuts();
    try {
      const c = await t.admin({ maxAttempts: 1 });
      const [first, refused, between] = [pattern(5000, 1), pattern(5000, 2), pattern(5000, 3)];
      assert.equal((await c.storage.write("obj://ws/a", first)).generation, 1);
      const tick = holdFlushes(blobsOf(t.k));
      // A stale generation is refused before any body is written (case 538): this one is current
      // when it begins, and the object changes while its body is being stored.
      let open = () => {};
      puts.gate = new Promise<void>((r) => {
        open = r;
      });
      const racing = c.call("storage.write", "obj://ws/a", { data: refused, ifGeneration: 1 }).then(
        () => undefined,
        (e: unknown) => e,
      );
      await until(() => puts.n === 2, 30_000, "the conditional write storing its body");
      puts.gate = undefined;
      const other = await t.admin({ maxAttempts: 1 });
      assert.equal((await other.storage.write("obj://ws/a", between)).generation, 2);
      // The first body, which that write stopped naming, goes now; the refused one at the tick below.
      assert.equal(tick.flush(), 1);
      disarm = bodiesCannotLeave();
      open();
      const err = await racing;
      assert.ok(err instanceof KpipError, String(err));
      assert.deepEqual([err.errorClass, err.message], ["SEMANTIC", "generation conflict: obj://ws/a is at generation 2"]);
      // The refused body is released, not removed by the request: the tick's removal fails, and is logged.
      tick.held = false;
      const logged = await until(
        () =>
          lines.find((l) => l.msg === "the bodies pruner failed; the bodies it was removing stay until the next start's sweep"),
        60_000,
        "the tick's failed removal logged",
      );
      assert.match(JSON.stringify(logged.err), /EIO/);
      const outcome = t.k.inspect.queryAudit({ limit: 100 }).filter((r) => r.op === "storage.write" && r.status === "FAILURE");
      assert.deepEqual(
        outcome.map((r) => r.errorClass),
        ["SEMANTIC"],
      );

      // The refused body stayed; the next start removes it.
      disarm();
      disarm = undefined;
      assert.deepEqual(bodies(home).sort(), [between, refused].map((b) => sha(b).toString("hex")).sort());
      await t.stop();
      t = await startKernel({ objectInlineBytes: 0 }, home);
      assert.deepEqual(bodies(home), [sha(between).toString("hex")]);
    } finally {
      puts.restore();
      disarm?.();
      await t.stop();
      removeHome(home);
    }
  });
});
