import assert from "node:assert/strict";
import fs from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { describe, it } from "node:test";
import { removeHome, startKernel } from "./harness.js";
import { pattern, SMALL_FRAMES, sha } from "./storage-files.js";

/**
 * Runs `fn` while the file system refuses (EIO) to remove files under `dir`: node:fs's
 * `unlinkSync` throws there, in this process (named imports included). Restored after.
 */
async function whileUnlinkRefused<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  const real = fs.unlinkSync;
  fs.unlinkSync = ((p: fs.PathLike) => {
    if (String(p).startsWith(dir)) throw Object.assign(new Error(`EIO: refused, unlink '${String(p)}'`), { code: "EIO" });
    return real(p);
  }) as typeof fs.unlinkSync;
  syncBuiltinESMExports();
  try {
    return await fn();
  } finally {
    fs.unlinkSync = real;
    syncBuiltinESMExports();
  }
}

// An upload's note (objects/uploads/<id>) is what the next start ends an upload by; one without
// its partial file reads as a commit under way that did not complete (case 634). A committed
// upload whose note the file system refused to remove (EIO, as cases 605 and 631's disks) was
// recorded by the next start as "being committed, and the commit did not complete" — for an
// upload whose commit was on the record and whose object was there.
describe("an upload's note the file system refused to remove at its end", () => {
  it("is removed once the file system lets it (the stop tries again): the next start records no end for a committed upload", async () => {
    const t = await startKernel(SMALL_FRAMES);
    const home = t.home;
    let upload = "";
    try {
      const c = await t.admin();
      const data = pattern(300_000, 3);
      upload = ((await c.call("storage.upload.begin", "obj://w/kept", { size: data.length })).payload as { upload: string })
        .upload;
      await c.call("storage.upload.chunk", "obj://w/kept", { upload, offset: 0, data });
      const r = await whileUnlinkRefused(`${home}/objects/uploads/`, () =>
        c.call("storage.upload.commit", "obj://w/kept", { upload, size: data.length, sha256: sha(data) }),
      );
      assert.equal(r.status, "SUCCESS");
    } finally {
      await t.stop();
    }
    const t2 = await startKernel(SMALL_FRAMES, home);
    try {
      const ends = t2.k.inspect
        .queryAudit({ op: "storage.upload.ended", limit: 100 })
        .filter((r) => (JSON.parse(r.detail ?? "null") as { upload?: string }).upload === upload);
      assert.deepEqual(
        ends.map((r) => r.message),
        [],
        "a committed upload is not ended again",
      );
      assert.equal((await (await t2.admin()).call("storage.stat", "obj://w/kept")).status, "SUCCESS");
    } finally {
      await t2.stop();
      removeHome(home);
    }
  });
});
