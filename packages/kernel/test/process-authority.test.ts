// Agents and commands under a hostile persona, and what they hold once they end (red team, wt-red18).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { KernelClient } from "@kpip/client";
import { decodeToken, generateIdentity } from "@kpip/protocol";
import { RootKeys } from "../src/index.js";
import { klass, sandboxSkip, startKernel, until } from "./harness.js";

const outcome = (p: Promise<unknown>) =>
  p.then(
    () => "ok",
    (e: { errorClass?: string }) => e.errorClass ?? String(e),
  );

const TASKS = fileURLToPath(new URL("../../test/fixtures/tasks.mjs", import.meta.url));
const TREE_AGENT = fileURLToPath(new URL("../../test/fixtures/tree-agent.mjs", import.meta.url));

describe("agents and commands: authority bounded by their creator's", () => {
  it("a key retired ends what runs under the tokens it signed: their agents killed, their commands and tasks cancelled CAPABILITY, on the record; others run on", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel({ computeWorkers: 1 }, undefined, (k) =>
      k.registerTask("hang", { module: TASKS, export: "hang" }),
    );
    try {
      const rights = [
        { ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] },
        { ops: ["agent.*"], targets: ["agent://**", "kernel://"] },
        { ops: ["compute.submit", "op.*"], targets: ["op://**"] },
      ];
      const kit = await t.persona("kit", rights);
      const oldKid = decodeToken(kit.token).claims.kid;
      const c = await t.connect(kit.identity, [kit.token]);
      await c.storage.write("obj://ws1/x", "1");
      const submit = async (cl: KernelClient, target: string, args: unknown) =>
        ((await cl.call("compute.submit", target, { args } as never)).payload as { id: string }).id;
      // Under the old key: an agent (its own token signed with the key current then), a command, tasks.
      await c.call("agent.spawn", "agent://sleep/k1", { args: ["300"], rights: [], lifetimeMs: 600_000 });
      const command = await submit(c, "op://command/sleep", ["300"]);
      const running = await submit(c, "op://task/hang", null);
      const queued = await submit(c, "op://task/hang", null);
      RootKeys.rotate(t.home);
      // Another persona, minted once the kernel signs with the new key: untouched by the retirement.
      const admin = await t.admin();
      const kat = await until(
        async () => {
          const p = await t.persona(`kat${Date.now()}`, rights.slice(2));
          return decodeToken(p.token).claims.kid !== oldKid ? p : undefined;
        },
        10_000,
        "a persona under the new key",
      );
      await admin.close();
      const k2 = await t.connect(kat.identity, [kat.token]);
      const other = await submit(k2, "op://command/sleep", ["300"]);
      const op = (id: string) => t.k.inspect.getOp(id);
      await until(() => op(command)?.state === "running" && op(other)?.state === "running", 30_000, "commands running");

      RootKeys.retire(t.home, oldKid);
      await until(async () => (await outcome(c.storage.read("obj://ws1/x"))) === "CAPABILITY", 10_000, "the old key retired");
      const agent = await until(
        () => {
          const a = t.k.inspect.getAgent("kit/sleep/k1");
          return a?.state === "killed" ? a : undefined;
        },
        30_000,
        "kit's agent killed",
      );
      assert.equal(agent.persona, "kit/agent.k1");
      const exited = await until(
        () =>
          t.k.inspect
            .queryAudit({ op: "agent.exited", limit: 100 })
            .find((r) => (JSON.parse(r.detail ?? "{}") as { agent?: string }).agent === "kit/sleep/k1"),
        30_000,
        "its exit recorded",
      );
      assert.equal((JSON.parse(exited.detail ?? "{}") as { killedBy?: string }).killedBy, "key retired");
      for (const id of [command, running, queued]) {
        const s = await until(
          () => {
            const o = op(id);
            return o && o.state !== "queued" && o.state !== "running" ? o : undefined;
          },
          30_000,
          `op ${id} ended`,
        );
        assert.equal(s.state, "cancelled", id);
        assert.equal(s.errorClass, "CAPABILITY", id);
        assert.match(s.message ?? "", /retired/, id);
      }
      assert.equal(op(other)?.state, "running");
      await assert.rejects(c.call("op.status", `op://${command}`), klass("CAPABILITY"));
    } finally {
      await t.stop();
    }
  });

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
