import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { generateIdentity } from "@kpip/protocol";
import { HOME_FILES, removePersonaTree, SqliteStore } from "../src/index.js";
import { sigkillHolder, sleepingAgent } from "./agent-kill-kit.js";
import { removeHome, sandboxSkip, startKernel, until } from "./harness.js";

// The process table's kill (the expulsion's: processes a removed persona started) killed an agent
// without ending its authority: its token held until its process closed (a sandbox's teardown, a
// process in uninterruptible sleep), as agent.kill's once did (case 642). Every other kill path
// ends it at once.

describe("an agent killed through the process table", () => {
  it("its spawner removed and registered again beside the kernel, its own id too: the kill revokes its token at once, before its process has closed", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    // A process slow to die: the SIGKILLs are held until the test lets them through.
    const { held, hold, release } = sigkillHolder();
    try {
      const { a, agentPersona } = await sleepingAgent(t, "gil", "k1");
      // The kernel takes offline changes in at its tick: none comes until the test asks.
      (t.k as unknown as { housekeeping?: { stop(): void } }).housekeeping?.stop();
      // As `kpip persona remove gil` revoking nothing, then other holders registering gil and the agent's id.
      const db = new SqliteStore(join(t.home, HOME_FILES.database));
      try {
        db.withJournal({ actor: "test", op: "persona.remove", target: "persona://gil", message: "removed" }, () =>
          removePersonaTree(db, "gil", () => {}),
        );
        db.withJournal({ actor: "test", op: "persona.register", target: "persona://gil", message: "again" }, () => {
          db.addPersona("gil", generateIdentity("gil").publicKey);
          db.addPersona(agentPersona, generateIdentity(agentPersona).publicKey);
        });
      } finally {
        db.close();
      }
      hold();
      (t.k as unknown as { services: { applyOfflineChanges(): void } }).services.applyOfflineChanges();
      assert.ok(held.length > 0, "the agent was killed (its SIGKILL is held: its process has not closed)");
      const revoked = () =>
        t.k.inspect.queryAudit({ op: "token.revoked", limit: 100 }).filter((r) => r.target === `token://${a.token}`);
      await until(() => revoked().length > 0, 30_000, "the agent's token revoked at its kill");
      assert.equal(exitedRows().length, 0, "its process has not closed yet");
      release();
      await until(() => exitedRows().length > 0, 30_000, "agent.exited");
      assert.equal(revoked().length, 1, "its token's revocation is on the record once, at its kill");

      function exitedRows() {
        return t.k.inspect.queryAudit({ op: "agent.exited", limit: 10 }).filter((r) => r.target === a.agent);
      }
    } finally {
      release();
      await t.stop();
      removeHome(t.home);
    }
  });

  it("its id registered again by another holder: the agent's end leaves that holder's key, its session and the token minted for it", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    const { held, hold, release } = sigkillHolder();
    try {
      const { a, agentPersona } = await sleepingAgent(t, "gil", "k2");
      (t.k as unknown as { housekeeping?: { stop(): void } }).housekeeping?.stop();
      // As case 687's: gil removed beside the kernel, then gil and the agent's id registered again by other holders.
      const other = generateIdentity(agentPersona);
      const db = new SqliteStore(join(t.home, HOME_FILES.database));
      try {
        db.withJournal({ actor: "test", op: "persona.remove", target: "persona://gil", message: "removed" }, () =>
          removePersonaTree(db, "gil", () => {}),
        );
        db.withJournal({ actor: "test", op: "persona.register", target: "persona://gil", message: "again" }, () => {
          db.addPersona("gil", generateIdentity("gil").publicKey);
          db.addPersona(agentPersona, other.publicKey);
        });
      } finally {
        db.close();
      }
      // The new holder's token, minted for the id it holds now, and its session.
      const admin = await t.admin();
      const m = await admin.tokens.mint(agentPersona, {
        rights: [{ ops: ["system.health"], targets: ["kernel://"] }],
        ttlMs: 600_000,
      });
      hold();
      (t.k as unknown as { services: { applyOfflineChanges(): void } }).services.applyOfflineChanges();
      assert.ok(held.length > 0, "the agent was killed");
      const s = await t.connect(other, [m.token], { reconnect: false });
      await s.call("system.health", "kernel://");
      release();
      await until(
        () => t.k.inspect.queryAudit({ op: "agent.exited", limit: 10 }).some((r) => r.target === a.agent),
        30_000,
        "agent.exited",
      );
      // The agent's end took nothing of the new holder's: its session, its token, its key.
      await s.call("system.health", "kernel://");
      const again = await t.connect(other, [m.token], { reconnect: false });
      await again.call("system.health", "kernel://");
      await again.close();
    } finally {
      release();
      await t.stop();
      removeHome(t.home);
    }
  });
});
