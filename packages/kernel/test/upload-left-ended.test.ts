import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { whileStuck } from "@kpip/protocol/testing";
import { removeHome, startKernel } from "./harness.js";
import { pattern, SMALL_FRAMES, sha, tmpFiles } from "./storage-files.js";

// The start after a kill records `storage.upload.ended` ("kernel killed") for each upload's partial
// file it finds in tmp/. A partial file can also be there after its upload ended — one the file
// system would neither move nor remove (EIO) once read — and that upload was not in progress.
describe("a partial file left by an upload that ended", () => {
  it("is not recorded by the next start as an upload the kernel was killed with: its upload committed", async () => {
    const opts = { ...SMALL_FRAMES, objectInlineBytes: 4096, uploadIdleMs: 60_000 };
    const t = await startKernel(opts);
    const home = t.home;
    let upload: string;
    try {
      const c = await t.admin();
      const data = pattern(3000, 5);
      upload = ((await c.call("storage.upload.begin", "obj://w/small", { size: data.length })).payload as { upload: string })
        .upload;
      await c.call("storage.upload.chunk", "obj://w/small", { upload, offset: 0, data });
      const partial = join(home, "objects", "tmp", tmpFiles(home)[0] as string);
      await whileStuck(partial, () =>
        c.call("storage.upload.commit", "obj://w/small", { upload, sha256: sha(data), size: data.length }),
      );
      assert.deepEqual(tmpFiles(home), [partial.slice(partial.lastIndexOf("/") + 1)], "its partial file is left in tmp/");
    } finally {
      await t.stop();
    }
    const t2 = await startKernel(opts, home);
    try {
      const ends = t2.k.inspect
        .queryAudit({ op: "storage.upload.ended", limit: 100 })
        .map((r) => JSON.parse(r.detail ?? "null") as { upload?: string; reason?: string });
      assert.deepEqual(
        ends.filter((d) => d.upload === upload),
        [],
        "a committed upload is not on the record as one the kernel was killed with",
      );
      assert.deepEqual(tmpFiles(home), [], "its partial file is gone all the same");
    } finally {
      await t2.stop();
      removeHome(home);
    }
  });
});
