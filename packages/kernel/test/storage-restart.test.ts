import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, lstatSync, readFileSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { KernelClient } from "@kpip/client";
import Database from "better-sqlite3";
import { klass, removeHome, runExample, startKernel, withKernel } from "./harness.js";

const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

import { bodies, MiB, pattern, SMALL_FRAMES, sha, tmpFiles } from "./storage-files.js";

describe("the file store across restarts", () => {
  it("after kill -9 mid-upload: no object, no partial file, no unnamed body", async () => {
    const t = await startKernel(SMALL_FRAMES);
    await t.stop();
    const child = spawn(
      process.execPath,
      [MAIN, "kernel", "--home", t.home, "--log-level", "silent", "--max-body-bytes", String(MiB)],
      {
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    try {
      await new Promise<void>((r) => child.stdout.on("data", (d) => String(d).includes("is running") && r()));
      const k = await KernelClient.connect({
        socket: join(t.home, "kernel.sock"),
        identity: join(t.home, "admin.identity"),
        tokens: [readFileSync(join(t.home, "admin.token"), "utf8")],
        reconnect: false,
      });
      const chunk = pattern(500_000, 17);
      const { upload } = (await k.call("storage.upload.begin", "obj://kill/x", { size: 4 * chunk.length })).payload as {
        upload: string;
      };
      await k.call("storage.upload.chunk", "obj://kill/x", { upload, offset: 0, data: chunk });
      // A body written but never named (as a write killed between its file and its row would leave it).
      await k.storage.write("obj://kill/named", pattern(200_000, 19));
      assert.equal(tmpFiles(t.home).length, 1, "the partial file exists while the upload is open");
      child.kill("SIGKILL");
      await new Promise((r) => child.once("exit", r));
      await k.close().catch(() => {});
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    }
    // Plant an unnamed body, as a crash between a body's rename and its row's commit leaves one.
    const stray = pattern(10, 23);
    const hex = sha(stray).toString("hex");
    const { mkdirSync, writeFileSync } = await import("node:fs");
    mkdirSync(join(t.home, "objects", "sha256", hex.slice(0, 2)), { recursive: true, mode: 0o700 });
    writeFileSync(join(t.home, "objects", "sha256", hex.slice(0, 2), hex.slice(2)), stray, { mode: 0o600 });
    await withKernel(
      SMALL_FRAMES,
      async (t) => {
        const c = await t.admin();
        await assert.rejects(c.storage.stat("obj://kill/x"), klass("SEMANTIC"), "the interrupted upload made no object");
        assert.deepEqual(tmpFiles(t.home), [], "the partial file was removed at start");
        assert.deepEqual(bodies(t.home), [sha(pattern(200_000, 19)).toString("hex")], "only the named body is left");
        assert.ok((await c.storage.getLarge("obj://kill/named")).equals(pattern(200_000, 19)));
      },
      t.home,
    );
  });

  it("reads inline bodies of a home made before the file store (no hash column), and migrates it", async () => {
    const t = await startKernel();
    await t.stop();
    const db = new Database(join(t.home, "kernel.db"));
    db.exec("DROP INDEX objects_hash; ALTER TABLE objects DROP COLUMN hash");
    const old = pattern(1_000_000, 29);
    db.prepare(
      "INSERT INTO objects (workspace, path, data, generation, size, updated_at, owner) VALUES ('ws', 'legacy', ?, 3, ?, 0, 'admin')",
    ).run(old, old.length);
    db.close();
    await withKernel(
      {},
      async (t) => {
        const c = await t.admin();
        const r = await c.storage.read("obj://ws/legacy");
        assert.ok(Buffer.from(r.data).equals(old));
        assert.equal(r.generation, 3);
        assert.ok(Buffer.from((await c.storage.readRange("obj://ws/legacy", 10, 5)).data).equals(old.subarray(10, 15)));
        // Its next write moves it to the file store.
        await c.storage.write("obj://ws/legacy", old, { ifGeneration: 3 });
        const hex = sha(old).toString("hex");
        assert.ok(existsSync(join(t.home, "objects", "sha256", hex.slice(0, 2), hex.slice(2))));
      },
      t.home,
    );
  });

  it("refuses to start on a file store holding a link (UnsafeHomeError)", async () => {
    const t = await startKernel();
    await t.stop();
    symlinkSync("/etc/passwd", join(t.home, "objects", "sha256", "ab"));
    try {
      await assert.rejects(startKernel({}, t.home), (e: unknown) => (e as Error).name === "UnsafeHomeError");
      assert.ok(lstatSync(join(t.home, "objects", "sha256", "ab")).isSymbolicLink());
    } finally {
      removeHome(t.home);
    }
  });
});

describe("examples/large-object.ts", () => {
  it("streams a 20 MiB object up and back and finds the same SHA-256", async () => {
    const r = await runExample("large-object", 120_000);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /read 20971520 bytes back in ranges; same SHA-256: true/);
  });
});
