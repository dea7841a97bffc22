// What a limit's refusal tells, and whom a limit refuses.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { klass, removeHome, sandboxSkip, startKernel } from "./harness.js";

const TASKS = fileURLToPath(new URL("../../test/fixtures/tasks.mjs", import.meta.url));

const refusal = (e: unknown): string => {
  assert.ok(klass("RESOURCE")(e), String(e));
  return (e as Error).message;
};

describe("a limit's refusal quotes only the requester's own usage", () => {
  it("resource.alloc, concurrent and agents refusals do not tell a sub-persona what its parent's tree holds", async () => {
    const t = await startKernel({ computeWorkers: 1 }, undefined, (k) =>
      k.registerTask("hang", { module: TASKS, export: "hang" }),
    );
    try {
      const rights = [
        { ops: ["resource.alloc"], targets: ["persona://parent/**", "persona://parent"] },
        { ops: ["compute.submit"], targets: ["op://task/hang", "op://command/sleep"] },
      ];
      const p = await t.persona("parent", rights, { limits: { gpu: 10_000, concurrent: 2, agents: 1 } });
      const cp = await t.connect(p.identity, [p.token]);
      // The parent's own: 7,777 of gpu, one task holding a concurrent slot.
      await cp.resources.alloc("parent", "gpu", 7_777);
      // A sub-persona under the parent's token (usable by the personas under its subject): its
      // limits count the parent's tree, whose usage is the parent's (and its other members').
      const sub = await t.persona("parent/sub", [{ ops: ["system.health"], targets: ["kernel://"] }]);
      const cs = await t.connect(sub.identity, [p.token]);
      const alloc = refusal(await cs.resources.alloc("parent/sub", "gpu", 5_000).catch((e: Error) => e));
      assert.match(alloc, /^gpu exceeded for parent \(over parent\/sub\): 5000 more would pass its limit 10000/);
      assert.ok(!alloc.includes("7777"), alloc);
      // The parent is told its own usage.
      assert.ok(refusal(await cp.resources.alloc("parent", "gpu", 5_000).catch((e: Error) => e)).includes("7777"));

      // concurrent: the parent's two tasks hold both slots of its tree.
      const ops = [await cp.compute.task("hang"), await cp.compute.task("hang")];
      const conc = refusal(await cs.resources.alloc("parent/sub", "gpu", 1).catch((e: Error) => e));
      assert.match(conc, /^concurrent exceeded for parent \(over parent\/sub\): one more request would pass its limit 2/);
      assert.ok(!/in flight/.test(conc), conc);
      // The admin cancels them (the parent at its limit is refused too).
      const admin = await t.admin();
      for (const op of ops) await admin.ops.cancel(op);

      if (!sandboxSkip) {
        // agents: the parent's command holds its tree's one place.
        const cmd = await cp.compute.command("sleep", ["300"]);
        const agents = refusal(await cs.compute.command("sleep", ["300"]).catch((e: Error) => e));
        assert.match(agents, /^agents exceeded for parent \(over parent\/sub\): one more would pass its limit 1/);
        assert.ok(!/running/.test(agents), agents);
        await admin.ops.cancel(cmd);
      }
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
