import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { HOME_FILES } from "../src/home.js";
import { DedupePruner } from "../src/store/dedupe-pruner.js";
import { SqliteStore } from "../src/store/sqlite.js";
import { removeHome, startKernel, until } from "./harness.js";

const now = 1_000_000;

/** A store in a temp dir and a writer of dedupe rows by number and expiry. */
function prunerStore() {
  const dir = mkdtempSync(join(tmpdir(), "kpip-dedupe-prune-"));
  const store = new SqliteStore(join(dir, "kernel.db"));
  const put = (i: number, expires: number) =>
    store.putDedupe({ key: `s:${i}`, hash: new Uint8Array(32), response: new Uint8Array([i & 0xff]), expires });
  return { dir, store, put };
}

describe("expired dedupe records are deleted in slices, off the whole-table scan", () => {
  it("a slice deletes only expired rows among the oldest; the pruner runs slices until nothing expired is left", async () => {
    const { dir, store, put } = prunerStore();
    try {
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

  it("the first pass after a start walks the whole table a slice a turn, whatever order the rows are in", async () => {
    const { dir, store, put } = prunerStore();
    try {
      // Out of expiry order (a longer window in the last run): live rows first, expired ones after.
      store.transaction(() => {
        for (let i = 0; i < 50; i++) put(i, now + 60_000);
        for (let i = 50; i < 1050; i++) put(i, now - 5000 + i);
        for (let i = 1050; i < 1100; i++) put(i, now + i);
      });
      const oldest = new DedupePruner(store, 32);
      oldest.run(now);
      assert.equal(oldest.deleted, 0, "a pass over the oldest rows stops at live ones");
      const pruner = new DedupePruner(store, 64);
      pruner.sweep(now);
      assert.equal(pruner.deleted, 14, "the first slice (64 rows looked at) runs at once");
      await new Promise((ok) => setImmediate(ok));
      assert.equal(pruner.deleted, 78, "then one slice a turn: requests get the event loop in between");
      await until(() => !pruner.busy, 30_000, "the pass ended");
      assert.equal(pruner.deleted, 1000);
      assert.equal(store.pruneDedupe(now), 0, "nothing expired is left");
      for (const i of [0, 49, 1050, 1099]) assert.ok(store.lookupDedupe(`s:${i}`, now), `live record ${i} kept`);
      pruner.stop();
    } finally {
      store.close();
      removeHome(dir);
    }
  });
});

describe("a kernel restarted over a large expired dedupe table", () => {
  it("answers requests while the first prune proceeds, a slice a turn, and the prune deletes every expired record", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-dedupe-restart-"));
    const path = join(home, HOME_FILES.database);
    const expired = 100_000;
    try {
      await (await startKernel({}, home)).stop();
      // What a previous run left: 20 records of a longer window, then many that expired while it was down.
      const store = new SqliteStore(path);
      const now = Date.now();
      store.transaction(() => {
        for (let i = 0; i < 20 + expired; i++)
          store.putDedupe({
            key: `old:${i}`,
            hash: new Uint8Array(32),
            response: new Uint8Array(8),
            expires: i < 20 ? now + 3_600_000 : now - 1,
          });
      });
      const first = store.dedupeEnd() - expired + 1;
      const last = store.dedupeEnd();
      store.close();
      const db = new Database(path, { readonly: true });
      const has = (rowid: number) => db.prepare("SELECT 1 FROM dedupe WHERE rowid = ?").get(rowid) !== undefined;
      // The default heartbeat (its first tick begins the prune, in 2.5 s): at 200 ms, a stall of
      // this process (the kernel and its client both) past 600 ms on a busy machine lost the link.
      const t = await startKernel({}, home);
      try {
        const c = await t.admin();
        // Looked at every turn of the event loop (a slice runs in each): the whole-table DELETE
        // went from all of them to none within one turn.
        const deadline = Date.now() + 60_000;
        while (has(first) && has(last)) {
          if (Date.now() > deadline) throw new Error("timed out waiting for the prune to begin");
          await new Promise((r) => setImmediate(r));
        }
        assert.ok(!has(first) && has(last), "part of the table pruned, part left: the event loop ran in between");
        await c.call("system.health", "kernel://");
        await until(() => !has(last), 60_000, "the prune reached the end of the table");
        assert.equal(
          (db.prepare("SELECT count(*) AS n FROM dedupe WHERE key LIKE 'old:%'").get() as { n: number }).n,
          20,
          "only the live records are left",
        );
      } finally {
        db.close();
        await t.stop();
      }
    } finally {
      removeHome(home);
    }
  });
});
