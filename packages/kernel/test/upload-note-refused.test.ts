import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { whileRefused } from "@kpip/protocol/testing";
import { withKernel } from "./harness.js";
import { pattern, SMALL_FRAMES, sha, tmpFiles } from "./storage-files.js";

/*
 * storage.upload.begin writes a note of the upload (objects/uploads/<id>) before it answers: a
 * start after a kill records the end of each upload whose note it finds. A begin whose note the
 * file system refuses is not begun: its answer is typed — RESOURCE when there is no room (a retry
 * once there is can succeed), INTERNAL otherwise (the kernel's log has the errno) — and nothing of
 * it is left; the kernel serves on.
 */
describe("storage.upload.begin whose note cannot be written", () => {
  for (const [code, errorClass] of [
    ["ENOSPC", "RESOURCE"],
    ["EDQUOT", "RESOURCE"],
    ["EIO", "INTERNAL"],
  ] as const)
    it(`is refused ${errorClass} for ${code}, naming no path of the kernel's home; nothing of it is left and the next begin runs`, async () => {
      await withKernel(SMALL_FRAMES, async (t) => {
        const c = await t.admin();
        const notes = join(t.home, "objects", "uploads");
        await whileRefused(notes, code, async () => {
          await assert.rejects(
            c.call("storage.upload.begin", "obj://w/x", { size: 10 }),
            (e: Error & { errorClass?: string }) => {
              assert.equal(e.errorClass, errorClass, e.message);
              assert.ok(!e.message.includes(t.home), `no host path in the answer: ${e.message}`);
              return true;
            },
          );
        });
        assert.deepEqual(tmpFiles(t.home), [], "its partial file went with it");
        const data = pattern(10, 3);
        const { upload } = (await c.call("storage.upload.begin", "obj://w/x", { size: data.length })).payload as {
          upload: string;
        };
        await c.call("storage.upload.chunk", "obj://w/x", { upload, offset: 0, data });
        await c.call("storage.upload.commit", "obj://w/x", { upload, sha256: sha(data), size: data.length });
        assert.ok(Buffer.from((await c.storage.read("obj://w/x")).data).equals(data));
      });
    });
});
