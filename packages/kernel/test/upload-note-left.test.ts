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
  it("still refused at the stop: the next start tells the ended uploads by the database, not the note — no end recorded for a committed upload nor again for one the stop ended", async () => {
    const t = await startKernel(SMALL_FRAMES);
    const home = t.home;
    const data = pattern(300_000, 5);
    let committed = "";
    let stopped = "";
    try {
      const c = await t.admin();
      const begin = async (target: string) =>
        ((await c.call("storage.upload.begin", target, { size: data.length })).payload as { upload: string }).upload;
      committed = await begin("obj://w/kept");
      await c.call("storage.upload.chunk", "obj://w/kept", { upload: committed, offset: 0, data });
      stopped = await begin("obj://w/half");
      await c.call("storage.upload.chunk", "obj://w/half", { upload: stopped, offset: 0, data: data.subarray(0, 1000) });
      // Refused from the commit to the end of the stop: both notes are left on disk.
      await whileUnlinkRefused(`${home}/objects/uploads/`, async () => {
        const r = await c.call("storage.upload.commit", "obj://w/kept", {
          upload: committed,
          size: data.length,
          sha256: sha(data),
        });
        assert.equal(r.status, "SUCCESS");
        await t.stop();
      });
    } finally {
      await t.stop();
    }
    assert.deepEqual(fs.readdirSync(`${home}/objects/uploads`).sort(), [committed, stopped].sort(), "both notes were left");
    const t2 = await startKernel(SMALL_FRAMES, home);
    try {
      const ends = (id: string) =>
        t2.k.inspect
          .queryAudit({ op: "storage.upload.ended", limit: 100 })
          .filter((r) => (JSON.parse(r.detail ?? "null") as { upload?: string }).upload === id)
          .map((r) => r.message);
      assert.deepEqual(ends(committed), [], "a committed upload is not ended");
      assert.equal(ends(stopped).length, 1, `ended once, by the stop: ${JSON.stringify(ends(stopped))}`);
      assert.equal((await (await t2.admin()).call("storage.stat", "obj://w/kept")).status, "SUCCESS");
      assert.deepEqual(fs.readdirSync(`${home}/objects/uploads`), [], "the notes are gone with this start");
    } finally {
      await t2.stop();
      removeHome(home);
    }
  });
});
