import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { connectAdminOf, removeHome, spawnReady, startKernel } from "./harness.js";
import { pattern, sha } from "./storage-files.js";

// The start after a kill ends on the record each upload the killed kernel held (case 622). Past
// its commit's first steps an upload's partial file is no longer in tmp/ — its body moved to its
// address (or, under the inline size, its bytes read) — while the upload is still in progress:
// its commit not done, or refused and the upload kept for a retry (storage-upload.ts `keep`).
const KILLER = `const { Kernel, SqliteStore } = await import(process.argv[1]);
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

/** Begins, fills and commits an upload on a kernel that SIGKILLs itself at `at`; answers the upload's id. */
async function killedCommit(home: string, at: "install" | "outcome", target: string, data: Buffer): Promise<string> {
  const kernelModule = new URL("../src/index.js", import.meta.url).href;
  const child = await spawnReady(["--input-type=module", "-e", KILLER, kernelModule, home, at], "ready");
  const exited = new Promise((r) => child.once("exit", r));
  const c = await connectAdminOf(home);
  try {
    const { upload } = (await c.call("storage.upload.begin", target, { size: data.length })).payload as { upload: string };
    await c.call("storage.upload.chunk", target, { upload, offset: 0, data });
    void c.call("storage.upload.commit", target, { upload, sha256: sha(data), size: data.length }).catch(() => {});
    await exited;
    return upload;
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await c.close().catch(() => {});
  }
}

function ends(t: Awaited<ReturnType<typeof startKernel>>, upload: string) {
  return t.k.inspect
    .queryAudit({ op: "storage.upload.ended", limit: 100 })
    .map((r) => ({
      ...r,
      d: JSON.parse(r.detail ?? "null") as { upload?: string; reason?: string; received?: number; size?: number },
    }))
    .filter((r) => r.d.upload === upload);
}

describe("an upload in progress whose partial file had already moved when the kernel was killed", () => {
  it("killed while its commit ran, its body installed and no row yet: the next start ends it on the record as killed", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-upload-installed-"));
    await (await startKernel({}, home)).stop();
    const target = "obj://w/installed.bin";
    const data = pattern(200 * 1024, 41); // past the inline size: its body goes to the file store
    const upload = await killedCommit(home, "install", target, data);
    const t = await startKernel({}, home);
    try {
      const e = ends(t, upload);
      assert.equal(e.length, 1, "one storage.upload.ended for the upload the kill dropped");
      const [r] = e;
      assert.equal(r?.d.reason, "kernel killed");
      assert.equal(r?.persona, "admin");
      assert.equal(r?.target, target);
      assert.equal(r?.d.received, data.length, "every byte had arrived");
      assert.equal(r?.d.size, data.length);
    } finally {
      await t.stop();
      removeHome(home);
    }
  });

  it("killed once its commit's row was stored: the committed upload is not ended again by the next start", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-upload-committed-"));
    await (await startKernel({}, home)).stop();
    const target = "obj://w/committed.bin";
    const data = pattern(200 * 1024, 43);
    const upload = await killedCommit(home, "outcome", target, data);
    const t = await startKernel({}, home);
    try {
      assert.deepEqual(ends(t, upload), [], "a committed upload is not on the record as killed");
      const c = await t.admin();
      assert.equal((await c.storage.stat(target)).size, data.length, "the object is there");
    } finally {
      await t.stop();
      removeHome(home);
    }
  });
});
