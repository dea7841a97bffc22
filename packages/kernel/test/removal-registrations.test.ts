// What a removed persona registered outside its own subtree, where its holder keeps the key (red team, wt-red59).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { generateIdentity } from "@kpip/protocol";
import { klass, removeHome, sandboxSkip, startKernel, until } from "./harness.js";

const TREE_AGENT = fileURLToPath(new URL("../../test/fixtures/tree-agent.mjs", import.meta.url));

const outcome = (p: Promise<unknown>) =>
  p.then(
    () => "ok",
    (e: { errorClass?: string }) => e.errorClass ?? String(e),
  );

describe("a persona's removal reaches the personas it registered", () => {
  it("a removed sub-persona's holder keeps no identity it registered beside itself: the sibling goes with it, and its parent's token no longer works for them", async () => {
    const t = await startKernel();
    try {
      // team's token, which its sub-personas may use (a token is usable by its subject's sub-personas).
      const team = await t.persona("team", [
        { ops: ["persona.register", "persona.remove"], targets: ["persona://team/**"] },
        { ops: ["storage.*"], targets: ["obj://ws/**"] },
      ]);
      const alice = await t.persona("team/alice", [{ ops: ["system.health"], targets: ["kernel://"] }]);
      const owner = await t.connect(team.identity, [team.token]);
      const a = await t.connect(alice.identity, [team.token]);
      // alice, acting under team's token, registers a sibling with a key she holds.
      const spare = generateIdentity("team/spare");
      await a.personas.register("team/spare", spare.publicKey);
      // A persona registered beside alice by someone else (the owner) is not hers.
      const other = generateIdentity("team/other");
      await owner.personas.register("team/other", other.publicKey);

      // A session her holder opened as the sibling beforehand.
      const early = await t.connect(spare, [team.token], { reconnect: false });
      await early.storage.write("obj://ws/early", "1");

      const removed = await owner.personas.remove("team/alice");
      assert.deepEqual([...removed.alsoRemoved].sort(), ["team/spare"], "what alice registered goes with her");
      await assert.rejects(early.storage.write("obj://ws/early", "2"));
      // Her holder cannot come back as the sibling and go on under team's token.
      assert.notEqual(await outcome(t.connect(spare, [team.token], { reconnect: false })), "ok");
      // The owner's own registration, and the owner, stay.
      const o = await t.connect(other, [team.token]);
      await o.storage.write("obj://ws/x", "1");
      await assert.rejects(owner.personas.remove("team/spare"), klass("SEMANTIC", "not registered"));
      // The removal's record names the sibling among the personas removed.
      const rec = t.k.inspect
        .queryAudit({ op: "persona.remove", limit: 10 })
        .find((r) => r.phase === "outcome" && r.target === "persona://team/alice");
      assert.deepEqual(((JSON.parse(rec?.detail ?? "{}") as { removed?: string[] }).removed ?? []).sort(), [
        "team/alice",
        "team/spare",
      ]);
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("the persona removing is never removed with what the removed one registered: the remover stays, what she registered under it goes", async () => {
    const t = await startKernel();
    try {
      const team = await t.persona("team", [{ ops: ["persona.register", "persona.remove"], targets: ["persona://team/**"] }]);
      const alice = await t.persona("team/alice", [{ ops: ["system.health"], targets: ["kernel://"] }]);
      const a = await t.connect(alice.identity, [team.token]);
      const lead = generateIdentity("team/lead");
      await a.personas.register("team/lead", lead.publicKey);
      await a.personas.register("team/lead/aide", generateIdentity("team/lead/aide").publicKey);
      const l = await t.connect(lead, [team.token]);
      const removed = await l.personas.remove("team/alice");
      // The remover stays (it cannot remove itself); what alice registered under it goes.
      assert.deepEqual(removed.alsoRemoved, ["team/lead/aide"]);
      assert.equal(await outcome(l.personas.register("team/lead/aide", generateIdentity("team/lead/aide").publicKey)), "ok");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("what a removed persona's agent registered goes with it, though the agent ended before the removal", {
    skip: sandboxSkip,
  }, async () => {
    // The agent's own key is gone from the registry with its end: the removal followed the
    // registrations of the personas still registered under the removed one, so what the agent
    // registered beside its spawner (a key the spawner's holder chose) stayed, and that holder
    // attested as it after the removal, under any token of the tree's top.
    const t = await startKernel();
    try {
      const register = { ops: ["persona.register"], targets: ["persona://team/**"] };
      const team = await t.persona("team", [
        register,
        { ops: ["persona.remove"], targets: ["persona://team/**"] },
        { ops: ["agent.*"], targets: ["agent://node/**", "kernel://"] },
        { ops: ["storage.*"], targets: ["obj://ws/**"] },
      ]);
      const alice = await t.persona("team/alice", [{ ops: ["system.health"], targets: ["kernel://"] }]);
      const owner = await t.connect(team.identity, [team.token]);
      const a = await t.connect(alice.identity, [team.token]);
      const spare = generateIdentity("team/spare");
      const steps = [
        {
          call: "persona.register",
          target: "persona://team/spare",
          args: { publicKey: Buffer.from(spare.publicKey).toString("base64") },
          binary: ["publicKey"],
        },
      ];
      const spawned = await a.agents.spawn("node", "reg", {
        args: [TREE_AGENT, JSON.stringify(steps)],
        rights: [register],
        lifetimeMs: 120_000,
      });
      const agent = spawned.agent as string;
      const report = await until(
        async () => {
          const out = Buffer.from((await a.agents.logs(agent)).stdout).toString();
          return out.includes("\n") ? (JSON.parse(out) as { results: unknown[]; error?: string }) : undefined;
        },
        60_000,
        "the agent's report",
      );
      assert.deepEqual(report.results, ["ok"], JSON.stringify(report));
      // The agent ends (its key leaves the registry): what it registered goes with its key
      // (agent-registrations.test.ts); whatever of it a store kept, alice's removal follows the
      // registrar's id, not the registered personas.
      assert.equal(await a.agents.kill(agent), true);
      await until(() => t.k.inspect.queryAudit({ op: "agent.exited", limit: 10 }).length > 0, 30_000, "the agent's end");
      const removed = await owner.personas.remove("team/alice");
      assert.deepEqual([...removed.alsoRemoved], [], "gone already, with the agent's key");
      assert.notEqual(await outcome(t.connect(spare, [team.token], { reconnect: false })), "ok");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("a persona that registered an id above itself (no persona held it): its removal takes that id alone, never the personas others registered under it", async () => {
    const t = await startKernel();
    try {
      // As case 259: team/alice registered with no team; y under her with no team/alice/x between.
      const alice = await t.persona("team/alice", [
        { ops: ["persona.register", "persona.remove"], targets: ["persona://team/alice/**"] },
        { ops: ["storage.*"], targets: ["obj://ws/**"] },
      ]);
      const owner = await t.connect(alice.identity, [alice.token]);
      const y = generateIdentity("team/alice/x/y");
      await owner.personas.register("team/alice/x/y", y.publicKey);
      const z = generateIdentity("team/alice/x/z");
      await owner.personas.register("team/alice/x/z", z.publicKey);
      // y, under alice's token, registers the id above itself.
      const cy = await t.connect(y, [alice.token]);
      const x = generateIdentity("team/alice/x");
      await cy.personas.register("team/alice/x", x.publicKey);
      const cz = await t.connect(z, [alice.token], { reconnect: false });
      await cz.storage.write("obj://ws/z", "1");

      const removed = await owner.personas.remove("team/alice/x/y");
      assert.deepEqual(removed.alsoRemoved, ["team/alice/x"], "what y registered goes, alone");
      assert.notEqual(await outcome(t.connect(x, [alice.token], { reconnect: false })), "ok");
      // z, registered by alice under that id, stays: its session, its key.
      await cz.storage.write("obj://ws/z", "2");
      const again = await t.connect(z, [alice.token], { reconnect: false });
      await again.close();
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
