import assert from "node:assert/strict";
import { existsSync, mkdtempSync, statSync, writeFileSync } from "node:fs";
import { type AddressInfo, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { openAuditReader, verifyAudit } from "../src/index.js";
import { connectAdminOf, removeHome, spawnReady, startKernel } from "./harness.js";

/** A loopback port nothing listens on now. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

const CLI = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

/**
 * Loaded before the kernel (and again in each worker thread): the checkpoint worker's sync of the
 * database file fails as a disk's writeback error does, once it is asked to (the file `arm`).
 */
const PRELOAD = `import fs from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { isMainThread, workerData } from "node:worker_threads";
if (!isMainThread && typeof workerData?.path === "string") {
  const arm = workerData.path + ".fail-sync";
  const real = fs.fdatasyncSync;
  fs.fdatasyncSync = (fd) => {
    if (fs.existsSync(arm)) throw Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO", errno: -5 });
    return real(fd);
  };
  syncBuiltinESMExports();
}
`;

/** The next start on `home` (the disk mended): every acknowledged write reads back as written, and the audit verifies. */
async function everyWriteThere(home: string, writes: [path: string, body: string][]): Promise<void> {
  const k = await startKernel({}, home);
  try {
    const admin = await k.admin();
    for (const [path, body] of writes) assert.equal(Buffer.from((await admin.storage.read(path)).data).toString(), body, path);
  } finally {
    await k.stop();
  }
  const reader = openAuditReader(join(home, "kernel.db"));
  try {
    assert.equal(verifyAudit(reader).ok, true);
  } finally {
    reader.close();
  }
}

describe("the database file cannot be synced (a disk's writeback error)", () => {
  it("the kernel takes no more changes, keeps the WAL when `kpip kernel` stops (exit 4), and the next start has every acknowledged write", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-syncfail-"));
    const preload = join(home, "..", `${home.split("/").at(-1)}-preload.mjs`);
    writeFileSync(preload, PRELOAD);
    try {
      // The home made by a first start of its own.
      await (await startKernel({}, home)).stop();
      // The operator's command, as it runs: its exit after the stop is part of what keeps the WAL.
      const metrics = `127.0.0.1:${await freePort()}`;
      const child = await spawnReady(
        ["--import", preload, CLI, "kernel", "--home", home, "--log-level", "silent", "--metrics-listen", metrics],
        "is running",
      );
      const gauge = async () => /^kpip_storage_failed (\d)$/m.exec(await (await fetch(`http://${metrics}/metrics`)).text())?.[1];
      assert.equal(await gauge(), "0");
      const exited = new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
      const acknowledged: string[] = [];
      let refusal: Error | undefined;
      try {
        const c = await connectAdminOf(home);
        for (let i = 0; i < 20; i++) {
          await c.storage.write(`obj://ws/before${i}`, Buffer.from(`b${i}`));
          acknowledged.push(`before${i}`);
        }
        writeFileSync(join(home, "kernel.db.fail-sync"), "");
        // Writes go on until the worker's next round copies them and its sync fails; from then on none is taken.
        for (let i = 0; i < 100_000 && !refusal; i++) {
          try {
            await c.storage.write(`obj://ws/after${i}`, Buffer.from(`a${i}`));
            acknowledged.push(`after${i}`);
          } catch (e) {
            refusal = e as Error;
          }
        }
        assert.ok(refusal, "a write is refused once the database file cannot be synced");
        assert.equal((refusal as { errorClass?: string }).errorClass, "INTERNAL");
        await assert.rejects(c.storage.write("obj://ws/later", Buffer.from("x")));
        assert.equal(await gauge(), "1", "/metrics shows the failure (system.health cannot: it is audited too)");
        await c.close().catch(() => {});
      } finally {
        child.kill("SIGTERM");
      }
      assert.equal(await exited, 4, "kpip kernel exits 4 (its storage failed) at once after the stop");
      // The stop left the WAL as it was (a clean close would have checkpointed it into the file and dropped it).
      const wal = join(home, "kernel.db-wal");
      assert.ok(existsSync(wal) && statSync(wal).size > 0, "the WAL is kept");

      // The disk mended: every acknowledged write is there, and the audit verifies.
      await everyWriteThere(
        home,
        acknowledged.map((name) => [`obj://ws/${name}`, name.startsWith("before") ? `b${name.slice(6)}` : `a${name.slice(5)}`]),
      );
    } finally {
      removeHome(home);
      removeHome(preload);
    }
  });
});

/** Loaded before the kernel: the periodic fdatasync of an audit segment fails, once it is asked to (the file `audit.fail-sync` in the home). */
const SEGMENT_PRELOAD = `import fs from "node:fs";
import { syncBuiltinESMExports } from "node:module";
const real = fs.fdatasync;
fs.fdatasync = (fd, cb) => {
  let path = "";
  try {
    path = fs.readlinkSync("/proc/self/fd/" + fd);
  } catch {}
  const home = path.replace(/\\/audit\\/[^/]*$/, "");
  if (home !== path && fs.existsSync(home + "/audit.fail-sync")) {
    return process.nextTick(cb, Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO", errno: -5 }));
  }
  return real(fd, cb);
};
syncBuiltinESMExports();
`;

describe("an audit segment cannot be synced (a disk's writeback error)", () => {
  it("the kernel answers nothing more, `kpip kernel` exits 4 after the stop, and the next start has every acknowledged write", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-segfail-"));
    const preload = join(home, "..", `${home.split("/").at(-1)}-preload.mjs`);
    writeFileSync(preload, SEGMENT_PRELOAD);
    try {
      await (await startKernel({}, home)).stop();
      const child = await spawnReady(["--import", preload, CLI, "kernel", "--home", home, "--log-level", "silent"], "is running");
      const exited = new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
      const acknowledged: number[] = [];
      let refusal: Error | undefined;
      try {
        const c = await connectAdminOf(home);
        await c.storage.write("obj://ws/seg0", Buffer.from("v0"));
        acknowledged.push(0);
        writeFileSync(join(home, "audit.fail-sync"), "");
        // Writes go on until the next periodic sync fails; from then on none is answered.
        for (let i = 1; i < 1_000_000 && !refusal; i++) {
          try {
            await c.storage.write(`obj://ws/seg${i}`, Buffer.from(`v${i}`));
            acknowledged.push(i);
          } catch (e) {
            refusal = e as Error;
          }
        }
        assert.equal((refusal as { errorClass?: string } | undefined)?.errorClass, "INTERNAL", String(refusal));
        await assert.rejects(c.storage.write("obj://ws/later", Buffer.from("x")));
        await c.close().catch(() => {});
      } finally {
        child.kill("SIGTERM");
      }
      const code = await exited;
      assert.equal(
        code,
        4,
        `kpip kernel exits 4 (its storage failed; got ${code}): the operator learns that records may be missing from the disk`,
      );

      await everyWriteThere(
        home,
        acknowledged.map((i) => [`obj://ws/seg${i}`, `v${i}`]),
      );
    } finally {
      removeHome(home);
      removeHome(preload);
    }
  });
});
