// agent.kill answers `killed: true` once per agent, and op.cancel `cancelled: true` once per op:
// the record of a second call, while the first (or a revocation, a deadline, a removal) is ending
// it, must not say it killed or cancelled it again.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { removeHome, sandboxSkip, startKernel, until } from "./harness.js";

describe("agent.kill of an agent already being killed", { skip: sandboxSkip }, () => {
  it("two agent.kill of one running agent, sent together: one answers killed true, the other false, and the record says so", async () => {
    const t = await startKernel();
    try {
      const p = await t.persona("eve", [{ ops: ["agent.*"], targets: ["agent://**", "kernel://"] }]);
      const eve = await t.connect(p.identity, [p.token]);
      await eve.agents.spawn("sh", "w1", { args: ["-c", "exec sleep 600"], rights: [], lifetimeMs: 600_000 });
      // Both on the wire before either is answered: the second reaches the agent still ending.
      const answers = await Promise.all([eve.agents.kill("agent://sh/w1"), eve.agents.kill("agent://sh/w1")]);
      assert.deepEqual(answers.sort(), [false, true]);
      await until(async () => (await eve.agents.status("agent://sh/w1")).state !== "running", 30_000, "w1 ended");
      assert.equal(await eve.agents.kill("agent://sh/w1"), false, "an ended agent is not killed");
      const killed = t.k.inspect
        .queryAudit({ op: "agent.kill", limit: 100 })
        .filter((r) => r.phase === "outcome")
        .map((r) => (JSON.parse(r.detail ?? "{}") as { killed?: boolean }).killed);
      assert.equal(killed.length, 3);
      assert.equal(killed.filter((k) => k === true).length, 1, `one record says it killed w1: ${JSON.stringify(killed)}`);
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});

describe("op.cancel of a command already being stopped", { skip: sandboxSkip }, () => {
  it("two op.cancel of one running command, sent together: one answers cancelled true, the other false", async () => {
    const t = await startKernel();
    try {
      const p = await t.persona("eve", [{ ops: ["compute.submit", "op.*"], targets: ["op://command/sleep", "op://**"] }]);
      const eve = await t.connect(p.identity, [p.token]);
      const op = await eve.compute.command("sleep", ["600"]);
      await until(async () => (await eve.ops.status(op)).state === "running", 30_000, "the command running");
      // Both on the wire before either is answered: the second reaches the command still ending.
      const answers = await Promise.all([eve.ops.cancel(op), eve.ops.cancel(op)]);
      assert.deepEqual(answers.sort(), [false, true]);
      await until(async () => (await eve.ops.status(op)).state === "cancelled", 30_000, "the command cancelled");
      assert.equal(await eve.ops.cancel(op), false, "an ended op is not cancelled");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
