import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { removeHome, startKernel } from "./harness.js";
import { pattern, SMALL_FRAMES, tmpFiles } from "./storage-files.js";

interface Ended {
  upload?: string;
  reason?: string;
  received?: number;
}

// An upload in progress when its kernel is SIGKILLed is recorded ended by the next start
// ("kernel killed"); one in progress at a clean stop is recorded ended by the stop itself.
describe("an upload in progress at a clean stop", () => {
  it("is recorded ended by the stop (kernel stopped), before kernel.stop, its note and partial file removed; the next start records nothing more", async () => {
    const t = await startKernel(SMALL_FRAMES);
    const home = t.home;
    let upload: string;
    try {
      const c = await t.admin();
      const data = pattern(3000, 7);
      upload = ((await c.call("storage.upload.begin", "obj://w/big", { size: 2 * data.length })).payload as { upload: string })
        .upload;
      await c.call("storage.upload.chunk", "obj://w/big", { upload, offset: 0, data });
    } finally {
      await t.stop();
    }
    assert.deepEqual(tmpFiles(home), [], "its partial file is removed by the stop");
    assert.deepEqual(readdirSync(join(home, "objects", "uploads")), [], "and its note");
    const t2 = await startKernel(SMALL_FRAMES, home);
    try {
      const rows = t2.k.inspect.queryAudit({ op: "storage.upload.ended", limit: 100 });
      const ends = rows.map((r) => ({ seq: r.seq, ...(JSON.parse(r.detail ?? "null") as Ended) }));
      const mine = ends.filter((d) => d.upload === upload);
      assert.equal(mine.length, 1, JSON.stringify(ends));
      assert.equal(mine[0]?.reason, "kernel stopped");
      assert.equal(mine[0]?.received, 3000);
      const stops = t2.k.inspect.queryAudit({ op: "kernel.stop", limit: 10 });
      assert.equal(stops.length, 1);
      assert.ok((mine[0]?.seq ?? 0) < (stops[0]?.seq ?? 0), "on the record before the run's kernel.stop");
    } finally {
      await t2.stop();
      removeHome(home);
    }
  });
});
