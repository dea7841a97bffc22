// A limit a persona holds bounds everything done under its authority: the agents it spawns (each
// a persona under it, alice/agent.<name>) and the tokens it mints use its allowance, never a new one.
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { KernelClient } from "@kpip/client";
import { generateIdentity, type Right } from "@kpip/protocol";
import Database from "better-sqlite3";
import { HOME_FILES } from "../src/index.js";
import { removeHome, sandboxSkip, startKernel, type TestKernel, until, withKernel } from "./harness.js";

let admin: WeakMap<TestKernel, KernelClient> | undefined;

const fixture = (f: string) => fileURLToPath(new URL(`../../test/fixtures/${f}`, import.meta.url));

type Step =
  | { write: string; bytes: number }
  | { submit: true }
  | { subscribe: string }
  | { upload: string; size: number }
  | { call: string; target: string; args?: Record<string, unknown> };

/**
 * Spawns agent://node/<instance> as `c`'s persona, running `steps` as itself; answers its persona
 * and each step's outcome. The admin reads the report: the spawner's own requests might be
 * refused by the very limits under test.
 */
async function runAgent(t: TestKernel, c: KernelClient, instance: string, steps: Step[], rights: Right[]) {
  await c.agents.spawn("node", instance, {
    args: [fixture("tree-agent.mjs"), JSON.stringify(steps)],
    rights,
    lifetimeMs: 120_000,
  });
  admin ??= new WeakMap();
  let reader = admin.get(t);
  if (!reader) {
    reader = await t.admin();
    admin.set(t, reader);
  }
  const line = await until(
    async () => {
      const logs = (await (reader as KernelClient).call("agent.logs", `agent://node/${instance}`, { spawner: c.persona }))
        .payload as { stdout: Uint8Array };
      const out = Buffer.from(logs.stdout).toString();
      return out.includes("\n") ? (out.split("\n")[0] as string) : undefined;
    },
    60_000,
    `agent ${instance} reports`,
  );
  const r = JSON.parse(line) as { persona: string; results: string[]; error?: string };
  assert.equal(r.error, undefined, `agent ${instance}: ${r.error}`);
  return r;
}

const spawnNode: Right = { ops: ["agent.spawn", "agent.logs", "agent.status"], targets: ["agent://node/*"] };
const sleeps: Right = { ops: ["compute.submit"], targets: ["op://command/sleep"] };

const outcome = (p: Promise<unknown>) =>
  p.then(
    () => "ok",
    (e: { errorClass?: string }) => e.errorClass ?? String(e),
  );

const ws1: Right = { ops: ["storage.write"], targets: ["obj://ws1/**"] };

/**
 * An object's storage.bytes: its body, its path's bytes and its row's 512 (store/object-cost.ts).
 * The objects here have 2-byte paths: 600 bytes at a0 cost 1114, 400 at h0 914, 1 at a1 515.
 */
const cost = (bytes: number, pathBytes = 2) => bytes + pathBytes + 512;

/**
 * alice (storage.bytes 2028 over her tree — 600 bytes and 400 more at 2-byte paths — 1114 of
 * them taken by 600 bytes written) and her sub-persona alice/helper with a token alice minted for
 * it of `helperBytes` of its own.
 */
async function aliceAndHelper(t: TestKernel, helperBytes: number) {
  const a = await t.persona("alice", [ws1, { ops: ["persona.register", "token.mint"], targets: ["persona://alice/**"] }], {
    limits: { "storage.bytes": cost(600) + cost(400) },
  });
  const c = await t.connect(a.identity, [a.token]);
  await c.storage.write("obj://ws1/a0", "x".repeat(600));
  const helper = generateIdentity("alice/helper");
  await c.personas.register("alice/helper", helper.publicKey);
  const m = await c.tokens.mint("alice/helper", { rights: [ws1], ttlMs: 600_000, limits: { "storage.bytes": helperBytes } });
  return { a, c, helper, m };
}

describe("limits over a persona's tree: agents and minted tokens", () => {
  it("an agent's bytes and allocations count against its spawner's storage.bytes and resource limits", {
    skip: sandboxSkip,
  }, async () => {
    await withKernel({}, async (t) => {
      const a = await t.persona(
        "alice",
        [
          { ops: ["storage.write", "storage.read", "storage.list", "storage.delete"], targets: ["obj://ws1/**"] },
          { ops: ["resource.alloc"], targets: ["persona://alice", "persona://alice/**"] },
          spawnNode,
        ],
        // Room for a0 and w1b below (600 and 400 bytes with their paths and rows).
        { limits: { "storage.bytes": cost(600) + cost(400, 3), gpu: 2 } },
      );
      const c = await t.connect(a.identity, [a.token]);
      await c.storage.write("obj://ws1/a0", "x".repeat(600));
      await c.resources.alloc("alice", "gpu", 1);
      const w1 = await runAgent(
        t,
        c,
        "w1",
        [
          { write: "obj://ws1/w1", bytes: 600 },
          { write: "obj://ws1/w1b", bytes: 400 },
          { call: "resource.alloc", target: "persona://alice/agent.w1", args: { resource: "gpu", amount: 2 } },
          { call: "resource.alloc", target: "persona://alice/agent.w1", args: { resource: "gpu", amount: 1 } },
        ],
        [
          { ops: ["storage.write"], targets: ["obj://ws1/**"] },
          { ops: ["resource.alloc"], targets: ["persona://alice/**"] },
        ],
      );
      // The agent's token carries alice's storage.bytes, but only room for 400 bytes at w1b is left.
      assert.equal(w1.persona, "alice/agent.w1");
      assert.deepEqual(w1.results, ["RESOURCE", "ok", "RESOURCE", "ok"]);
      // Alice's tree is full: neither she nor a fresh agent (a new persona) finds room.
      assert.equal(await outcome(c.storage.write("obj://ws1/a1", "y")), "RESOURCE");
      assert.equal(await outcome(c.resources.alloc("alice", "gpu", 1)), "RESOURCE");
      const w2 = await runAgent(
        t,
        c,
        "w2",
        [{ write: "obj://ws1/w2", bytes: 1 }],
        [{ ops: ["storage.write"], targets: ["obj://ws1/**"] }],
      );
      assert.deepEqual(w2.results, ["RESOURCE"]);
      const items = ((await c.call("storage.list", "obj://ws1")).payload as { items: { size: number }[] }).items;
      const listed = items.reduce((n, o) => n + o.size, 0);
      assert.equal(listed, 1000, "ws1 holds alice's 1000 bytes, no more");
      // Deleting the agent's object gives its bytes back to alice's tree.
      await c.storage.delete("obj://ws1/w1b");
      assert.equal(await outcome(c.storage.write("obj://ws1/a1", "y".repeat(400))), "ok");
    });
  });

  it("tokens minted from a rate-limited token share its bucket: its children and grandchildren get its 20 requests in all", async () => {
    const now = Date.now();
    // The kernel's clock stands still: no bucket refills, the counts are exact.
    await withKernel({ clock: () => now }, async (t) => {
      const health: Right = { ops: ["system.health"], targets: ["kernel://"] };
      const a = await t.persona("alice", [health, { ops: ["token.mint"], targets: ["persona://alice", "persona://alice/**"] }], {
        limits: { rate: 20 },
      });
      const c = await t.connect(a.identity, [a.token], { maxAttempts: 1 });
      const mint: Right = { ops: ["token.mint"], targets: ["persona://alice"] };
      const kids: Uint8Array[] = [];
      for (let i = 0; i < 5; i++)
        kids.push((await c.tokens.mint("alice", { rights: [health, mint], ttlMs: 600_000, limits: { rate: 20 } })).token);
      // A grandchild: still the same bucket.
      const kid = await t.connect(a.identity, [kids[0] as Uint8Array], { maxAttempts: 1 });
      kids.push((await kid.tokens.mint("alice", { rights: [health], ttlMs: 600_000, limits: { rate: 20 } })).token);
      const used = 6;
      const results = await Promise.all(
        Array.from({ length: 100 }, (_, i) =>
          outcome(
            c
              .request({ op: "system.health", target: "kernel://", args: {} }, { caps: [kids[i % kids.length] as Uint8Array] })
              .then((r) => {
                if (r.status !== "SUCCESS") throw Object.assign(new Error(r.status), { errorClass: r.error ?? r.status });
              }),
          ),
        ),
      );
      assert.equal(results.filter((r) => r === "ok").length, 20 - used, "the family's 20, less the mints");
      assert.ok(results.every((r) => r === "ok" || r === "RESOURCE"));
      // The parent's own token finds the bucket as empty as its children left it.
      assert.equal(await outcome(c.call("system.health", "kernel://", {}, { caps: [a.token] })), "RESOURCE");
    });
  });

  it("a token minted for a sub-persona is held to its parent's storage.bytes over the parent's tree, after a restart too", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-tree-"));
    let t: TestKernel | undefined = await startKernel({}, home);
    try {
      const { a, c, helper, m } = await aliceAndHelper(t, cost(500));
      const h = await t.connect(helper, [m.token]);
      // Its own limit holds 500 bytes at h0; alice's tree has room for 400.
      assert.equal(await outcome(h.storage.write("obj://ws1/h0", "x".repeat(500))), "RESOURCE");
      assert.equal(await outcome(h.storage.write("obj://ws1/h0", "x".repeat(400))), "ok");
      assert.equal(await outcome(c.storage.write("obj://ws1/a1", "y")), "RESOURCE");
      // A session of the sub-persona under alice's own token: alice's tree, alice's limit.
      assert.equal(await outcome((await t.connect(helper, [a.token])).storage.write("obj://ws1/h1", "y")), "RESOURCE");
      await t.stop();
      t = await startKernel({}, home);
      const h2 = await t.connect(helper, [m.token]);
      assert.equal(await outcome(h2.storage.write("obj://ws1/h2", "y")), "RESOURCE", "the bound outlives a restart");
    } finally {
      await t?.stop();
      removeHome(home);
    }
  });

  it("an older home's per-persona counters are recounted over the tree once: a sub-persona's bytes stay its parent's", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-tree-"));
    let t: TestKernel | undefined = await startKernel({}, home);
    try {
      const { a, helper, m } = await aliceAndHelper(t, cost(1000));
      await (await t.connect(helper, [m.token])).storage.write("obj://ws1/h0", "x".repeat(400));
      await t.stop();
      t = undefined;
      // As an older kernel left the home: alice's counter holds her own bytes only, no bounds column.
      const db = new Database(join(home, HOME_FILES.database));
      db.prepare(`UPDATE usage SET amount = ${cost(600)} WHERE scope = 'persona:alice' AND resource = 'storage.bytes'`).run();
      db.exec("ALTER TABLE tokens DROP COLUMN bounds");
      db.close();
      t = await startKernel({}, home);
      const c2 = await t.connect(a.identity, [a.token]);
      assert.equal(await outcome(c2.storage.write("obj://ws1/a1", "y")), "RESOURCE", "alice's tree is full");
    } finally {
      await t?.stop();
      removeHome(home);
    }
  });

  it("an agent's commands count against its spawner's share of the process table and its agents limit", {
    skip: sandboxSkip,
  }, async () => {
    await withKernel({ maxProcesses: 12, maxProcessesPerPersona: 3 }, async (t) => {
      const a = await t.persona("alice", [spawnNode, sleeps]);
      const b = await t.persona("bob", [sleeps]);
      const c = await t.connect(a.identity, [a.token]);
      // The agent is one of alice's 3 processes: it may start 2 more, not 3 of its own.
      const s1 = await runAgent(t, c, "s1", [{ submit: true }, { submit: true }, { submit: true }], [sleeps]);
      assert.deepEqual(s1.results, ["ok", "ok", "RESOURCE"]);
      assert.equal(await outcome(c.call("compute.submit", "op://command/sleep", { args: ["300"] })), "RESOURCE");
      assert.equal(await outcome(c.agents.spawn("node", "s2", { args: [], rights: [], lifetimeMs: 1000 })), "RESOURCE");
      const bc = await t.connect(b.identity, [b.token]);
      assert.equal(await outcome(bc.call("compute.submit", "op://command/sleep", { args: ["300"] })), "ok");
      assert.equal(t.k.status().processes, 4);

      // agents=2 on carol's token: her agent and what it starts are 2 processes in all.
      const cr = await t.persona("carol", [spawnNode, sleeps], { limits: { agents: 2 } });
      const cc = await t.connect(cr.identity, [cr.token]);
      const k1 = await runAgent(t, cc, "k1", [{ submit: true }, { submit: true }], [sleeps]);
      assert.deepEqual(k1.results, ["ok", "RESOURCE"]);
    });
  });

  it("an agent's requests in flight count against its spawner's concurrent limit", { skip: sandboxSkip }, async () => {
    await withKernel({}, async (t) => {
      const a = await t.persona("alice", [spawnNode, sleeps, { ops: ["system.health"], targets: ["kernel://"] }], {
        limits: { concurrent: 2 },
      });
      const c = await t.connect(a.identity, [a.token]);
      // A running command holds its request's slot for its whole life.
      await c.call("compute.submit", "op://command/sleep", { args: ["300"] });
      // The agent starts one: alice's 2 slots are taken, its next request is refused, and hers.
      const w = await runAgent(
        t,
        c,
        "w",
        [{ submit: true }, { call: "system.health", target: "kernel://" }],
        [sleeps, { ops: ["system.health"], targets: ["kernel://"] }],
      );
      assert.deepEqual(w.results, ["ok", "RESOURCE"]);
      assert.equal(await outcome(c.call("system.health", "kernel://")), "RESOURCE");
    });
  });

  it("an agent's subscriptions, uploads, pending ops and minted tokens count against its spawner's per-persona bounds", {
    skip: sandboxSkip,
  }, async () => {
    const bounds = { maxSubscriptionsPerPersona: 2, maxUploadsPerPersona: 1, maxPendingOpsPerPersona: 2, maxLiveTokens: 4 };
    await withKernel(bounds, async (t) => {
      const topics: Right = { ops: ["event.subscribe"], targets: ["topic://team/**"] };
      const rights: Right[] = [
        spawnNode,
        sleeps,
        topics,
        { ops: ["storage.write"], targets: ["obj://ws1/**"] },
        { ops: ["token.mint"], targets: ["persona://alice", "persona://alice/**"] },
      ];
      const a = await t.persona("alice", rights);
      const c = await t.connect(a.identity, [a.token]);
      await c.subscribe("topic://team/a");
      await c.subscribe("topic://team/b");
      await c.call("storage.upload.begin", "obj://ws1/big", { size: 10 });
      await c.call("compute.submit", "op://command/sleep", { args: ["300"] });
      for (let i = 0; i < 2; i++) await c.tokens.mint("alice", { rights: [topics], ttlMs: 600_000 });
      // The agent's own token is alice's third: one more mint fits under 4, by alice or her agent.
      const mint = { call: "token.mint", target: "persona://alice/agent.w", args: { rights: [topics], ttlMs: 60_000 } };
      const w = await runAgent(
        t,
        c,
        "w",
        [
          { subscribe: "topic://team/c" },
          { upload: "obj://ws1/other", size: 10 },
          { submit: true },
          { submit: true },
          mint,
          mint,
        ],
        rights.slice(1),
      );
      assert.deepEqual(w.results, ["RESOURCE", "RESOURCE", "ok", "RESOURCE", "ok", "RESOURCE"]);
    });
  });

  it("an agent's refusals are written within its spawner's refusal rate", { skip: sandboxSkip }, async () => {
    const now = Date.now();
    // Rate 1 per second, bursts of 5; the clock stands still, so nothing refills.
    await withKernel({ clock: () => now, auditRefusalPersonaRate: 1, auditRefusalRate: 1000 }, async (t) => {
      const a = await t.persona("alice", [spawnNode, { ops: ["system.health"], targets: ["kernel://"] }]);
      const c = await t.connect(a.identity, [a.token]);
      const refused = Array.from({ length: 5 }, () => ({ call: "storage.read", target: "obj://ws1/x" }));
      const w = await runAgent(t, c, "w", refused, []);
      assert.equal(w.results.filter((r) => r === "ok").length, 0);
      for (let i = 0; i < 5; i++) assert.notEqual(await outcome(c.call("storage.read", "obj://ws1/x")), "ok");
      const single = (persona: string) =>
        t.k.inspect.queryAudit({ persona, limit: 1000 }).filter((r) => r.phase === "refused" && r.op === "storage.read").length;
      // The agent's 5 took alice's burst of 5: hers are counted into the aggregate record, not written one by one.
      assert.equal(single("alice/agent.w"), 5);
      assert.equal(single("alice"), 0);
    });
  });
});
