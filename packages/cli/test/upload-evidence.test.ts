import assert from "node:assert/strict";
import fs, { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { KernelClient, loadIdentity } from "@kpip/client";
import { Kernel } from "@kpip/kernel";
import { CommandWorker, whileStuck } from "@kpip/protocol/testing";
import { childKernel, connectAdmin, DISPATCH } from "./run.js";

// An upload lives in the kernel's memory: SIGKILLed, the kernel leaves only its partial file,
// which the next start removes. The record must end it all the same, or an investigator cannot
// tell an upload dropped by the kill from one still open.
const cli = new CommandWorker(DISPATCH);
after(() => cli.close());

interface Row {
  seq: number;
  op: string;
  persona: string;
  target: string;
  message: string | null;
  detail: Record<string, unknown> | null;
}

async function uploadEnds(home: string): Promise<Row[]> {
  const r = await cli.run(["audit", "timeline", "--json", "--home", home, "--op", "storage.upload.ended"]);
  assert.equal(r.code, 0, r.err);
  return r.out
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Row);
}

describe("uploads in progress when the kernel was killed", () => {
  it("an upload a SIGKILLed kernel held is ended on the record by the next start: its id, whose, on what, the bytes received", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-upload-killed-"));
    try {
      const child = await childKernel(home);
      const exited = new Promise((r) => child.once("exit", r));
      const admin = await KernelClient.connect({
        socket: join(home, "kernel.sock"),
        identity: loadIdentity(join(home, "admin.identity")),
        tokens: [readFileSync(join(home, "admin.token"), "utf8").trim()],
        reconnect: false,
      });
      const begin = async (target: string, size: number) =>
        ((await admin.call("storage.upload.begin", target, { size })).payload as { upload: string }).upload;
      const open = await begin("obj://w1/payload.bin", 200_000);
      await admin.call("storage.upload.chunk", "obj://w1/payload.bin", {
        upload: open,
        offset: 0,
        data: new Uint8Array(70_000).fill(7),
      });
      const empty = await begin("obj://w1/other.bin", 5_000);
      child.kill("SIGKILL");
      await exited;
      await admin.close().catch(() => {});
      const k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await k.start();
      await k.stop();
      const r = await cli.run(["audit", "timeline", "--json", "--home", home, "--op", "storage.upload.ended"]);
      assert.equal(r.code, 0, r.err);
      const ends = r.out
        .trim()
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Row);
      const of = (id: string) => ends.find((e) => e.detail?.upload === id);
      const a = of(open);
      const b = of(empty);
      assert.ok(a && b, `both uploads ended on the record: ${r.out}`);
      assert.equal(a.persona, "admin");
      assert.equal(a.target, "obj://w1/payload.bin");
      assert.equal(a.detail?.reason, "kernel killed");
      assert.equal(a.detail?.received, 70_000);
      assert.equal(a.detail?.size, 200_000);
      assert.match(a.message ?? "", /kernel was killed/);
      assert.equal(b.target, "obj://w1/other.bin");
      assert.equal(b.detail?.received, 0);
      // After the kernel.start of the run that found them.
      const start = await cli.run(["audit", "timeline", "--json", "--home", home, "--op", "kernel.start"]);
      const starts = start.out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as Row);
      assert.ok((starts[1]?.seq ?? Number.POSITIVE_INFINITY) < a.seq, "recorded by the second start");
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it("the start after a kill gives an upload's began on the kernel's clock, as the record's other times", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-upload-clock-"));
    const ahead = 3 * 86_400_000;
    try {
      const child = await childKernel(home, ahead);
      const exited = new Promise((r) => child.once("exit", r));
      const admin = await connectAdmin(home);
      const before = Date.now() + ahead;
      const { upload } = (await admin.call("storage.upload.begin", "obj://w1/late.bin", { size: 1000 })).payload as {
        upload: string;
      };
      const after = Date.now() + ahead;
      child.kill("SIGKILL");
      await exited;
      await admin.close().catch(() => {});
      const k = new Kernel({ home, logLevel: "silent", sandbox: "none", clock: () => Date.now() + ahead });
      await k.start();
      await k.stop();
      const end = (await uploadEnds(home)).find((e) => e.detail?.upload === upload);
      assert.ok(end, "ended on the record");
      const began = end.detail?.began as number;
      assert.ok(
        began >= before && began <= after,
        `began ${began} is on the kernel's clock (${before}..${after}), not the host's`,
      );
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it("an upload whose commit ran at a clean stop and did not complete is ended by the next start as stopped, not killed", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-upload-stopped-"));
    try {
      const k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await k.start();
      await k.stop();
      // What such a commit leaves (the stop ends every other upload, its note first): its partial
      // file and its note. Made by hand: a commit straddling the stop is a matter of timing.
      const id = `u-${"ab".repeat(16)}`;
      fs.writeFileSync(join(home, "objects", "tmp", `upload-${id}`), new Uint8Array(500), { mode: 0o600 });
      fs.writeFileSync(
        join(home, "objects", "uploads", id),
        JSON.stringify({ persona: "admin", target: "obj://w1/committing.bin", size: 500, began: Date.now() }),
        { mode: 0o600 },
      );
      const next = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await next.start();
      await next.stop();
      const end = (await uploadEnds(home)).find((e) => e.detail?.upload === id);
      assert.ok(end, "ended on the record");
      assert.equal(end.detail?.reason, "kernel stopped");
      assert.equal(end.persona, "admin");
      assert.equal(end.detail?.received, 500);
      assert.match(end.message ?? "", /stopped while it was being committed/);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it("an upload already ended whose partial file the failing disk kept is not ended again by the next start as killed", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-upload-ended-"));
    const tmp = join(home, "objects", "tmp");
    try {
      const k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await k.start();
      const admin = await connectAdmin(home);
      // A begin whose note cannot be written (no room) is refused, its file gone: a partial file with
      // no note is one whose upload ended.
      const realOpen = fs.openSync;
      fs.openSync = ((path: fs.PathLike, ...rest: unknown[]) => {
        if (String(path).includes(join("objects", "uploads")))
          throw Object.assign(new Error("ENOSPC: no space left on device, open"), { code: "ENOSPC" });
        return (realOpen as (...a: unknown[]) => number)(path, ...rest);
      }) as typeof fs.openSync;
      syncBuiltinESMExports();
      try {
        await assert.rejects(admin.call("storage.upload.begin", "obj://w1/no-note.bin", { size: 1000 }));
      } finally {
        fs.openSync = realOpen;
        syncBuiltinESMExports();
      }
      assert.deepEqual(
        readdirSync(tmp).filter((n) => n.startsWith("upload-")),
        [],
        "no partial file left",
      );
      const target = "obj://w1/aborted.bin";
      const { upload } = (await admin.call("storage.upload.begin", target, { size: 200_000 })).payload as { upload: string };
      await admin.call("storage.upload.chunk", target, { upload, offset: 0, data: new Uint8Array(70_000).fill(3) });
      const partial = join(tmp, `upload-${upload}`);
      assert.ok(existsSync(partial));
      // The file system refuses to move or remove the partial file (EIO).
      await whileStuck(partial, () => admin.call("storage.upload.abort", target, { upload }));
      assert.ok(existsSync(partial), "the partial file stayed in tmp/");
      await admin.close();
      await k.stop();
      const next = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await next.start();
      await next.stop();
      assert.deepEqual(
        readdirSync(tmp).filter((n) => n.startsWith("upload-")),
        [],
        "the start removed the partial file",
      );
      const ends = (await uploadEnds(home)).filter((e) => e.detail?.upload === upload);
      assert.deepEqual(ends, [], 'the upload was ended by its abort, on the record: no second end, no "kernel killed"');
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
