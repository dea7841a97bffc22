// agent.kill answers `killed: true` once per agent: the record of a second kill, while the first
// (or a revocation, its lifetime, a removal) is ending it, must not say it killed the agent again.
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
