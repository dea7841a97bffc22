import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { KernelClient } from "@kpip/client";
import { parseIdentity } from "@kpip/protocol";
import Database from "better-sqlite3";
import type { AgentManager } from "../src/agents/manager.js";
import { agentPersona } from "../src/agents/namespace.js";
import { SqliteStore } from "../src/store/sqlite.js";
import type { AgentStore, PersonaStore, TokenStore } from "../src/store/types.js";
import { klass, removeHome, sandboxSkip, startKernel, type TestKernel, until } from "./harness.js";

/** What SQLite says when the file system refuses it room. */
const noRoom = () => Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" });

/** The kernel's parts these tests reach into (its store and agent manager). */
type Services = { store: AgentStore & PersonaStore & TokenStore; agents: AgentManager };

/** Makes `store[method]` refuse room while the switch it returns says `full`. */
function refuseRoom<K extends keyof Services["store"]>(store: Services["store"], method: K, full: boolean): { full: boolean } {
  const sw = { full };
  const f = (store[method] as (...a: unknown[]) => unknown).bind(store);
  (store as unknown as Record<K, unknown>)[method] = (...a: unknown[]) => {
    if (sw.full) throw noRoom();
    return f(...a);
  };
  return sw;
}

/** A kernel, and eve (who may spawn agents) connected to it, for `f`; stopped and removed after. */
async function withEve(
  f: (t: TestKernel, c: KernelClient, s: Services) => Promise<void>,
  opts: Parameters<typeof startKernel>[0] = {},
): Promise<void> {
  const t = await startKernel(opts);
  try {
    const p = await t.persona("eve", [{ ops: ["agent.*"], targets: ["agent://**", "kernel://"] }]);
    const c = await t.connect(p.identity, [p.token]);
    await f(t, c, (t.k as unknown as { services: Services }).services);
  } finally {
    await t.stop();
    removeHome(t.home);
  }
}

describe("agents on a full disk (the store's refusal of exactly an agent's end cannot be timed from outside)", () => {
  it("an agent's end kept for room is not read over, nor stored over, a later agent of the same name", {
    skip: sandboxSkip,
  }, async () => {
    await withEve(async (_t, c, s) => {
      // An end's row carries the agent's output: the disk refuses it while a new agent's small row still fits.
      const room = refuseRoom(s.store, "updateAgent", true);
      await c.agents.spawn("sh", "w1", { args: ["-c", "exit 3"], rights: [], lifetimeMs: 60_000 });
      await until(async () => (await c.agents.status("agent://sh/w1")).state === "exited", 30_000, "the first w1's end");
      assert.equal(s.agents.keptCount, 1, "its end is kept for room");

      await c.agents.spawn("sh", "w1", { args: ["-c", "sleep 600"], rights: [], lifetimeMs: 600_000 });
      const later = await c.agents.status("agent://sh/w1");
      assert.equal(later.state, "running", "the later w1 runs: the earlier one's end is not read over it");
      room.full = false;
      s.agents.storeKept();
      assert.equal(s.store.getAgent("eve/sh/w1", false)?.state, "running", "nor stored over its row");
      assert.equal((await c.agents.status("agent://sh/w1")).state, "running");
      await c.call("agent.kill", "agent://sh/w1", {});
    });
  });

  it("an agent whose row the store refuses after its process started is killed, its whole group, and the spawn fails RESOURCE: nothing runs outside the record", {
    skip: sandboxSkip,
  }, async () => {
    await withEve(async (_t, c, s) => {
      refuseRoom(s.store, "putAgent", true);
      const marker = `kpip-orphan-${process.pid}-${Date.now()}`;
      // A process of its own group (sh's child) beside the agent's: the group goes with it.
      await assert.rejects(
        c.agents.spawn("sh", "w1", {
          args: ["-c", `sh -c "sleep 600; : ${marker}" & sleep 600; : ${marker}`],
          rights: [],
          lifetimeMs: 600_000,
        }),
        klass("RESOURCE", "storage is full"),
      );
      const running = () =>
        readdirSync("/proc").filter((p) => {
          try {
            return /^\d+$/.test(p) && readFileSync(`/proc/${p}/cmdline`, "utf8").includes(marker);
          } catch {
            return false;
          }
        });
      // It ran on with no row, no kill path, no process slot: until the host ended it.
      await until(async () => running().length === 0, 30_000, "the unrecorded agent's end");
      await until(async () => s.agents.runningCount === 0, 30_000, "no live agent");
      assert.equal(s.store.getPersona(agentPersona("eve", "w1")), undefined, "its key is removed");
    });
  });

  it("an ended agent's key a full disk kept: a later agent of its name sees none of the earlier one's tokens", {
    skip: sandboxSkip,
  }, async () => {
    await withEve(async (_t, c, s) => {
      // The agent's key stays in the registry (its removal refused room) until the tick stores it:
      // the tick, here, comes only after the later spawn (it may come later than room does).
      const storeKept = s.agents.storeKept.bind(s.agents);
      s.agents.storeKept = () => {};
      const room = refuseRoom(s.store, "removePersona", true);
      const persona = agentPersona("eve", "w1");
      const first = (await c.agents.spawn("sh", "w1", { args: ["-c", "exit 0"], rights: [], lifetimeMs: 60_000 })) as {
        token: string;
      };
      await until(async () => (await c.agents.status("agent://sh/w1")).state === "exited", 30_000, "the first w1's end");
      assert.equal(s.agents.keptCount, 1, "its key is kept for room");
      assert.ok(s.store.getPersona(persona), "its key still in the registry");

      // Still no room to remove it: a later spawn of the name is refused for room, nothing made.
      await assert.rejects(
        c.agents.spawn("sh", "w1", { args: ["-c", "sleep 600"], rights: [], lifetimeMs: 600_000 }),
        klass("RESOURCE", "storage is full"),
      );
      room.full = false;
      const second = (await c.agents.spawn("sh", "w1", { args: ["-c", "sleep 600"], rights: [], lifetimeMs: 600_000 })) as {
        token: string;
      };
      assert.equal(s.store.tokenSeenBy(second.token, persona), true, "the later w1 sees its own token");
      assert.equal(s.store.tokenSeenBy(first.token, persona), false, "not the earlier w1's");
      assert.equal(s.store.tokenSeenBy(first.token, "eve"), true, "its spawner does");
      storeKept();
      assert.equal(s.store.tokenSeenBy(first.token, persona), false);
      await c.call("agent.kill", "agent://sh/w1", {});
    });
  });

  it("an ended agent's revocation a full disk kept is stored at a clean stop, when there is room since the last tick", {
    skip: sandboxSkip,
  }, async () => {
    await withEve(async (t, c, s) => {
      // No tick from here on: room comes back just before the stop.
      (t.k as unknown as { housekeeping?: { stop(): void } }).housekeeping?.stop();
      const room = refuseRoom(s.store, "revokeToken", true);
      const a = (await c.agents.spawn("sh", "w1", { args: ["-c", "exit 0"], rights: [], lifetimeMs: 600_000 })) as {
        token: string;
      };
      await until(async () => (await c.agents.status("agent://sh/w1")).state === "exited", 30_000, "the agent's end");
      assert.ok(!s.store.revokedTokenIds().includes(a.token), "its revocation kept for room (in force in memory)");
      room.full = false;
      await t.stop();
      const store = new SqliteStore(join(t.home, "kernel.db"));
      try {
        assert.ok(store.revokedTokenIds().includes(a.token), "the ended agent's token stays revoked after a restart");
      } finally {
        store.close();
      }
    });
  });

  it("an ended agent's key a full disk kept in the registry is refused at once: no session attests with it, an open one ends", {
    skip: sandboxSkip,
  }, async () => {
    await withEve(async (t, c, s) => {
      const room = refuseRoom(s.store, "removePersona", false);
      // A hostile agent hands its identity out (its output here), then waits to be killed.
      await c.agents.spawn("sh", "w1", { args: ["-c", "cat <&3; exec sleep 600"], rights: [], lifetimeMs: 600_000 });
      const creds = await until(
        async () => {
          const out = Buffer.from((await c.agents.logs("agent://sh/w1")).stdout).toString();
          return out.includes("\n") ? (JSON.parse(out.split("\n")[0] as string) as { identity: string }) : undefined;
        },
        30_000,
        "the agent's identity",
      );
      const asAgent = () =>
        KernelClient.connect({ socket: t.k.socketPath, identity: parseIdentity(creds.identity), tokens: [], reconnect: false });
      const open = await asAgent();
      room.full = true;
      await c.call("agent.kill", "agent://sh/w1", {});
      await until(async () => (await c.agents.status("agent://sh/w1")).state !== "running", 30_000, "the agent's end");
      assert.ok(s.store.getPersona("eve/agent.w1"), "its key still in the registry (no room to remove it)");
      await until(() => open.state === "closed" || undefined, 30_000, "its open session ended");
      const again = await asAgent().then(
        async (x) => {
          await x.close();
          return "attested";
        },
        (e: Error & { errorClass?: string }) => e.errorClass,
      );
      assert.equal(again, "AUTH", "no new session attests with its key");
      room.full = false;
    });
  });

  it("agents that end one after another while the store has no room hold their output within the tree's share: past it an end is kept without it, saying so", {
    skip: sandboxSkip,
  }, async () => {
    // 1 MiB a tree, 4 MiB in all.
    await withEve(
      async (_t, c, s) => {
        const room = refuseRoom(s.store, "updateAgent", true);
        // Each agent's small rows fit (its spawn's), its end, carrying its output, does not.
        for (let i = 0; i < 5; i++) {
          await c.agents.spawn("sh", `w${i}`, { args: ["-c", "head -c 400000 /dev/zero"], rights: [], lifetimeMs: 60_000 });
          await until(async () => (await c.agents.status(`agent://sh/w${i}`)).state === "exited", 30_000, `w${i}'s end`);
        }
        assert.equal(s.agents.keptCount, 5, "every end is kept");
        const outs = [];
        for (let i = 0; i < 5; i++) outs.push(await c.agents.logs(`agent://sh/w${i}`));
        assert.deepEqual(
          outs.map((o) => o.stdout.byteLength),
          [400_000, 400_000, 0, 0, 0],
          "the tree's share holds two ends' output, no more",
        );
        for (const o of outs.slice(2))
          assert.match(
            Buffer.from(o.stderr).toString(),
            /the agent's output \(400000 bytes\) was not kept: the kernel's storage was full/,
          );
        room.full = false;
        s.agents.storeKept();
        assert.equal(s.agents.keptCount, 0);
        assert.equal(s.store.getAgent("eve/sh/w4")?.stdout?.byteLength, 0, "stored as it was kept");
        assert.match(Buffer.from(s.store.getAgent("eve/sh/w4")?.stderr ?? []).toString(), /was not kept/);
      },
      { maxKeptOutputBytes: 4 << 20 },
    );
  });

  it("an ended agent's end is not stored before its revocation a full disk kept: a kernel that stops or dies before there is room leaves it running, and the next start revokes its token", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    let again: TestKernel | undefined;
    try {
      const p = await t.persona("eve", [{ ops: ["agent.*"], targets: ["agent://**", "kernel://"] }]);
      const c = await t.connect(p.identity, [p.token]);
      const s = (t.k as unknown as { services: Services }).services;
      // The revocation's row is refused room; the agent's end (no output) still fits.
      refuseRoom(s.store, "revokeToken", true);
      const a = (await c.agents.spawn("sh", "w1", { args: ["-c", "exit 0"], rights: [], lifetimeMs: 600_000 })) as {
        token: string;
      };
      await until(async () => (await c.agents.status("agent://sh/w1")).state === "exited", 30_000, "the agent's end");
      assert.ok(!s.store.revokedTokenIds().includes(a.token), "its revocation is in force in memory only");
      // What a kill leaves now: the store must not say the agent ended while its token is not revoked there.
      assert.equal(s.store.getAgent("eve/sh/w1", false)?.state, "running", "its end waits for its revocation");
      // Still no room at the stop: neither is stored.
      await t.stop();
      again = await startKernel({}, t.home);
      const s2 = (again.k as unknown as { services: Services }).services;
      assert.ok(s2.store.revokedTokenIds().includes(a.token), "the next start revokes the ended agent's token");
      assert.equal(s2.store.getAgent("eve/sh/w1", false)?.state, "lost");
    } finally {
      await again?.stop();
      await t.stop().catch(() => {});
      removeHome(t.home);
    }
  });

  it("a later agent of an ended one's name is not spawned while the earlier one's revocation waits for room: its row would replace the only one naming the earlier token", {
    skip: sandboxSkip,
  }, async () => {
    await withEve(async (_t, c, s) => {
      const room = refuseRoom(s.store, "revokeToken", true);
      const first = (await c.agents.spawn("sh", "w1", { args: ["-c", "exit 0"], rights: [], lifetimeMs: 600_000 })) as {
        token: string;
      };
      await until(async () => (await c.agents.status("agent://sh/w1")).state === "exited", 30_000, "the first w1's end");
      await assert.rejects(
        c.agents.spawn("sh", "w1", { args: ["-c", "sleep 600"], rights: [], lifetimeMs: 600_000 }),
        klass("RESOURCE", "storage is full"),
      );
      assert.equal(s.store.getAgent("eve/sh/w1", false)?.tokenId, first.token, "the earlier agent's row stays");
      // Room again: the spawn stores the earlier revocation first, then goes on.
      room.full = false;
      await c.agents.spawn("sh", "w1", { args: ["-c", "sleep 600"], rights: [], lifetimeMs: 600_000 });
      assert.ok(s.store.revokedTokenIds().includes(first.token), "the earlier token's revocation is stored");
      await c.call("agent.kill", "agent://sh/w1", {});
    });
  });

  it("an agent a start finds running, whose revocation that start cannot store, is not stored lost before it: the start after revokes its token", async () => {
    const first = await startKernel();
    const home = first.home;
    await first.stop();
    // What a kill leaves: an agent recorded running, its token not revoked.
    const db = new Database(join(home, "kernel.db"));
    db.prepare(
      "INSERT INTO agents (id, persona, spawner, command, args, pid, state, started_at, deadline, token_id, cwd, proc_id) " +
        "VALUES ('admin/tool/1', 'admin/agent.1', 'admin', 'tool', '[]', NULL, 'running', 1, 9999999999999, 't1', '/tmp', NULL)",
    ).run();
    db.close();
    // The next start finds no room for revocations (the disk is still full).
    const revokeToken = SqliteStore.prototype.revokeToken;
    SqliteStore.prototype.revokeToken = () => {
      throw noRoom();
    };
    let again: TestKernel | undefined;
    try {
      const t = await startKernel({}, home);
      const s = (t.k as unknown as { services: Services }).services;
      assert.ok(!s.store.revokedTokenIds().includes("t1"), "its revocation in force in memory only");
      assert.equal(s.store.getAgent("admin/tool/1", false)?.state, "running", "its end waits for its revocation");
      await t.stop();
      SqliteStore.prototype.revokeToken = revokeToken;
      again = await startKernel({}, home);
      const s2 = (again.k as unknown as { services: Services }).services;
      assert.ok(s2.store.revokedTokenIds().includes("t1"), "the next start revokes its token");
      assert.equal(s2.store.getAgent("admin/tool/1", false)?.state, "lost");
    } finally {
      SqliteStore.prototype.revokeToken = revokeToken;
      await again?.stop();
      removeHome(home);
    }
  });
});
