import assert from "node:assert/strict";
import nodeFs, { existsSync, mkdtempSync, readFileSync, statSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { HOME_FILES, SqliteStore } from "../src/index.js";
import { createLogger } from "../src/log.js";
import { WalCheckpointer } from "../src/store/checkpointer.js";
import { kernelForSuite, removeHome, type TestKernel, until } from "./harness.js";

const autoCheckpoint = (t: TestKernel) => t.k.inspect.walAutoCheckpoint();

describe("WAL checkpoints run off the request path", () => {
  const suite = kernelForSuite();

  it("commits never checkpoint; the background worker moves the WAL into the database while the kernel serves", async () => {
    assert.equal(autoCheckpoint(suite.t), 0, "the kernel's connection does not checkpoint on commit");
    const db = join(suite.t.home, HOME_FILES.database);
    const before = statSync(db).size;
    for (let i = 0; i < 20; i++) {
      await Promise.all(
        Array.from({ length: 50 }, (_, j) =>
          suite.admin.call("storage.write", `obj://ws/k${i}-${j}`, { data: Buffer.alloc(2000, i) }),
        ),
      );
    }
    // Only a checkpoint writes pages into the database file itself.
    await until(() => statSync(db).size > before, 10_000, "the database file to receive checkpointed pages");
    const r = await suite.admin.call("storage.read", "obj://ws/k19-49");
    assert.equal((r.payload as { data: Uint8Array }).data.length, 2000);
  });

  it("keeps the WAL bounded under sustained writes (it is started over, not only copied)", async () => {
    const wal = join(suite.t.home, `${HOME_FILES.database}-wal`);
    const size = () => {
      try {
        return statSync(wal).size;
      } catch {
        return 0;
      }
    };
    // ~240 MB through the WAL (48 KiB objects, and their intents in the audit records),
    // written without pause: without the top-up the WAL grows by all of it.
    let largest = 0;
    const data = Buffer.alloc(48 * 1024, 1);
    for (let round = 0; round < 62; round++) {
      await Promise.all(
        Array.from({ length: 40 }, (_, j) => suite.admin.call("storage.write", `obj://wal/r${round}-${j}`, { data })),
      );
      largest = Math.max(largest, size());
    }
    // Bounded well below what went through it (~240 MB), however busy the machine keeps the
    // checkpoint worker: past 96 MiB the kernel's own commit tops it up, so the WAL holds at
    // most that plus 1 MiB plus one commit (a batch of these writes and their audit records).
    assert.ok(largest < 112 * 1024 * 1024, `largest WAL seen: ${(largest / 1048576).toFixed(1)} MiB`);
  });
});

describe("the checkpoint worker syncs the database pages it copied", () => {
  it("after a round that copied frames, and not after rounds that copied none", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-wal-"));
    const path = join(home, "kernel.db");
    const store = new SqliteStore(path);
    const cp = new WalCheckpointer(store, path, createLogger("silent"), { intervalMs: 20 });
    try {
      for (let i = 0; i < 50; i++) store.setMeta(`k${i}`, "x".repeat(3000));
      await until(() => cp.databaseSyncs > 0, 30_000, "a round that copied the commits and synced the database");
      // Nothing committed since: rounds copy nothing, and sync nothing. Rounds that ran while the
      // commits were still being made may sync after the first did (their reports can queue), so
      // this waits for three rounds in a row without a sync: a worker that synced every round never gives them.
      let syncs = cp.databaseSyncs;
      let from = cp.rounds;
      await until(
        () => {
          if (cp.databaseSyncs !== syncs) {
            syncs = cp.databaseSyncs;
            from = cp.rounds;
          }
          return cp.rounds >= from + 3;
        },
        30_000,
        "three rounds in a row that synced nothing",
      );
      store.setMeta("later", "y".repeat(3000));
      await until(() => cp.databaseSyncs > syncs, 30_000, "a sync after the next commit was copied");
    } finally {
      await cp.stop();
      store.close();
      removeHome(home);
    }
  });

  it("keeps the shared lock this process holds on the database file (any close of the file would drop it)", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-wal-"));
    const path = join(home, "kernel.db");
    const store = new SqliteStore(path);
    const cp = new WalCheckpointer(store, path, createLogger("silent"), { intervalMs: 20 });
    // This process's POSIX locks on the database file, as the OS lists them.
    const ino = statSync(path).ino;
    const held = () =>
      readFileSync("/proc/locks", "utf8")
        .split("\n")
        .filter((l) => l.includes(` ${process.pid} `) && l.includes(`:${ino} `)).length;
    try {
      assert.ok(held() > 0, "the store's connection holds a lock on the database file");
      for (let round = 0; round < 3; round++) {
        for (let i = 0; i < 20; i++) store.setMeta(`k${i}`, `${round}${"x".repeat(3000)}`);
        const syncs = cp.databaseSyncs;
        await until(() => cp.databaseSyncs > syncs, 30_000, "a round that synced the database");
      }
      store.setMeta("after", "1");
      assert.ok(held() > 0, "the lock survived the worker's syncs");
    } finally {
      await cp.stop();
      store.close();
      removeHome(home);
    }
  });
});

describe("the WAL checkpointer's fallback", () => {
  it("checkpoints on commit again if the worker dies, and the store keeps committing", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-wal-"));
    const path = join(home, "kernel.db");
    const store = new SqliteStore(path);
    try {
      const dying = new URL("data:text/javascript,process.exit(3)");
      const cp = new WalCheckpointer(store, path, createLogger("silent"), { workerModule: dying });
      await until(() => !cp.background, 10_000, "the fallback");
      assert.equal(store.db.pragma("wal_autocheckpoint", { simple: true }), 1000);
      store.setMeta("after-fallback", "1");
      assert.equal(store.getMeta("after-fallback"), "1");
      await cp.stop();
    } finally {
      store.close();
      removeHome(home);
    }
  });
});

describe("the WAL's sync for the file store fails (a disk's writeback error)", () => {
  it("fails the store: its audit takes no more records, the worker's checkpoints stop, and its close leaves the WAL", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-wal-"));
    const path = join(home, "kernel.db");
    const store = new SqliteStore(path);
    // The default export is node:fs's mutable object; syncBuiltinESMExports carries a change to the named imports.
    const mutable = nodeFs as unknown as { fdatasyncSync: (fd: number) => void };
    const real = mutable.fdatasyncSync;
    let cp: WalCheckpointer | undefined;
    try {
      cp = new WalCheckpointer(store, path, createLogger("silent"), { intervalMs: 20 });
      store.setMeta("before", "1");
      mutable.fdatasyncSync = () => {
        throw Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" });
      };
      syncBuiltinESMExports();
      assert.throws(() => store.syncWal(), /EIO/);
      mutable.fdatasyncSync = real;
      syncBuiltinESMExports();
      // A later sync would pass; the store stays failed.
      assert.match(store.storageFailure?.message ?? "", /EIO/);
      assert.throws(() => store.appendAudit([]), /could not be synced \(EIO/);
      await until(() => cp?.syncFailure !== undefined, 10_000, "the checkpointer stops at its worker's next report");
      assert.equal(cp.background, false);
      assert.equal(store.db.pragma("wal_autocheckpoint", { simple: true }), 0, "no checkpoint on commit either");
      store.close();
      assert.ok(existsSync(`${path}-wal`) && statSync(`${path}-wal`).size > 0, "the WAL is kept");
      assert.equal(store.db.open, true, "the connection is left open: its close would checkpoint and drop the WAL");
    } finally {
      mutable.fdatasyncSync = real;
      syncBuiltinESMExports();
      await cp?.stop();
      removeHome(home);
    }
  });
});

describe("the WAL's hard bound", () => {
  /** A worker that runs but never checkpoints nor reports (as one starved by a busy machine). */
  const silent = new URL(
    `data:text/javascript,${encodeURIComponent('import { parentPort } from "node:worker_threads"; parentPort.on("message", () => process.exit(0));')}`,
  );

  it("holds with a checkpoint worker that never reports: the kernel's own commits top the WAL up past the limit", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-wal-"));
    const path = join(home, "kernel.db");
    const store = new SqliteStore(path);
    try {
      const limit = 2 * 1024 * 1024;
      const cp = new WalCheckpointer(store, path, createLogger("silent"), {
        workerModule: silent,
        walLimitBytes: limit,
        walHardLimitBytes: limit,
      });
      const wal = `${path}-wal`;
      const value = "x".repeat(256 * 1024);
      let largest = 0;
      for (let i = 0; i < 80; i++) {
        store.setMeta(`k${i % 4}`, `${i}${value}`);
        cp.committed(value.length);
        largest = Math.max(largest, statSync(wal).size);
      }
      // 20 MB went through it: without the bound the WAL would hold all of it.
      assert.ok(largest < 2 * limit, `largest WAL seen: ${(largest / 1048576).toFixed(1)} MiB`);
      assert.ok(cp.background, "the worker is still the one that normally checkpoints");
      await cp.stop();
    } finally {
      store.close();
      removeHome(home);
    }
  });

  it("looks at the WAL's size once per statEveryBytes of estimated commits, not after every commit", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-wal-"));
    const path = join(home, "kernel.db");
    const store = new SqliteStore(path);
    try {
      const cp = new WalCheckpointer(store, path, createLogger("silent"), {
        workerModule: silent,
        walHardLimitBytes: 64 * 1024,
        statEveryBytes: 1024 * 1024,
      });
      let topUps = 0;
      const held: number[] = [];
      cp.onTopUp = (seconds) => {
        topUps++;
        held.push(seconds);
      };
      const value = "x".repeat(128 * 1024);
      // Each commit claims 100 KiB: the 11th and the 22nd pass 1 MiB since the last look.
      const seen: number[] = [];
      try {
        for (let i = 1; i <= 22; i++) {
          store.setMeta(`k${i % 4}`, `${i}${value}`);
          const before = topUps;
          cp.committed(100 * 1024);
          if (topUps > before) seen.push(i);
        }
      } finally {
        await cp.stop();
      }
      assert.deepEqual(seen, [11, 22], "a top-up at each look past the limit, and none between");
      // Each reports how long it held the thread (kpip_wal_topup_seconds_total).
      assert.ok(held.length === 2 && held.every((s) => Number.isFinite(s) && s > 0), `durations ${held}`);
    } finally {
      store.close();
      removeHome(home);
    }
  });
});
