import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, lstatSync, mkdtempSync, readFileSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { KernelClient, loadIdentity } from "@kpip/client";
import { encodeIntent } from "@kpip/protocol";
import Database from "better-sqlite3";
import { Kernel, verifyAudit } from "../src/index.js";
import { klass, removeHome, runExample, spawnReady, startKernel, withKernel } from "./harness.js";
import { RawPeer } from "./wire.js";

const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

import { bodies, MiB, pattern, SMALL_FRAMES, sha, tmpFiles } from "./storage-files.js";

describe("the file store across restarts", () => {
  // A kernel that SIGKILLs itself inside an upload's commit: `install` once the verified body is at
  // its address and before the object's row (an unnamed body), `outcome` once the row committed
  // with its answer and before the outcome record (an effect the log does not show yet).
  for (const at of ["install", "outcome"] as const)
    it(`killed inside storage.upload.commit (${at}): the retried commit is answered truly, the record says what happened, nothing is left over`, async () => {
      const home = mkdtempSync(join(tmpdir(), "kpip-"));
      await (await startKernel({}, home)).stop();
      const code = `const { Kernel, SqliteStore } = await import(process.argv[1]);
const { BlobStore } = await import(process.argv[1].replace("index.js", "store/blobs.js"));
if (process.argv[3] === "install") {
  const install = BlobStore.prototype.install;
  BlobStore.prototype.install = async function (...a) {
    await install.apply(this, a);
    process.kill(process.pid, "SIGKILL");
  };
} else {
  const append = SqliteStore.prototype.appendAudit;
  SqliteStore.prototype.appendAudit = function (rows, ...rest) {
    if (rows.some((r) => r.phase === "outcome" && r.op === "storage.upload.commit")) process.kill(process.pid, "SIGKILL");
    return append.call(this, rows, ...rest);
  };
}
await new Kernel({ home: process.argv[2], logLevel: "silent" }).start();
process.stdout.write("ready\\n");
setInterval(() => {}, 1000);`;
      const kernelModule = new URL("../src/index.js", import.meta.url).href;
      const child = await spawnReady(["--input-type=module", "-e", code, kernelModule, home, at], "ready");
      const exited = new Promise((r) => child.once("exit", r));
      const identity = loadIdentity(join(home, "admin.identity"));
      const token = Buffer.from(readFileSync(join(home, "admin.token"), "utf8").trim(), "base64url");
      const data = pattern(200 * 1024, 29); // past the inline size: a body in the file store
      const target = "obj://kill/commit";
      const as = { persona: identity.persona };
      let commit: Uint8Array;
      try {
        const p = await RawPeer.connect(new Kernel({ home, logLevel: "silent" }).socketPath);
        await p.handshake(identity, [token]);
        p.request(1, encodeIntent({ op: "storage.upload.begin", target, args: { size: data.length } }), as);
        const { upload } = (await p.response(1)).payload as { upload: string };
        p.request(2, encodeIntent({ op: "storage.upload.chunk", target, args: { upload, offset: 0, data } }), as);
        assert.equal((await p.response(2)).status, "SUCCESS");
        commit = encodeIntent({ op: "storage.upload.commit", target, args: { upload, sha256: sha(data), size: data.length } });
        p.request(3, commit, as);
        await exited;
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      }
      const t = await startKernel({}, home);
      try {
        // The same client instance, request id and intent bytes.
        const retry = await RawPeer.connect(t.k.socketPath);
        await retry.handshake(identity, [token]);
        retry.request(3, commit, as);
        const r = await retry.response(3);
        const records = t.k.inspect.queryAudit({ op: "storage.upload.commit", limit: 100 });
        const c = await t.admin();
        if (at === "install") {
          // No object: the retry is refused (the upload ended with its kernel), the body swept.
          assert.equal(r.status, "FAILURE");
          assert.match(r.message ?? "", /no upload/);
          await assert.rejects(c.storage.stat(target), klass("SEMANTIC"));
          assert.deepEqual(bodies(home), [], "the installed body no row names was swept at start");
          assert.deepEqual(
            records.map((x) => `${x.phase}:${x.status}`),
            ["intent:null", "intent:null", "outcome:FAILURE"],
            "the killed commit has no outcome (it made nothing); the retry's refusal is on the record",
          );
        } else {
          // The object: once, the outcome written by the start, the retry answered from the record.
          assert.equal(r.status, "SUCCESS", r.message);
          assert.equal((r.payload as { generation: number }).generation, 1);
          assert.ok((await c.storage.getLarge(target)).equals(data));
          assert.deepEqual(
            records.map((x) => `${x.phase}:${x.status}`),
            ["intent:null", "outcome:SUCCESS", "replay:SUCCESS"],
          );
          assert.deepEqual(bodies(home), [sha(data).toString("hex")]);
        }
        assert.deepEqual(tmpFiles(home), [], "no partial file is left");
        assert.ok(verifyAudit(t.k.inspect).ok);
        retry.close();
      } finally {
        await t.stop();
        removeHome(home);
      }
    });

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
