// The kernel-wide process bounds (maxAgents, maxProcesses) are shared by every persona tree: a
// few trees must not fill them for everyone else, and the admin — who must always be able to act
// in an incident — keeps the last adminReserve of them, as it does of maxSessions.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import type { Right } from "@kpip/protocol";
import { klass, sandboxSkip, type TestKernel, until, withKernel } from "./harness.js";

const spawnSleep: Right = { ops: ["agent.spawn", "agent.kill"], targets: ["agent://sleep/*"] };
const sleeps: Right = { ops: ["compute.submit", "op.cancel"], targets: ["op://command/sleep", "op://**"] };

async function client(t: TestKernel, id: string): Promise<KernelClient> {
  const p = await t.persona(id, [spawnSleep, sleeps]);
  return t.connect(p.identity, [p.token]);
}

const agent = (c: KernelClient, name: string) =>
  c.agents.spawn("sleep", name, { args: ["300"], rights: [], lifetimeMs: 120_000 });
const command = (c: KernelClient) => c.compute.command("sleep", ["300"]);

describe("kernel-wide process bounds: a tree's share, the admin's reserve", { skip: sandboxSkip }, () => {
  it("two trees of sleeping agents take at most their share of maxAgents: a third tree still spawns, and the admin its reserve", async () => {
    const bounds = { maxAgents: 10, maxAgentsPerPersona: 3, adminReserve: 2, maxProcesses: 64, maxProcessesPerPersona: 8 };
    await withKernel(bounds, async (t) => {
      const alice = await client(t, "alice");
      const bob = await client(t, "bob");
      for (const c of [alice, bob]) for (const n of ["a1", "a2", "a3"]) await agent(c, n);
      // A tree past its share is refused, naming the bound.
      await assert.rejects(agent(alice, "a4"), klass("RESOURCE", "maxAgentsPerPersona 3"));
      // Another tree still spawns, up to the places not kept for the admin (10 - 2).
      const carol = await client(t, "carol");
      await agent(carol, "c1");
      await agent(carol, "c2");
      const dave = await client(t, "dave");
      await assert.rejects(agent(dave, "d1"), klass("RESOURCE", "reserved for the admin"));
      // The admin takes the last two; past them, refused like anyone.
      const admin = await t.admin();
      await agent(admin, "x1");
      await agent(admin, "x2");
      await assert.rejects(agent(admin, "x3"), klass("RESOURCE", "already runs 10 agents"));
    });
  });

  it("a few trees' commands fill maxProcesses only up to the admin's reserve: the admin still starts a command (or an agent)", async () => {
    await withKernel({ maxProcesses: 6, maxProcessesPerPersona: 2, adminReserve: 2 }, async (t) => {
      const alice = await client(t, "alice");
      const bob = await client(t, "bob");
      const held = [await command(alice), await command(alice), await command(bob), await command(bob)];
      const carol = await client(t, "carol");
      await assert.rejects(command(carol), klass("RESOURCE", "reserved for the admin"));
      await assert.rejects(agent(carol, "c1"), klass("RESOURCE", "reserved for the admin"));
      const admin = await t.admin();
      const mine = await command(admin);
      await agent(admin, "x1");
      await assert.rejects(command(admin), klass("RESOURCE", "already runs 6 processes"));
      // The admin's places freed stay kept for it; a tree's place freed is anyone's again.
      await admin.ops.cancel(mine);
      await admin.agents.kill("agent://sleep/x1");
      await until(() => t.k.status().processes === 4, 60_000, "the admin's places freed");
      await assert.rejects(command(carol), klass("RESOURCE", "reserved for the admin"));
      const first = held[0];
      assert.ok(first);
      await admin.ops.cancel(first);
      await until(() => t.k.status().processes === 3, 60_000, "alice's command's place freed");
      await command(carol);
    });
  });
});
