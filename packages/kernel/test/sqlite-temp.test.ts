import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, statSync, watch } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { HOME_FILES } from "../src/index.js";
import { removeHome, startKernel, until } from "./harness.js";

// A file of its own: SQLite reads where its temporary files go once a process, at its first use.
describe("SQLite's temporary files", () => {
  it("go in the kernel's home, not the host's temp directory (where sandboxes' scratch lives)", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    // The host's temp directory, as the kernel's process sees it: a persona's scratch filling it
    // must not fail the kernel's queries.
    const host = mkdtempSync(join(tmpdir(), "kpip-hosttmp-"));
    const before = { TMPDIR: process.env.TMPDIR, SQLITE_TMPDIR: process.env.SQLITE_TMPDIR };
    process.env.TMPDIR = host;
    delete process.env.SQLITE_TMPDIR;
    const t = await startKernel({}, home);
    const seen = { home: [] as string[], host: [] as string[] };
    const dir = join(home, HOME_FILES.sqliteTemp);
    mkdirSync(dir, { recursive: true }); // the kernel's, made at its start
    // SQLite unlinks a temporary file as it opens it: its creation is what can be seen.
    const watchers = [
      watch(dir, (_e, f) => f?.startsWith("etilqs_") && seen.home.push(f)),
      watch(host, (_e, f) => f?.startsWith("etilqs_") && seen.host.push(f)),
    ];
    try {
      // A sort larger than its memory spills to a temporary file (the process's SQLite, as the kernel's).
      const db = new Database(":memory:");
      try {
        db.pragma("cache_size = -64");
        const rows = db
          .prepare(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 60000) SELECT x FROM c ORDER BY randomblob(100) || x",
          )
          .all();
        assert.equal(rows.length, 60_000);
      } finally {
        db.close();
      }
      await until(() => seen.home.length + seen.host.length > 0, 30_000, "the sort's temporary file created");
      assert.deepEqual(seen.host, [], "none in the host's temp directory");
      assert.ok(seen.home.length > 0);
      assert.equal(process.env.SQLITE_TMPDIR, dir);
      assert.equal(statSync(dir).mode & 0o777, 0o700);
    } finally {
      for (const w of watchers) w.close();
      await t.stop();
      removeHome(home);
      rmSync(host, { recursive: true, force: true });
      for (const [k, v] of Object.entries(before)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });
});
