// What a limit's refusal tells, and whom a limit refuses.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { type Grant, generateIdentity } from "@kpip/protocol";
import { OpError } from "../src/primitives/types.js";
import { CONTROL_ALLOWANCE, ResourceLedger } from "../src/resources/ledger.js";
import type { LedgerStore } from "../src/store/types.js";
import { klass, removeHome, sandboxSkip, startKernel, until } from "./harness.js";

const TASKS = fileURLToPath(new URL("../../test/fixtures/tasks.mjs", import.meta.url));

const refusal = (e: unknown): string => {
  assert.ok(klass("RESOURCE")(e), String(e));
  return (e as Error).message;
};

describe("a limit's refusal quotes only the requester's own usage", () => {
  it("a kernel-wide per-tree bound's refusal tells a sub-persona which bound, not how much its parent's tree holds; the parent is told", async () => {
    const bounds = { computeWorkers: 1, maxPendingOpsPerPersona: 2, maxSubscriptionsPerPersona: 2, maxAllocationsPerPersona: 3 };
    const t = await startKernel(bounds, undefined, (k) => k.registerTask("hang", { module: TASKS, export: "hang" }));
    try {
      const rights = [
        { ops: ["resource.alloc"], targets: ["persona://parent/**", "persona://parent"] },
        { ops: ["compute.submit"], targets: ["op://task/hang"] },
        { ops: ["event.subscribe"], targets: ["topic://t/**"] },
        { ops: ["persona.register"], targets: ["persona://parent/**"] },
      ];
      const p = await t.persona("parent", rights);
      const cp = await t.connect(p.identity, [p.token]);
      // The parent fills its tree's bounds with its own work.
      for (const x of ["a", "b", "c"]) await cp.resources.alloc("parent", x, 1);
      await cp.subscribe("topic://t/a");
      await cp.subscribe("topic://t/b");
      const ops = [await cp.compute.task("hang"), await cp.compute.task("hang")];
      // A sub-persona the parent registered, under the parent's token: in the parent's tree.
      const sub = generateIdentity("parent/sub");
      await cp.personas.register("parent/sub", sub.publicKey);
      const cs = await t.connect(sub, [p.token]);
      const subs = [
        [await cs.resources.alloc("parent/sub", "d", 1).catch((e: Error) => e), "allocations (maxAllocationsPerPersona 3)"],
        [await cs.subscribe("topic://t/c").catch((e: Error) => e), "subscriptions (maxSubscriptionsPerPersona 2)"],
        [await cs.compute.task("hang").catch((e: Error) => e), "ops queued or running (maxPendingOpsPerPersona 2)"],
      ] as const;
      for (const [e, what] of subs) {
        const m = refusal(e);
        assert.ok(m.startsWith(`parent (with the personas under it) has no room for more ${what}`), m);
        // No count of the tree's: which would be the parent's allocations, subscriptions and ops.
        assert.ok(!/already|holds|\d+ (allocations|subscriptions|ops)/.test(m), m);
      }
      // The parent, its tree's root, is told what its tree holds.
      const own = [
        [await cp.resources.alloc("parent", "d", 1).catch((e: Error) => e), "parent holds 3 allocations"],
        [await cp.subscribe("topic://t/c").catch((e: Error) => e), "parent already has 2 subscriptions"],
        [await cp.compute.task("hang").catch((e: Error) => e), "parent already has 2 ops queued or running"],
      ] as const;
      for (const [e, held] of own) assert.ok(refusal(e).startsWith(held), String(e));
      const admin = await t.admin();
      for (const op of ops) await admin.ops.cancel(op);
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

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

describe("a persona at its concurrent limit because of its own work", () => {
  it("still sees and stops that work (op.status, op.list, op.cancel, agent.status, agent.list, agent.kill); other requests are refused", async () => {
    const t = await startKernel({ computeWorkers: 1 }, undefined, (k) =>
      k.registerTask("hang", { module: TASKS, export: "hang" }),
    );
    try {
      const rights = [
        { ops: ["compute.submit"], targets: ["op://task/hang"] },
        { ops: ["op.status", "op.cancel"], targets: ["op://**"] },
        { ops: ["op.list", "agent.list", "system.health"], targets: ["kernel://"] },
        { ops: ["agent.spawn", "agent.status", "agent.kill"], targets: ["agent://sleep/**"] },
      ];
      const p = await t.persona("busy", rights, { limits: { concurrent: 2 } });
      const c = await t.connect(p.identity, [p.token]);
      const agent = sandboxSkip
        ? undefined
        : (await c.agents.spawn("sleep", "w1", { args: ["300"], rights: [], lifetimeMs: 120_000 })).agent;
      // Its two tasks (one running, one queued) hold both its concurrent slots until they end.
      const ops = [await c.compute.task("hang"), await c.compute.task("hang")];
      await assert.rejects(c.compute.task("hang"), klass("RESOURCE", "concurrent exceeded for busy"));
      await assert.rejects(c.call("system.health", "kernel://"), klass("RESOURCE", "concurrent exceeded for busy"));
      // Without the allowance each of these was refused the same way: the persona could neither
      // see its tasks nor cancel them (nor its agents) until one ended by itself.
      assert.equal((await c.ops.status(ops[1] as (typeof ops)[number])).state, "queued");
      assert.equal((await c.ops.list()).length, 2);
      if (agent) {
        assert.equal((await c.agents.status(agent)).state, "running");
        assert.equal((await c.agents.list()).length, 1);
        await c.agents.kill(agent);
        await until(async () => (await c.agents.status(agent)).state === "killed", 30_000, "the agent killed");
      }
      assert.equal(await c.ops.cancel(ops[0] as (typeof ops)[number]), true);
      // A slot is free again: any request.
      await c.call("system.health", "kernel://");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("the allowance is the requester's own and small: past it a control request is refused; the rate still bounds it", () => {
    const ledger = new ResourceLedger({} as LedgerStore, { workspaceStorageBytes: 0 });
    const grant = { id: "g", subject: "p", limits: { concurrent: 1 } } as unknown as Grant;
    ledger.admit("p", grant);
    const refused = (f: () => unknown) => assert.throws(f, (e: unknown) => e instanceof OpError && e.errorClass === "RESOURCE");
    refused(() => ledger.admit("p", grant));
    // Control requests past the limit: the persona's allowance, then refused.
    const past = Array.from({ length: CONTROL_ALLOWANCE }, () => ledger.admit("p", grant, "g", true));
    assert.deepEqual(past, Array(CONTROL_ALLOWANCE).fill(true));
    refused(() => ledger.admit("p", grant, "g", true));
    assert.equal(ledger.inFlightOf("p"), 1 + CONTROL_ALLOWANCE);
    // A persona under it (an agent) has an allowance of its own: it cannot use up its spawner's.
    assert.equal(ledger.admit("p/agent.a", grant, "g", true), true);
    ledger.admit("p/agent.a", grant, "g", true);
    refused(() => ledger.admit("p/agent.a", grant, "g", true));
    refused(() => ledger.admit("p", grant, "g", true));
    // One ends: its place in the allowance is free again.
    ledger.leave("p", true);
    assert.equal(ledger.admit("p", grant, "g", true), true);
    // Within the limit a control request is an ordinary one.
    const roomy = { id: "r", subject: "q", limits: { concurrent: 5 } } as unknown as Grant;
    assert.equal(ledger.admit("q", roomy, "r", true), false);
    // The rate bounds control requests as any request.
    const rated = { id: "h", subject: "s", limits: { concurrent: 0, rate: 1 } } as unknown as Grant;
    assert.equal(ledger.admit("s", rated, "h", true), true);
    ledger.leave("s", true);
    refused(() => ledger.admit("s", rated, "h", true));
  });
});
