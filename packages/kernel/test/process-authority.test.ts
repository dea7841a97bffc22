// Agents and commands under a hostile persona, and what they hold once they end (red team, wt-red18).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { KernelClient } from "@kpip/client";
import { decodeToken, generateIdentity } from "@kpip/protocol";
import { RootKeys } from "../src/index.js";
import { klass, removeHome, sandboxSkip, startKernel, until } from "./harness.js";

const outcome = (p: Promise<unknown>) =>
  p.then(
    () => "ok",
    (e: { errorClass?: string }) => e.errorClass ?? String(e),
  );

const TASKS = fileURLToPath(new URL("../../test/fixtures/tasks.mjs", import.meta.url));
const TREE_AGENT = fileURLToPath(new URL("../../test/fixtures/tree-agent.mjs", import.meta.url));

/** A persona's rights to spawn agents and run ops, and to see them. */
const AGENTS_AND_OPS = [
  { ops: ["agent.*"], targets: ["agent://**", "kernel://"] },
  { ops: ["compute.submit", "op.*"], targets: ["op://**", "kernel://"] },
];

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
      // Its allocation went with it (at its kill: agent-kill-authority), on the record.
      assert.deepEqual(await usage("ann"), {});
      assert.deepEqual(await usage("ann/agent.a1"), {});
      const rec = t.k.inspect
        .queryAudit({ op: "resource.freed", limit: 100 })
        .find((r) => r.target === "persona://ann/agent.a1" && /killed/.test(r.message ?? ""));
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

  it("a later agent of a reused name lists none of an earlier one's tokens; its spawner still does", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const listing = [{ ops: ["token.list"], targets: ["kernel://"] }];
      const eve = await t.persona("eve", [...AGENTS_AND_OPS, ...listing]);
      const c = await t.connect(eve.identity, [eve.token]);
      const run = async () => {
        const a = (await c.agents.spawn("node", "w1", {
          args: [TREE_AGENT, JSON.stringify([{ call: "token.list", target: "kernel://", show: true }])],
          rights: listing,
          lifetimeMs: 120_000,
        })) as { token: string };
        const r = await until(
          async () => {
            const out = Buffer.from((await c.agents.logs("agent://node/w1")).stdout).toString();
            return out.includes("\n") ? (JSON.parse(out) as { results: [string, { tokens: { id: string }[] }][] }) : undefined;
          },
          60_000,
          "the agent's report",
        );
        await c.call("agent.kill", "agent://node/w1");
        await until(async () => (await c.agents.status("agent://node/w1")).state !== "running", 30_000, "the agent ended");
        return { token: a.token, listed: (r.results[0]?.[1].tokens ?? []).map((x) => x.id) };
      };
      const first = await run();
      assert.deepEqual(first.listed, [first.token]);
      const second = await run();
      assert.deepEqual(second.listed, [second.token], "the first spawn's token is not the second's to list");
      const spawner = ((await c.call("token.list", "kernel://", {})).payload as { tokens: { id: string }[] }).tokens.map(
        (x) => x.id,
      );
      assert.ok(spawner.includes(first.token) && spawner.includes(second.token), JSON.stringify(spawner));
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("a later agent of a reused name cannot revoke a token an earlier one minted; its spawner still can", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const tokenOps = [{ ops: ["token.mint", "token.revoke", "token.inspect"], targets: ["persona://eve/**", "token://**"] }];
      const health = [{ ops: ["system.health"], targets: ["kernel://"] }];
      const eve = await t.persona("eve", [...AGENTS_AND_OPS, ...tokenOps, ...health]);
      const c = await t.connect(eve.identity, [eve.token]);
      const run = async (steps: object[]) => {
        await c.agents.spawn("node", "w1", { args: [TREE_AGENT, JSON.stringify(steps)], rights: tokenOps, lifetimeMs: 120_000 });
        const r = await until(
          async () => {
            const out = Buffer.from((await c.agents.logs("agent://node/w1")).stdout).toString();
            return out.includes("\n") ? (JSON.parse(out) as { results: unknown[] }) : undefined;
          },
          60_000,
          "the agent's report",
        );
        await c.call("agent.kill", "agent://node/w1");
        await until(async () => (await c.agents.status("agent://node/w1")).state !== "running", 30_000, "the agent ended");
        return r.results;
      };
      // The first w1, handed its spawner's token, mints a token for a helper of eve's from it.
      const inline = Buffer.from(eve.token).toString("base64");
      const minted = await run([
        { call: "token.mint", target: "persona://eve/helper", args: { rights: health, ttlMs: 600_000 }, inline, show: true },
      ]);
      const helper = (minted[0] as [string, { token: Uint8Array; id: string }])[1];
      assert.equal((minted[0] as [string])[0], "ok", JSON.stringify(minted));
      // Printed as JSON by the agent: a Buffer's {type, data}.
      const helperToken = Uint8Array.from((helper.token as unknown as { data: number[] }).data);
      // A later w1 that learns its id: not its to revoke.
      const later = await run([{ call: "token.revoke", target: `token://${helper.id}` }]);
      assert.deepEqual(later, ["PERMISSION"]);
      const admin = await t.admin();
      const st = await admin.call("token.inspect", `token://${helper.id}`, { token: helperToken });
      assert.equal((st.payload as { status: string }).status, "valid", "the helper's token lives on");
      // Its spawner still owns it.
      assert.equal((await c.call("token.revoke", `token://${helper.id}`)).status, "SUCCESS");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("a later agent of a reused name reaches nothing an earlier one left (its ops and their results, its agents); its spawner and the operator still do, and the records tell the spawns apart", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const eve = await t.persona("eve", AGENTS_AND_OPS);
      const c = await t.connect(eve.identity, [eve.token]);
      type Report = { persona?: string; results: unknown[] };
      const report = (uri: string) =>
        until(
          async () => {
            const out = Buffer.from((await c.agents.logs(uri)).stdout).toString();
            return out.includes("\n") ? (JSON.parse(out) as Report) : undefined;
          },
          60_000,
          `${uri}'s report`,
        );
      const spawn = async (steps: object[]) =>
        (await c.agents.spawn("node", "w1", {
          args: [TREE_AGENT, JSON.stringify(steps)],
          rights: AGENTS_AND_OPS,
          lifetimeMs: 120_000,
        })) as {
          token: string;
        };
      // The first w1 runs a command (its result: what the command printed) and starts an agent of its own.
      const first = await spawn([
        { call: "compute.submit", target: "op://command/sh", args: { args: ["-c", "echo secret"] }, show: true },
        { call: "agent.spawn", target: "agent://sleep/s1", args: { args: ["300"], rights: [], lifetimeMs: 60_000 } },
      ]);
      const r1 = await report("agent://node/w1");
      const opId = ((r1.results[0] as [string, { id: string }])[1] ?? { id: "" }).id;
      assert.equal(r1.results[1], "ok", JSON.stringify(r1));
      await until(() => t.k.inspect.getOp(opId)?.state === "succeeded", 30_000, "its command done");
      await c.call("agent.kill", "agent://node/w1");
      await until(async () => (await c.agents.status("agent://node/w1")).state !== "running", 30_000, "the first w1 ended");

      // A second w1 under the same name (the same persona id): none of that is its.
      const second = await spawn([
        { call: "op.list", target: "kernel://", show: true },
        { call: "op.result", target: `op://${opId}` },
        { call: "op.status", target: `op://${opId}` },
        { call: "agent.list", target: "kernel://", show: true },
        { call: "agent.status", target: "agent://sleep/s1" },
        { call: "agent.logs", target: "agent://sleep/s1" },
      ]);
      const r2 = await report("agent://node/w1");
      assert.equal(r2.persona, "eve/agent.w1");
      assert.deepEqual(r2.results, [["ok", { ops: [] }], "SEMANTIC", "SEMANTIC", ["ok", { agents: [] }], "SEMANTIC", "SEMANTIC"]);

      // Its spawner keeps its reach over its agent; the operator over what the first w1 did.
      assert.equal((await c.agents.status("agent://node/w1")).state, "running");
      const admin = await t.admin();
      const res = await admin.call("op.result", `op://${opId}`);
      const out = (res.payload as { result: { stdout: Uint8Array } }).result.stdout;
      assert.equal(Buffer.from(out).toString(), "secret\n");
      const listed = (
        (await admin.call("op.list", "kernel://")).payload as { ops: { op: string; persona?: string; spawn?: string }[] }
      ).ops;
      assert.deepEqual(
        listed.filter((o) => o.op === `op://${opId}`).map((o) => [o.persona, o.spawn]),
        [["eve/agent.w1", first.token]],
      );
      const s1 = await admin.call("agent.status", "agent://sleep/s1", { spawner: "eve/agent.w1" });
      assert.equal((s1.payload as { spawnerSpawn?: string }).spawnerSpawn, first.token);
      // Each spawn's session is on the record with the agent and its token: which spawn did what.
      const opened = t.k.inspect
        .queryAudit({ op: "session.open", limit: 100 })
        .filter((r) => r.persona === "eve/agent.w1")
        .map((r) => JSON.parse(r.detail ?? "{}") as { agent?: string; spawn?: string });
      assert.deepEqual(
        opened.map((d) => [d.agent, d.spawn]),
        [
          ["agent://node/w1", first.token],
          ["agent://node/w1", second.token],
        ],
      );
      assert.notEqual(first.token, second.token);
    } finally {
      await t.stop();
    }
  });

  it("what an agent started under a token not its own (its spawner's, handed to it) ends with the agent, as a removed persona's does", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const fay = await t.persona("fay", AGENTS_AND_OPS);
      const c = await t.connect(fay.identity, [fay.token]);
      // fay hands her agent her own token (usable by the personas under her); it runs a command under it.
      const steps = [
        {
          call: "compute.submit",
          target: "op://command/sleep",
          args: { args: ["300"] },
          inline: Buffer.from(fay.token).toString("base64"),
          show: true,
        },
      ];
      await c.agents.spawn("node", "w1", {
        args: [TREE_AGENT, JSON.stringify(steps)],
        rights: AGENTS_AND_OPS,
        lifetimeMs: 120_000,
      });
      const report = await until(
        async () => {
          const out = Buffer.from((await c.agents.logs("agent://node/w1")).stdout).toString();
          return out.includes("\n") ? (JSON.parse(out) as { results: [string, { id: string }][] }) : undefined;
        },
        60_000,
        "the agent's report",
      );
      const opId = report.results[0]?.[1]?.id ?? "";
      await until(() => t.k.inspect.getOp(opId)?.state === "running", 30_000, "its command running");
      assert.equal(t.k.inspect.getOp(opId)?.persona, "fay/agent.w1");
      await c.call("agent.kill", "agent://node/w1");
      // Nothing revoked fay's token; the command ends with the agent all the same.
      const op = await until(
        () => {
          const o = t.k.inspect.getOp(opId);
          return o && o.state !== "running" && o.state !== "queued" ? o : undefined;
        },
        30_000,
        "the agent's command ended with it",
      );
      assert.deepEqual([op.state, op.errorClass], ["failed", "PERMISSION"]);
      // fay's own token still acts.
      assert.equal((await c.agents.list()).length, 1);
    } finally {
      await t.stop();
    }
  });

  it("an agent's own process is held to the sandbox limits its token was minted with, not its spawner's wider ones", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const MiB = 1024 * 1024;
      // The spawner may use 1 GiB and 60 CPU seconds a process; it delegates a tenth to its agent.
      const pia = await t.persona("pia", AGENTS_AND_OPS, { limits: { "sandbox.memory": 1024 * MiB, "sandbox.cpu": 60 } });
      const c = await t.connect(pia.identity, [pia.token]);
      const delegated = { "sandbox.memory": 128 * MiB, "sandbox.cpu": 5 };
      const a = await c.agents.spawn("sh", "lim", {
        args: ["-c", "echo $(ulimit -v) $(ulimit -t)"],
        rights: [],
        lifetimeMs: 60_000,
        limits: delegated,
      });
      const out = await until(
        async () => {
          const s = Buffer.from((await c.agents.logs(a.agent as string)).stdout).toString();
          return s.includes("\n") ? s.trim() : undefined;
        },
        30_000,
        "the agent's limits",
      );
      // Its process is held to what its token says (ulimit -v in KiB), not to the spawner's 1 GiB and 60 s.
      assert.equal(out, `${(128 * MiB) / 1024} 5`);
      // A command of the spawner's own still runs with the spawner's.
      const r = (await c.ops.wait(await c.compute.command("sh", ["-c", "echo $(ulimit -v) $(ulimit -t)"], {}))) as {
        stdout: Uint8Array;
      };
      assert.equal(Buffer.from(r.stdout).toString().trim(), `${(1024 * MiB) / 1024} 60`);
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("a token's sandbox.filesize bounds the size of every file its commands write (the name a token can carry)", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const admin = await t.admin();
      // The name the protocol had documented: no token can carry it (limit names are lower case).
      await assert.rejects(
        admin.tokens.mint("quin", { rights: AGENTS_AND_OPS, ttlMs: 60_000, limits: { "sandbox.fileSize": 8192 } }),
        klass("SEMANTIC"),
      );
      const quin = await t.persona("quin", AGENTS_AND_OPS, { limits: { "sandbox.filesize": 8192 } });
      const c = await t.connect(quin.identity, [quin.token]);
      const r = (await c.ops.wait(
        await c.compute.command("sh", ["-c", "head -c 100000 /dev/zero > /scratch/f; wc -c < /scratch/f"], {}),
      )) as { stdout: Uint8Array };
      assert.equal(Buffer.from(r.stdout).toString().trim(), "8192");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
