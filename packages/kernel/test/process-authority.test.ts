// Agents and commands under a hostile persona, and what they hold once they end (red team, wt-red18).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { generateIdentity } from "@kpip/protocol";
import { sandboxSkip, startKernel, until } from "./harness.js";

const outcome = (p: Promise<unknown>) =>
  p.then(
    () => "ok",
    (e: { errorClass?: string }) => e.errorClass ?? String(e),
  );

const TREE_AGENT = fileURLToPath(new URL("../../test/fixtures/tree-agent.mjs", import.meta.url));

describe("agents and commands: authority bounded by their creator's", () => {
  it("allocations end with the persona that held them: an agent's at its end, a removed sub-persona's at its removal; its tree gets them back and no later persona of that id inherits them", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const alloc = { ops: ["resource.alloc", "resource.query", "resource.free"], targets: ["persona://ann/**"] };
      const ann = await t.persona(
        "ann",
        [
          alloc,
          { ops: ["agent.spawn", "agent.logs", "agent.status", "agent.kill"], targets: ["agent://node/*"] },
          { ops: ["persona.register", "persona.remove"], targets: ["persona://ann/**"] },
        ],
        { limits: { gpu: 2 } },
      );
      const c = await t.connect(ann.identity, [ann.token]);
      const usage = async (p: string) => ((await c.call("resource.query", `persona://${p}`)).payload as { usage: object }).usage;
      // A hostile agent takes its spawner's whole allowance and keeps the allocation's id to itself.
      const steps = [{ call: "resource.alloc", target: "persona://ann/agent.a1", args: { resource: "gpu", amount: 2 } }];
      await c.agents.spawn("node", "a1", { args: [TREE_AGENT, JSON.stringify(steps)], rights: [alloc], lifetimeMs: 120_000 });
      await until(
        async () => Buffer.from((await c.agents.logs("agent://node/a1")).stdout).includes("\n"),
        60_000,
        "the agent's report",
      );
      assert.deepEqual(await usage("ann"), { gpu: 2 });
      assert.equal(await outcome(c.call("resource.alloc", "persona://ann", { resource: "gpu", amount: 1 })), "RESOURCE");
      await c.call("agent.kill", "agent://node/a1");
      await until(async () => (await c.agents.status("agent://node/a1")).state !== "running", 30_000, "the agent ended");
      // Its allocation went with it, on the record.
      assert.deepEqual(await usage("ann"), {});
      assert.deepEqual(await usage("ann/agent.a1"), {});
      const rec = t.k.inspect
        .queryAudit({ op: "persona.removed", limit: 100 })
        .find((r) => r.target === "persona://ann/agent.a1" && /ended/.test(r.message ?? ""));
      assert.equal((JSON.parse(rec?.detail ?? "{}") as { allocationsFreed?: number }).allocationsFreed, 1);
      await c.call("resource.alloc", "persona://ann", { resource: "gpu", amount: 1 });

      // A sub-persona allocates under ann's token (usable by her sub-personas), then is removed.
      const helper = generateIdentity("ann/helper");
      await c.personas.register("ann/helper", helper.publicKey);
      const h = await t.connect(helper, [ann.token]);
      await h.call("resource.alloc", "persona://ann/helper", { resource: "gpu", amount: 1 });
      await h.close();
      assert.deepEqual(await usage("ann"), { gpu: 2 });
      const removed = await c.call("persona.remove", "persona://ann/helper");
      assert.equal(removed.status, "SUCCESS");
      assert.deepEqual(await usage("ann"), { gpu: 1 });
      const out = t.k.inspect
        .queryAudit({ op: "persona.remove", limit: 10 })
        .find((r) => r.phase === "outcome" && r.target === "persona://ann/helper");
      assert.equal((JSON.parse(out?.detail ?? "{}") as { allocationsFreed?: number }).allocationsFreed, 1);
      // Registered again under the same id, it inherits nothing.
      await c.personas.register("ann/helper", generateIdentity("ann/helper").publicKey);
      assert.deepEqual(await usage("ann/helper"), {});
    } finally {
      await t.stop();
    }
  });
});
