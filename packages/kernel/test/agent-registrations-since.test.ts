// An agent's end removes what it registered (case 728), and only that: where its id was
// registered again by another holder (case 729), what that holder registered since stays — and
// so does what those registered in turn (the cascade follows only the agent's own registrations).
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { generateIdentity } from "@kpip/protocol";
import Database from "better-sqlite3";
import { HOME_FILES, SqliteStore } from "../src/index.js";
import { sleepingAgent } from "./agent-kill-kit.js";
import { removeHome, sandboxSkip, startKernel, until } from "./harness.js";

/** The registered persona ids of a home, read beside the kernel. */
function personas(home: string): string[] {
  const db = new Database(join(home, HOME_FILES.database), { readonly: true });
  try {
    return db.prepare("SELECT id FROM personas ORDER BY id").pluck(true).all() as string[];
  } finally {
    db.close();
  }
}

describe("an agent's end after its id was registered again", () => {
  it("what the id's new holder registered, and what that registered in turn, stays", { skip: sandboxSkip }, async () => {
    const t = await startKernel();
    try {
      const { c, a, agentPersona } = await sleepingAgent(t, "ann", "k3");
      // Beside the kernel (case 729's direct edits): the agent's id registered again by another
      // holder, who registers ann/h1 with it, and ann/h1's holder registers ann/h2.
      const db = new SqliteStore(join(t.home, HOME_FILES.database));
      try {
        db.withJournal({ actor: "test", op: "persona.register", target: `persona://${agentPersona}`, message: "again" }, () => {
          db.removePersona(agentPersona);
          db.addPersona(agentPersona, generateIdentity(agentPersona).publicKey);
          db.addPersona("ann/h1", generateIdentity("ann/h1").publicKey, agentPersona);
          db.addPersona("ann/h2", generateIdentity("ann/h2").publicKey, "ann/h1");
        });
      } finally {
        db.close();
      }
      (t.k as unknown as { services: { applyOfflineChanges(): void } }).services.applyOfflineChanges();
      await c.agents.kill(a.agent as string).catch(() => undefined);
      await until(
        () => t.k.inspect.queryAudit({ op: "agent.exited", limit: 10 }).some((r) => r.target === a.agent),
        30_000,
        "agent.exited",
      );
      const left = personas(t.home);
      assert.ok(left.includes("ann/h1"), `the new holder's registration stays: ${left}`);
      assert.ok(left.includes("ann/h2"), `what it registered in turn stays: ${left}`);
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
