import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { KpipError } from "@kpip/protocol";
import { sandboxSkip, until, withKernel } from "./harness.js";

interface CommandResult {
  exitCode: number | null;
  signal: string | null;
  stdout: Uint8Array;
  stderr: Uint8Array;
  truncated: boolean;
}

/** op.result of a finished op that failed or was cancelled: the error it throws, with its payload. */
async function failedResult(c: KernelClient, op: string): Promise<{ e: KpipError; state: string; result: CommandResult | null }> {
  await until(async () => ["failed", "cancelled"].includes((await c.ops.status(op)).state) || undefined);
  try {
    await c.ops.result(op);
  } catch (e) {
    assert.ok(e instanceof KpipError, String(e));
    const p = e.payload as { op: string; state: string; result: CommandResult | null };
    assert.equal(p.op, op);
    return { e, state: p.state, result: p.result };
  }
  assert.fail("op.result answered SUCCESS for a failed op");
}

const text = (b: Uint8Array | undefined) => Buffer.from(b ?? new Uint8Array()).toString();

describe("a failed command's outcome", { skip: sandboxSkip }, () => {
  it("op.result on a failed command answers FAILURE with its status, exit code and captured output (bounded as on success)", async () => {
    await withKernel({ maxOutputBytes: 4096 }, async (t) => {
      const c = await t.admin();
      const d = await c.compute.command("sh", ["-c", "echo to-stdout; echo to-stderr >&2; head -c 10000 /dev/zero; exit 3"]);
      const { e, state, result } = await failedResult(c, d.op);
      assert.equal(e.errorClass, "SEMANTIC");
      assert.match(e.message, /sh exited with 3/);
      assert.equal(state, "failed");
      assert.equal(result?.exitCode, 3);
      assert.equal(result?.signal, null);
      assert.equal(text(result?.stderr), "to-stderr\n");
      assert.ok(text(result?.stdout).startsWith("to-stdout\n"));
      assert.equal(result?.stdout.byteLength, 4096, "bounded by maxOutputBytes");
      assert.equal(result?.truncated, true);
      // A program that is not there: what said so is in its stderr.
      const missing = await c.compute.command("no-such-program-here");
      const r2 = await failedResult(c, missing.op);
      assert.equal(r2.result?.exitCode, 127);
      assert.match(text(r2.result?.stderr), /no-such-program-here'?: No such file or directory/);
    });
  });

  it("a command or agent the kernel killed (op.cancel, its deadline, agent.kill) reports signal SIGKILL; one that died of a signal inside the sandbox reports bubblewrap's 128+n as its exit code and no signal", async () => {
    await withKernel({}, async (t) => {
      const c = await t.admin();
      // The kernel kills: it knows the signal, and says so.
      const cancelled = await c.compute.command("sh", ["-c", "echo started; sleep 300"]);
      await until(async () => (await c.ops.status(cancelled)).state === "running" || undefined);
      await c.ops.cancel(cancelled);
      const r1 = await failedResult(c, cancelled.op);
      assert.equal(r1.state, "cancelled");
      assert.equal(r1.result?.signal, "SIGKILL");
      assert.equal(r1.result?.exitCode, null);
      const late = await c.compute.command("sleep", ["300"], { timeoutMs: 200 });
      const r2 = await failedResult(c, late.op);
      assert.equal(r2.e.errorClass, "RESOURCE");
      assert.equal(r2.result?.signal, "SIGKILL");
      await c.agents.spawn("sleep", "k1", { args: ["300"], rights: [], lifetimeMs: 60_000 });
      await c.agents.kill("agent://sleep/k1");
      const killed = await until(async () => {
        const s = await c.agents.status("agent://sleep/k1");
        return s.state === "killed" ? s : undefined;
      });
      assert.equal(killed.signal, "SIGKILL");
      // The program dies of a signal inside: bubblewrap reports 128 + n, as exit(128 + n) would be.
      const self = await c.compute.command("sh", ["-c", "kill -TERM $$"]);
      const r3 = await failedResult(c, self.op);
      assert.deepEqual([r3.result?.exitCode, r3.result?.signal], [143, null]);
      const same = await c.compute.command("sh", ["-c", "exit 143"]);
      const r4 = await failedResult(c, same.op);
      assert.deepEqual([r4.result?.exitCode, r4.result?.signal], [143, null], "indistinguishable");
      await c.agents.spawn("sh", "k2", { args: ["-c", "kill -TERM $$"], rights: [], lifetimeMs: 60_000 });
      const exited = await until(async () => {
        const s = await c.agents.status("agent://sh/k2");
        return s.state === "exited" ? s : undefined;
      });
      assert.deepEqual([exited.exitCode, exited.signal], [143, undefined]);
    });
  });
});
