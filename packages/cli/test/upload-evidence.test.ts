import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { KernelClient, loadIdentity } from "@kpip/client";
import { Kernel } from "@kpip/kernel";
import { CommandWorker } from "@kpip/protocol/testing";
import { childKernel, DISPATCH } from "./run.js";

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
});
