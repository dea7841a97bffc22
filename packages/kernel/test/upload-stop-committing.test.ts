import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { UploadTable } from "../src/primitives/storage-uploads.js";
import { Sandbox } from "../src/sandbox/sandbox.js";
import { BlobStore } from "../src/store/blobs.js";
import { removeHome, startKernel } from "./harness.js";
import { pattern, SMALL_FRAMES, sha } from "./storage-files.js";

interface Ended {
  upload?: string;
  reason?: string;
}

/** A promise and its resolve. */
function signal(): { promise: Promise<void>; resolve: () => void } {
  let resolve = () => {};
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

// Case 641 records at a clean stop each upload not being committed. One being committed then
// (its request outlasted the drain) is refused at its commit once effects stop, and kept for a
// retry; the stop's last step (UploadTable.close) dropped it with its note and no record: neither
// the stop nor the next start said what became of it. The interleaving is driven by hand: the
// commit's install waits for the stop's endAll, and the stop's next await waits for the commit's end.
describe("an upload being committed at a clean stop", () => {
  it("whose commit the stop refuses is recorded ended (kernel stopped), once, not dropped with no record", async () => {
    const t = await startKernel({ ...SMALL_FRAMES, drainTimeoutMs: 200 });
    const home = t.home;
    const install = BlobStore.prototype.install;
    const keep = UploadTable.prototype.keep;
    const endAll = UploadTable.prototype.endAll;
    const close = Sandbox.prototype.close;
    const installing = signal();
    const gate = signal();
    const kept = signal();
    let upload = "";
    try {
      const c = await t.admin();
      const data = pattern(300_000, 5);
      upload = ((await c.call("storage.upload.begin", "obj://w/slow", { size: data.length })).payload as { upload: string })
        .upload;
      await c.call("storage.upload.chunk", "obj://w/slow", { upload, offset: 0, data });
      // Its commit's install (the body moved to its address) waits until the stop has run endAll.
      BlobStore.prototype.install = async function (this: BlobStore, path: string, hash: Uint8Array) {
        installing.resolve();
        await gate.promise;
        return install.call(this, path, hash);
      };
      UploadTable.prototype.endAll = function (this: UploadTable) {
        const n = endAll.call(this);
        gate.resolve();
        return n;
      };
      UploadTable.prototype.keep = function (this: UploadTable, ...args: Parameters<UploadTable["keep"]>) {
        keep.apply(this, args);
        kept.resolve();
      };
      // The stop's next await after endAll waits for the refused commit to be kept.
      Sandbox.prototype.close = async function (this: Sandbox, ownRoot: boolean) {
        await kept.promise;
        return close.call(this, ownRoot);
      };
      const commit = c
        .call("storage.upload.commit", "obj://w/slow", { upload, size: data.length, sha256: sha(data) })
        .catch((e: unknown) => e);
      await installing.promise;
      // The kernel itself (a client's close would wait for its commit, held until the stop runs).
      await t.k.stop();
      assert.ok((await commit) instanceof Error, "the commit was not answered SUCCESS");
    } finally {
      BlobStore.prototype.install = install;
      UploadTable.prototype.keep = keep;
      UploadTable.prototype.endAll = endAll;
      Sandbox.prototype.close = close;
      gate.resolve();
      kept.resolve();
      await t.stop();
    }
    const t2 = await startKernel(SMALL_FRAMES, home);
    try {
      const ends = t2.k.inspect
        .queryAudit({ op: "storage.upload.ended", limit: 100 })
        .map((r) => ({ seq: r.seq, message: r.message, ...(JSON.parse(r.detail ?? "null") as Ended) }))
        .filter((d) => d.upload === upload);
      assert.equal(ends.length, 1, `its end on the record once: ${JSON.stringify(ends)}`);
      assert.equal(ends[0]?.reason, "kernel stopped");
      assert.match(ends[0]?.message ?? "", /every byte of it received and its commit refused/);
      const stop = t2.k.inspect.queryAudit({ op: "kernel.stop", limit: 10 })[0];
      assert.ok(stop && (ends[0]?.seq ?? 0) < stop.seq, "on the record before the run's kernel.stop");
      assert.equal(
        t2.k.inspect
          .queryAudit({ op: "storage.write", limit: 100 })
          .filter((r) => r.target === "obj://w/slow" && r.status === "SUCCESS").length,
        0,
      );
    } finally {
      await t2.stop();
      removeHome(home);
    }
  });
});
