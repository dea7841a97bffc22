import assert from "node:assert/strict";
import fs from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { join } from "node:path";
import { describe, it } from "node:test";
import { removeHome, startKernel } from "./harness.js";
import { pattern, SMALL_FRAMES, tmpFiles } from "./storage-files.js";

/** Runs `fn` while the file system refuses (EIO) to remove files under any of `dirs` (node:fs's unlinkSync, in this process). */
async function whileUnlinkRefused<T>(dirs: string[], fn: () => Promise<T>): Promise<T> {
  const real = fs.unlinkSync;
  fs.unlinkSync = ((p: fs.PathLike) => {
    if (dirs.some((d) => String(p).startsWith(d)))
      throw Object.assign(new Error(`EIO: refused, unlink '${String(p)}'`), { code: "EIO" });
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

// The start removes what a run left in objects/tmp/ and objects/uploads/ (BlobStore's constructor).
// A removal the file system refused (EIO) threw out of the constructor: the kernel did not start.
describe("a start whose clean-up of uploads' files the file system refuses", () => {
  it("starts all the same, ends a left upload once on the record, and marks its note ended: the next start does not end it again", async () => {
    const t = await startKernel(SMALL_FRAMES);
    const home = t.home;
    const notes = join(home, "objects", "uploads");
    const tmp = join(home, "objects", "tmp");
    let upload = "";
    let note = "";
    try {
      const c = await t.admin();
      upload = ((await c.call("storage.upload.begin", "obj://w/half", { size: 300_000 })).payload as { upload: string }).upload;
      await c.call("storage.upload.chunk", "obj://w/half", { upload, offset: 0, data: pattern(1000, 7) });
      note = fs.readFileSync(join(notes, upload), "utf8");
    } finally {
      await t.stop();
    }
    const ends = (k: Awaited<ReturnType<typeof startKernel>>) =>
      k.k.inspect
        .queryAudit({ op: "storage.upload.ended", limit: 100 })
        .filter((r) => (JSON.parse(r.detail ?? "null") as { upload?: string }).upload === upload).length;
    // As a kill leaves it: the upload's note in place (the stop had ended it), and a file of a write in tmp/.
    fs.writeFileSync(join(notes, upload), note, { mode: 0o600 });
    fs.writeFileSync(join(tmp, "put-left"), "x", { mode: 0o600 });
    // Refused through the start and the stop: both files stay.
    await whileUnlinkRefused([`${notes}/`, `${tmp}/`], async () => {
      const t2 = await startKernel(SMALL_FRAMES, home);
      try {
        assert.equal(ends(t2), 2, "ended by the stop, and now by this start on the record");
        const c = await t2.admin();
        assert.equal((await c.call("storage.write", "obj://w/after", { data: Buffer.from("after") })).status, "SUCCESS");
      } finally {
        await t2.stop();
      }
    });
    assert.deepEqual(fs.readdirSync(notes), [upload], "its note was left");
    assert.ok(tmpFiles(home).includes("put-left"));
    const t3 = await startKernel(SMALL_FRAMES, home);
    try {
      assert.equal(ends(t3), 2, "not ended again: its note was marked ended");
      assert.deepEqual(fs.readdirSync(notes), [], "gone with this start");
      assert.deepEqual(tmpFiles(home), []);
    } finally {
      await t3.stop();
      removeHome(home);
    }
  });
});
