import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { KernelClient, loadIdentity } from "@kpip/client";
import { Kernel } from "@kpip/kernel";
import { CommandWorker, until } from "@kpip/protocol/testing";
import { childKernel, DISPATCH } from "./run.js";

// A SIGKILLed kernel, without the sandbox: its agents and commands run on, unsupervised, until
// the next start kills them. The record must tell that apart from processes that died with it.
const cli = new CommandWorker(DISPATCH);
after(() => cli.close());

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

interface Row {
  seq: number;
  op: string;
  target: string;
  message: string | null;
  detail: Record<string, unknown> | null;
}

describe("processes that outlived a killed kernel", () => {
  it("an agent and a command still running when the next start kills them are on the record as killed by that start, not as lost with the kernel", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-outlived-"));
    const pids: number[] = [];
    try {
      const child = await childKernel(home);
      const exited = new Promise((r) => child.once("exit", r));
      const admin = await KernelClient.connect({
        socket: join(home, "kernel.sock"),
        identity: loadIdentity(join(home, "admin.identity")),
        tokens: [readFileSync(join(home, "admin.token"), "utf8").trim()],
        reconnect: false,
      });
      await admin.agents.spawn("sleep", "w1", {
        args: ["600"],
        rights: [{ ops: ["storage.read"], targets: ["obj://w1/**"] }],
        lifetimeMs: 600_000,
      });
      const op = await admin.compute.command("sleep", ["600"]);
      await until(async () => (await admin.ops.status(op)).state === "running" || undefined, 30_000, "the command runs");
      child.kill("SIGKILL");
      await exited;
      await admin.close().catch(() => {});
      // The responder's view, no kernel running: the agent's pid is on its spawn's record.
      const spawned = await cli.run(["audit", "query", "--op", "agent.spawned", "--json", "--home", home]);
      assert.equal(spawned.code, 0, spawned.err);
      const pid = JSON.parse(JSON.parse(spawned.out.trim()).detail).pid as number;
      pids.push(pid);
      assert.ok(alive(pid), "the agent runs on with no kernel");
      const k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await k.start();
      await until(() => !alive(pid) || undefined, 30_000, "the start kills the agent");
      await k.stop();
      const rows = async (...args: string[]) => {
        const r = await cli.run(["audit", "timeline", "--json", "--home", home, ...args]);
        assert.equal(r.code, 0, r.err);
        return r.out
          .trim()
          .split("\n")
          .map((l) => JSON.parse(l) as Row);
      };
      const [end] = await rows("--op", "agent.exited");
      assert.ok(end);
      const endDetail = end.detail ?? {};
      assert.equal(endDetail.outlived, true, "the agent outlived its kernel");
      assert.equal(endDetail.killedBy, "kernel start");
      assert.match(end.message as string, /outlived the previous kernel.*killed at this start/);
      const interrupted = (await rows("--op", "op.state", "--target", `op://${op.id}`)).find(
        (r) => r.detail?.state === "interrupted",
      );
      assert.ok(interrupted);
      assert.equal(interrupted.detail?.outlived, true, "the command outlived its kernel");
      assert.match(interrupted.message as string, /outlived the previous kernel.*killed at this start/);
    } finally {
      for (const p of pids) if (alive(p)) process.kill(-p, "SIGKILL");
      rmSync(home, { recursive: true, force: true });
    }
  });
});
