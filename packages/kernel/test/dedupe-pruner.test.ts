import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { DedupePruner } from "../src/store/dedupe-pruner.js";
import { SqliteStore } from "../src/store/sqlite.js";
import { removeHome, until } from "./harness.js";

describe("expired dedupe records are deleted in slices, off the whole-table scan", () => {
  it("a slice deletes only expired rows among the oldest; the pruner runs slices until nothing expired is left", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-dedupe-prune-"));
    const store = new SqliteStore(join(dir, "kernel.db"));
    try {
      const now = 1_000_000;
      const put = (i: number, expires: number) =>
        store.putDedupe({ key: `s:${i}`, hash: new Uint8Array(32), response: new Uint8Array([i & 0xff]), expires });
      // Appended in expiry order, as the pipeline writes them: 1,000 expired, then 300 live.
      store.transaction(() => {
        for (let i = 0; i < 1000; i++) put(i, now - 1000 + i);
        for (let i = 1000; i < 1300; i++) put(i, now + i);
      });
      assert.equal(store.pruneDedupe(now, 100), 100, "one slice: the 100 oldest, all expired");
      assert.equal(store.lookupDedupe("s:99", now - 2000), undefined, "gone");
      assert.ok(store.lookupDedupe("s:100", now - 2000), "the next one is still there");

      const pruner = new DedupePruner(store, 64);
      pruner.run(now);
      await until(() => pruner.deleted === 900, 30_000, "the expired rows deleted");
      assert.equal(store.pruneDedupe(now), 0, "nothing expired is left");
      for (const i of [1000, 1299]) assert.ok(store.lookupDedupe(`s:${i}`, now), `live record ${i} kept`);
      pruner.stop();
      put(2000, now - 1);
      pruner.run(now);
      assert.equal(pruner.deleted, 900, "a stopped pruner deletes nothing");
    } finally {
      store.close();
      removeHome(dir);
    }
  });
});
