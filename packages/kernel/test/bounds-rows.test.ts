import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { KpipError } from "@kpip/client";
import { generateIdentity } from "@kpip/protocol";
import Database from "better-sqlite3";
import { HOME_FILES } from "../src/index.js";
import type { AgentStore, OpStore } from "../src/store/types.js";
import { klass, removeHome, sandboxSkip, startKernel, until } from "./harness.js";

/** Rows of the kernel's home database, read beside the running kernel (read-only). */
function countRows(home: string, sql: string, ...args: unknown[]): number {
  const db = new Database(join(home, HOME_FILES.database), { readonly: true });
  try {
    return (db.prepare(sql).get(...args) as { n: number }).n;
  } finally {
    db.close();
  }
}

const OUTPUT = 64 * 1024;
/** An agent that writes OUTPUT bytes to stdout and to stderr, then exits. */
const noisy = { args: ["-c", `head -c ${OUTPUT} /dev/zero; head -c ${OUTPUT} /dev/zero >&2`], rights: [], lifetimeMs: 30_000 };

describe("bounded after authentication: agent and op rows", { skip: sandboxSkip }, () => {
  it("agent.list pages its answer (PARTIAL, cursor) and no listing of agents or ops reads their output", async () => {
    const t = await startKernel({}, undefined, (k) =>
      k.registerTask("big", { module: `data:text/javascript,export default () => "x".repeat(${OUTPUT})` }),
    );
    try {
      const p = await t.persona("lister", [
        { ops: ["agent.spawn", "agent.status", "agent.logs"], targets: ["agent://sh/*"] },
        { ops: ["agent.list", "op.list"], targets: ["kernel://"] },
        { ops: ["compute.submit"], targets: ["op://task/big"] },
        { ops: ["op.result"], targets: ["op://**"] },
      ]);
      const c = await t.connect(p.identity, [p.token]);
      for (const i of [0, 1, 2]) await c.agents.spawn("sh", `n${i}`, noisy);
      for (const i of [0, 1, 2])
        await until(async () => (await c.agents.status(`agent://sh/n${i}`)).state !== "running" || undefined);
      // The output is kept, for agent.logs, one agent at a time.
      assert.equal((await c.agents.logs("agent://sh/n1")).stdout.length, OUTPUT);
      // Listings carry metadata only: no row of the store's listing has the output.
      const rows = t.k.inspect.listAgents("lister");
      assert.equal(rows.length, 3);
      for (const r of rows) assert.ok(!("stdout" in r) && !("stderr" in r), `listAgents returned output: ${Object.keys(r)}`);
      // A page at a time, oldest first; the cursor asks for the next.
      const first = await c.call("agent.list", "kernel://", { limit: 2 });
      const p1 = first.payload as { agents: { agent: string }[]; cursor?: string };
      assert.equal(first.status, "PARTIAL");
      assert.deepEqual(
        p1.agents.map((a) => a.agent),
        ["agent://sh/n0", "agent://sh/n1"],
      );
      assert.equal(typeof p1.cursor, "string");
      const second = await c.call("agent.list", "kernel://", { limit: 2, cursor: p1.cursor as string });
      const p2 = second.payload as { agents: { agent: string }[]; cursor?: string };
      assert.equal(second.status, "SUCCESS");
      assert.deepEqual(
        p2.agents.map((a) => a.agent),
        ["agent://sh/n2"],
      );
      assert.equal(p2.cursor, undefined);
      await assert.rejects(c.call("agent.list", "kernel://", { cursor: "n0" }), klass("SEMANTIC", "cursor"));
      // The client follows the pages.
      assert.equal((await c.agents.list({ pageSize: 1 })).length, 3);
      // Ops: the listing has no result; op.result still returns it.
      const op = await c.compute.task("big");
      assert.equal(((await c.ops.wait(op)) as string).length, OUTPUT);
      const ops = t.k.inspect.listOps("lister", 10);
      assert.equal(ops.length, 1);
      assert.ok(!("result" in (ops[0] as object)), "listOps returned the result");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("agent.status and agent.kill read no output from the store: only agent.logs does, once it has held its size", async () => {
    const t = await startKernel();
    try {
      const p = await t.persona("poller", [
        { ops: ["agent.spawn", "agent.status", "agent.kill", "agent.logs"], targets: ["agent://sh/*"] },
      ]);
      const c = await t.connect(p.identity, [p.token]);
      await c.agents.spawn("sh", "noisy", noisy);
      await until(async () => (await c.agents.status("agent://sh/noisy")).state !== "running" || undefined);
      // What the kernel's store hands back of agents' output, from here on.
      const store = (t.k as unknown as { services: { store: AgentStore } }).services.store;
      const getAgent = store.getAgent.bind(store);
      let read = 0;
      store.getAgent = (id: string, output?: boolean) => {
        const a = getAgent(id, output);
        read += (a?.stdout?.byteLength ?? 0) + (a?.stderr?.byteLength ?? 0);
        return a;
      };
      // Each of these read the agent's whole stored output (2 × maxOutputBytes, 2 MiB by default)
      // to answer a few fields: ~23 ms of the kernel's thread a call, 500 pipelined were 12 s.
      for (let i = 0; i < 3; i++) assert.equal((await c.agents.status("agent://sh/noisy")).state, "exited");
      const killed = (await c.call("agent.kill", "agent://sh/noisy", {})).payload as { killed: boolean };
      assert.equal(killed.killed, false);
      assert.equal(read, 0, "no output read for agent.status or agent.kill");
      const logs = await c.agents.logs("agent://sh/noisy");
      assert.equal(logs.stdout.length + logs.stderr.length, 2 * OUTPUT);
      assert.equal(read, 2 * OUTPUT, "agent.logs reads it");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("op.status and op.cancel read no result from the store: only op.result does, once it has held its size", async () => {
    const t = await startKernel();
    try {
      const p = await t.persona("opoller", [
        { ops: ["compute.submit"], targets: ["op://command/sh"] },
        { ops: ["op.status", "op.cancel", "op.result"], targets: ["op://**"] },
      ]);
      const c = await t.connect(p.identity, [p.token]);
      const op = await c.compute.command("sh", noisy.args);
      await c.ops.wait(op);
      const store = (t.k as unknown as { services: { store: OpStore } }).services.store;
      const getOp = store.getOp.bind(store);
      let read = 0;
      store.getOp = (id: string, result?: boolean) => {
        const o = getOp(id, result);
        read += o?.result?.byteLength ?? 0;
        return o;
      };
      // Each read the op's whole stored result (a command's output, up to 2 × maxOutputBytes) to
      // answer its status: ~38 ms of the kernel's thread a call, 500 pipelined were 19 s.
      for (let i = 0; i < 3; i++) assert.equal((await c.ops.status(op)).state, "succeeded");
      assert.equal(await c.ops.cancel(op), false);
      assert.equal(read, 0, "no result read for op.status or op.cancel");
      const r = (await c.ops.result(op)) as { stdout: Uint8Array; stderr: Uint8Array };
      assert.equal(r.stdout.length + r.stderr.length, 2 * OUTPUT);
      assert.ok(read > 2 * OUTPUT, "op.result reads it");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("agent.list pages end at a bound of the agents' stored arguments, however few rows: a page of long command lines is not read whole", async () => {
    const t = await startKernel();
    try {
      const p = await t.persona("arguer", [
        { ops: ["agent.spawn", "agent.status"], targets: ["agent://sh/*"] },
        { ops: ["agent.list"], targets: ["kernel://"] },
      ]);
      const c = await t.connect(p.identity, [p.token]);
      // Near the whole command line each (MAX_ARGV_BYTES), control characters: six bytes each as
      // the store keeps them (JSON), ~1.4 MB a row. A thousand to a page were seconds of the
      // kernel's thread, and an answer past every session's maxBody (RESOURCE: no page at all).
      const long = "\u0001".repeat(120_000);
      const args = ["-c", "exit 0", "sh", long, long];
      for (const i of [0, 1, 2]) await c.call("agent.spawn", `agent://sh/l${i}`, { args, rights: [], lifetimeMs: 30_000 });
      for (const i of [0, 1, 2])
        await until(async () => (await c.agents.status(`agent://sh/l${i}`)).state !== "running" || undefined);
      const first = await c.call("agent.list", "kernel://", { limit: 100 });
      const p1 = first.payload as { agents: { agent: string; args: string[] }[]; cursor?: string };
      assert.equal(first.status, "PARTIAL", "the page ends at the bound, before its limit");
      assert.deepEqual(
        p1.agents.map((a) => a.agent),
        ["agent://sh/l0"],
      );
      assert.deepEqual(p1.agents[0]?.args, args, "an agent's arguments are answered whole");
      // The store reads one row past the bound, and no more.
      assert.equal(t.k.inspect.listAgents("arguer", 0, 101, undefined, 1024 * 1024).length, 2);
      // The client follows the pages to every agent.
      assert.deepEqual(
        (await c.agents.list()).map((a) => a.agent),
        ["agent://sh/l0", "agent://sh/l1", "agent://sh/l2"],
      );
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("agent.list's bound of arguments counts their bytes, not their characters: a page of multi-byte arguments ends at it too", async () => {
    const t = await startKernel();
    try {
      const p = await t.persona("wide", [{ ops: ["agent.list"], targets: ["kernel://"] }]);
      const c = await t.connect(p.identity, [p.token]);
      // Rows as a spawn stores them (no process needed): two arguments of 43,000 three-byte
      // characters each, ~258 KB a row as stored but ~86,000 characters. Counted by characters, a
      // page held 13 such rows (3.3 MB) before it reached the 1 MiB bound; by bytes it ends at the 5th.
      const wide = "\u5b57".repeat(43_000);
      const store = (t.k as unknown as { services: { store: AgentStore } }).services.store;
      const now = Date.now();
      for (let i = 0; i < 6; i++)
        store.putAgent({
          id: `wide/sh/w${i}`,
          persona: `wide/agent.w${i}`,
          spawner: "wide",
          command: "sh",
          args: [wide, wide],
          pid: null,
          state: "exited",
          exitCode: 0,
          signal: null,
          startedAt: now,
          endedAt: now,
          deadline: now,
          stdout: null,
          stderr: null,
          tokenId: `${i}`.padStart(32, "0"),
          cwd: "/nonexistent",
          procId: null,
          spawnerSpawn: null,
        });
      const first = await c.call("agent.list", "kernel://", { limit: 100 });
      const agents = (first.payload as { agents: { agent: string }[] }).agents;
      assert.equal(first.status, "PARTIAL", "the page ends at the bound of the arguments' bytes");
      assert.equal(agents.length, 5, "the row that brings them to 1 MiB ends it");
      assert.equal((await c.agents.list()).length, 6);
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("ended agents past agentRetentionMs are forgotten with their output; running ones are kept", async () => {
    const t = await startKernel({ agentRetentionMs: 1 });
    try {
      const p = await t.persona("spawner", [
        { ops: ["agent.spawn", "agent.status", "agent.kill"], targets: ["agent://sh/*"] },
        { ops: ["agent.list"], targets: ["kernel://"] },
      ]);
      const c = await t.connect(p.identity, [p.token]);
      await c.agents.spawn("sh", "brief", noisy);
      await c.agents.spawn("sh", "long", { args: ["-c", "exec sleep 300"], rights: [], lifetimeMs: 60_000 });
      // Housekeeping forgets the ended one, row and output, within a few ticks.
      await until(() => (t.k.inspect.getAgent("spawner/sh/brief") === undefined ? true : undefined), 15_000);
      assert.equal(countRows(t.home, "SELECT count(*) AS n FROM agent_output WHERE id = ?", "spawner/sh/brief"), 0);
      assert.equal(t.k.inspect.getAgent("spawner/sh/long")?.state, "running");
      assert.deepEqual(
        (await c.agents.list()).map((a) => a.agent),
        ["agent://sh/long"],
      );
      await c.agents.kill("agent://sh/long");
      await until(() => (t.k.inspect.getAgent("spawner/sh/long") === undefined ? true : undefined), 15_000);
      assert.equal(countRows(t.home, "SELECT count(*) AS n FROM agents"), 0);
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
  it("a spawner keeps at most maxEndedAgentsPerPersona ended agents, the newest; the others' are not touched", async () => {
    const t = await startKernel({ maxEndedAgentsPerPersona: 2 });
    try {
      const rights = [
        { ops: ["agent.spawn", "agent.status"], targets: ["agent://sh/*"] },
        { ops: ["agent.list"], targets: ["kernel://"] },
      ];
      const a = await t.persona("many", rights);
      const b = await t.persona("few", rights);
      const ca = await t.connect(a.identity, [a.token]);
      const cb = await t.connect(b.identity, [b.token]);
      const run = async (c: typeof ca, name: string) => {
        await c.agents.spawn("sh", name, noisy);
        await until(async () => (await c.agents.status(`agent://sh/${name}`)).state !== "running" || undefined);
      };
      await run(cb, "b0");
      for (const i of [0, 1, 2, 3]) await run(ca, `a${i}`);
      assert.deepEqual(
        (await ca.agents.list()).map((x) => x.agent),
        ["agent://sh/a2", "agent://sh/a3"],
      );
      assert.equal(t.k.inspect.getAgent("many/sh/a0"), undefined);
      assert.equal(countRows(t.home, "SELECT count(*) AS n FROM agent_output WHERE id LIKE 'many/%'"), 2);
      assert.deepEqual(
        (await cb.agents.list()).map((x) => x.agent),
        ["agent://sh/b0"],
      );
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});

describe("bounded after authentication: ended agents over a persona's tree", { skip: sandboxSkip }, () => {
  it("sub-personas a persona registers share its maxEndedAgentsPerPersona: their ended agents count against its tree", async () => {
    const t = await startKernel({ maxEndedAgentsPerPersona: 2 });
    try {
      const rights = [
        { ops: ["agent.spawn", "agent.status"], targets: ["agent://sh/*"] },
        { ops: ["agent.list"], targets: ["kernel://"] },
      ];
      // tree registers its sub-personas itself (personas the admin registered side by side under a
      // common prefix would be trees of their own) and mints each a token.
      const tree = await t.persona("tree", [
        ...rights,
        { ops: ["persona.register", "token.mint"], targets: ["persona://tree/**"] },
      ]);
      const tc = await t.connect(tree.identity, [tree.token]);
      const subs: { identity: ReturnType<typeof generateIdentity>; token: Uint8Array }[] = [];
      for (const id of ["tree/s0", "tree/s1", "tree/s2"]) {
        const identity = generateIdentity(id);
        await tc.personas.register(id, identity.publicKey);
        subs.push({ identity, token: (await tc.tokens.mint(id, { rights, ttlMs: 600_000 })).token });
      }
      for (const [i, p] of subs.entries()) {
        const c = await t.connect(p.identity, [p.token]);
        for (const j of [0, 1]) {
          const name = `x${i}${j}`;
          await c.agents.spawn("sh", name, noisy);
          await until(async () => (await c.agents.status(`agent://sh/${name}`)).state !== "running" || undefined);
        }
      }
      // Six ended agents were spawned in tree's subtree, two per sub-persona: the tree keeps two.
      assert.equal(countRows(t.home, "SELECT count(*) AS n FROM agents WHERE spawner LIKE 'tree/%'"), 2);
      assert.equal(countRows(t.home, "SELECT count(*) AS n FROM agent_output WHERE id LIKE 'tree/%'"), 2);
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});

describe("bounded after authentication: the persona registry", () => {
  it("persona.register stops at maxRegisteredPersonas for a persona's whole tree (RESOURCE, audited); removal reads only the subtree", async () => {
    const t = await startKernel({ maxRegisteredPersonas: 3 });
    try {
      const admin = await t.admin();
      const a = await t.persona("alice", [
        { ops: ["persona.register", "persona.remove", "token.mint"], targets: ["persona://alice/**"] },
      ]);
      const alice = await t.connect(a.identity, [a.token]);
      const helper = generateIdentity("alice/p0");
      for (const i of [0, 1, 2]) {
        const key = i === 0 ? helper.publicKey : generateIdentity(`alice/p${i}`).publicKey;
        await alice.call("persona.register", `persona://alice/p${i}`, { publicKey: key });
      }
      const refused = await alice
        .call("persona.register", "persona://alice/p3", { publicKey: generateIdentity("alice/p3").publicKey })
        .catch((e) => e);
      assert.ok(refused instanceof KpipError && refused.errorClass === "RESOURCE", String(refused));
      assert.match(refused.message, /maxRegisteredPersonas/);
      assert.equal(t.k.inspect.getPersona("alice/p3"), undefined);
      const rec = t.k.inspect
        .queryAudit({ op: "persona.register", limit: 100 })
        .find((r) => r.target === "persona://alice/p3" && r.phase === "outcome");
      assert.equal(rec?.status, "FAILURE");
      // A sub-persona alice delegated to registers against the same bound: delegation does not multiply it.
      const m = await alice.tokens.mint("alice/p0", {
        rights: [{ ops: ["persona.register"], targets: ["persona://alice/p0/**"] }],
        ttlMs: 60_000,
      });
      const p0 = await t.connect(helper, [m.token]);
      await assert.rejects(
        p0.call("persona.register", "persona://alice/p0/q", { publicKey: generateIdentity("alice/p0/q").publicKey }),
        klass("RESOURCE"),
      );
      // The admin is exempt.
      await admin.call("persona.register", "persona://alice/byadmin", { publicKey: generateIdentity("x").publicKey });
      // Ids beside alice's subtree in the registry's order ("alice-b" < "alice/…" < "alice0") are not in it.
      for (const id of ["alice-b", "alice0"])
        await admin.call("persona.register", `persona://${id}`, { publicKey: generateIdentity(id).publicKey });
      // A removal makes room again.
      await alice.call("persona.remove", "persona://alice/p2");
      await alice.call("persona.register", "persona://alice/p3", { publicKey: generateIdentity("alice/p3").publicKey });
      const r = await admin.call("persona.remove", "persona://alice");
      assert.deepEqual([...((r.payload as { alsoRemoved: string[] }).alsoRemoved ?? [])].sort(), [
        "alice/byadmin",
        "alice/p0",
        "alice/p1",
        "alice/p3",
      ]);
      assert.ok(t.k.inspect.getPersona("alice-b") && t.k.inspect.getPersona("alice0"));
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});

describe("bounded after authentication: resource allocations", () => {
  it("a tree's owner frees the allocations of a persona under it, and one that is gone has them freed with it (its slots and usage come back); another tree cannot", async () => {
    const t = await startKernel({ maxAllocationsPerPersona: 2 });
    try {
      const rights = (id: string) => [{ ops: ["resource.*"], targets: [`persona://${id}`] }];
      const connect = async (id: string) => {
        const p = await t.persona(id, rights(id));
        return t.connect(p.identity, [p.token]);
      };
      const top = await connect("lock");
      const sub = await connect("lock/s1");
      const held = [await sub.resources.alloc("lock/s1", "r", 2), await sub.resources.alloc("lock/s1", "r", 3)];
      await sub.close();
      // The tree is at its bound with the slots of a persona under it.
      const full = await top.resources.alloc("lock", "r", 1).catch((e) => e);
      assert.ok(full instanceof KpipError && full.errorClass === "RESOURCE", String(full));
      const other = await connect("other");
      const foreign = await other.resources.free("other", held[0]?.allocation as string).catch((e) => e);
      assert.ok(foreign instanceof KpipError && foreign.errorClass === "SEMANTIC", String(foreign));
      await top.resources.free("lock", held[0]?.allocation as string);
      assert.deepEqual((await top.resources.query("persona://lock")).usage, { r: 3 }, "uncharged where it was charged");
      // Removed, the sub-persona's last allocation goes with it (case 455): no id needed.
      const admin = await t.admin();
      await admin.personas.remove("lock/s1");
      assert.deepEqual((await top.resources.query("persona://lock")).usage, {});
      await top.resources.alloc("lock", "r", 1);
      await top.resources.alloc("lock", "r", 1);
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("resource.alloc stops at maxAllocationsPerPersona for a persona's whole tree, limit or none (RESOURCE, audited); a name freed leaves no usage row", async () => {
    const t = await startKernel({ maxAllocationsPerPersona: 3 });
    try {
      const rights = (id: string) => [{ ops: ["resource.*"], targets: [`persona://${id}`] }];
      const connect = async (id: string) => {
        const p = await t.persona(id, rights(id));
        return t.connect(p.identity, [p.token]);
      };
      const top = await connect("hoard");
      const sub = await connect("hoard/s1");
      // No limit names these resources: only the row bound holds. A sub-persona's count against its tree.
      const held = [await top.resources.alloc("hoard", "r0", 1), await sub.resources.alloc("hoard/s1", "r1", 1)];
      held.push(await sub.resources.alloc("hoard/s1", "r2", 1));
      for (const [c, id] of [
        [top, "hoard"],
        [sub, "hoard/s1"],
      ] as const) {
        const refused = await c.resources.alloc(id, "r3", 1).catch((e) => e);
        assert.ok(refused instanceof KpipError && refused.errorClass === "RESOURCE", String(refused));
        assert.match(refused.message, /maxAllocationsPerPersona/);
      }
      const rec = t.k.inspect
        .queryAudit({ op: "resource.alloc", limit: 100 })
        .find((r) => r.persona === "hoard" && r.phase === "outcome" && r.status === "FAILURE");
      assert.ok(rec, "the refusal is on the record");
      assert.equal(countRows(t.home, "SELECT count(*) AS n FROM allocations WHERE persona LIKE 'hoard%'"), 3);
      // Another tree is not touched; a free makes room.
      const other = await connect("other");
      await other.resources.alloc("other", "r0", 1);
      await top.resources.free("hoard", (held[0] as { allocation: string }).allocation);
      // Allocating and freeing names without end leaves no rows behind (the usage of a name in use stays).
      for (let i = 0; i < 20; i++) {
        const a = await top.resources.alloc("hoard", `n${i}`, 5);
        await top.resources.free("hoard", a.allocation);
      }
      assert.equal(countRows(t.home, "SELECT count(*) AS n FROM usage WHERE resource LIKE 'n%'"), 0);
      assert.deepEqual((await sub.resources.query("persona://hoard/s1")).usage, { r1: 1, r2: 1 });
      assert.equal(countRows(t.home, "SELECT count(*) AS n FROM usage WHERE resource = 'r0'"), 1, "other's r0 only");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("storage usage rows live while something is stored: personas and workspaces that stored and deleted leave none", async () => {
    const t = await startKernel();
    try {
      const rights = [{ ops: ["storage.*"], targets: ["obj://**"] }];
      const rows = () => {
        const db = new Database(join(t.home, HOME_FILES.database), { readonly: true });
        try {
          return (db.prepare("SELECT scope, amount FROM usage ORDER BY scope").all() as { scope: string; amount: number }[]).map(
            (r) => `${r.scope}=${r.amount}`,
          );
        } finally {
          db.close();
        }
      };
      // Personas created cheaply (as agents and sub-personas are), each storing in a workspace of
      // its own and in one shared object (each write displacing the last owner), then deleting its own.
      const CYCLES = 20;
      for (let i = 0; i < CYCLES; i++) {
        const p = await t.persona(`churn/s${i}`, rights);
        const c = await t.connect(p.identity, [p.token]);
        await c.storage.write(`obj://w${i}/x`, "abc");
        await c.storage.write("obj://shared/x", "abcd");
        await c.storage.delete(`obj://w${i}/x`);
        await c.close();
      }
      // Only what is stored now is counted: the shared object's owner, its tree's top, its workspace
      // (its 4 bytes, its path's 1 and its row's 512).
      assert.deepEqual(rows(), ["persona:churn=517", `persona:churn/s${CYCLES - 1}=517`, "workspace:shared=517"]);
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});

describe("bounded after authentication: op.list and persona.list are paged", () => {
  it("op.list and persona.list page their answers (PARTIAL, cursor); the client follows the pages; a foreign cursor is SEMANTIC", async () => {
    const t = await startKernel({}, undefined, (k) =>
      k.registerTask("sq", { module: "data:text/javascript,export default (x) => x * x" }),
    );
    try {
      const admin = await t.admin();
      const p = await t.persona("pager", [
        { ops: ["compute.submit"], targets: ["op://task/sq"] },
        { ops: ["op.result"], targets: ["op://**"] },
        { ops: ["op.list"], targets: ["kernel://"] },
        { ops: ["persona.list"], targets: ["persona://pager/**"] },
      ]);
      const c = await t.connect(p.identity, [p.token]);
      const ops: string[] = [];
      for (const x of [1, 2, 3, 4, 5]) {
        const d = await c.compute.task("sq", x);
        await c.ops.wait(d);
        ops.push(d.op);
      }
      const newest = [...ops].reverse();
      // op.list: newest first, a page at a time.
      const first = await c.call("op.list", "kernel://", { limit: 2 });
      const p1 = first.payload as { ops: { op: string }[]; cursor?: string };
      assert.equal(first.status, "PARTIAL");
      assert.deepEqual(
        p1.ops.map((o) => o.op),
        newest.slice(0, 2),
      );
      const second = await c.call("op.list", "kernel://", { limit: 3, cursor: p1.cursor as string });
      assert.equal(second.status, "SUCCESS");
      assert.deepEqual(
        (second.payload as { ops: { op: string }[] }).ops.map((o) => o.op),
        newest.slice(2),
      );
      assert.deepEqual(
        (await c.ops.list({ pageSize: 2 })).map((o) => o.op),
        newest,
      );
      await assert.rejects(c.call("op.list", "kernel://", { cursor: "not-a-cursor" }), klass("SEMANTIC"));
      // persona.list: the subtree in id order, a page at a time.
      const ids = ["pager/a", "pager/b", "pager/b/x", "pager/c", "pager/d"];
      for (const id of ids) await admin.personas.register(id, generateIdentity(id).publicKey);
      await admin.personas.register("pagerx", generateIdentity("pagerx").publicKey);
      const q1 = await c.call("persona.list", "persona://pager", { limit: 4 });
      const l1 = q1.payload as { personas: { persona: string }[]; cursor?: string };
      assert.equal(q1.status, "PARTIAL");
      assert.deepEqual(
        l1.personas.map((x) => x.persona),
        ["pager", ...ids.slice(0, 3)],
      );
      const q2 = await c.call("persona.list", "persona://pager", { limit: 4, cursor: l1.cursor as string });
      assert.equal(q2.status, "SUCCESS");
      assert.deepEqual(
        (q2.payload as { personas: { persona: string }[] }).personas.map((x) => x.persona),
        ids.slice(3),
      );
      assert.deepEqual(
        (await c.personas.list("pager", { pageSize: 2 })).map((x) => x.persona),
        ["pager", ...ids],
      );
      // A cursor from outside the listed subtree is not this listing's.
      await assert.rejects(c.call("persona.list", "persona://pager", { cursor: "pagerx" }), klass("SEMANTIC"));
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});

describe("agent and op rows of an older home", () => {
  it("outputs and results move out of the listed rows at start; an agent left running is recovered as lost", async () => {
    const t1 = await startKernel();
    const home = t1.home;
    await t1.stop();
    const out = Buffer.alloc(1000, 0x61);
    const db = new Database(join(home, HOME_FILES.database));
    const now = Date.now();
    const agent = db.prepare(
      "INSERT INTO agents (id, persona, spawner, command, args, pid, state, exit_code, signal, started_at, ended_at, deadline, stdout, stderr, token_id, cwd) " +
        "VALUES (?, ?, 'old', 'sh', '[]', NULL, ?, ?, NULL, ?, ?, ?, ?, ?, ?, '/nonexistent')",
    );
    agent.run("old/sh/done", "old/agent.done", "exited", 0, now, now, now + 60_000, out, out, "a".repeat(32));
    agent.run("old/sh/alive", "old/agent.alive", "running", null, now, null, now + 60_000, null, null, "b".repeat(32));
    db.prepare(
      "INSERT INTO ops (id, persona, session, kind, name, state, result, created_at, finished_at, expires_at) " +
        "VALUES (?, 'old', 's', 'task', 'x', 'succeeded', ?, ?, ?, ?)",
    ).run("c".repeat(32), out, now, now, now + 3_600_000);
    // An older kernel left no note that its outputs moved.
    db.prepare("DELETE FROM meta WHERE key IN ('agent_output_moved', 'op_results_moved')").run();
    db.close();
    const t = await startKernel({}, home);
    try {
      assert.deepEqual(Buffer.from(t.k.inspect.getAgent("old/sh/done")?.stdout ?? []), out);
      assert.deepEqual(Buffer.from(t.k.inspect.getAgent("old/sh/done")?.stderr ?? []), out);
      assert.equal(t.k.inspect.getAgent("old/sh/alive")?.state, "lost");
      assert.deepEqual(Buffer.from(t.k.inspect.getOp("c".repeat(32))?.result ?? []), out);
      const legacy =
        "SELECT (SELECT count(*) FROM agents WHERE stdout IS NOT NULL OR stderr IS NOT NULL) + (SELECT count(*) FROM ops WHERE result IS NOT NULL) AS n";
      assert.equal(countRows(home, legacy), 0);
    } finally {
      await t.stop();
      removeHome(home);
    }
  });
});
