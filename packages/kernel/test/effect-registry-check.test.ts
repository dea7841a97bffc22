import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { HOME_FILES, SqliteStore } from "../src/index.js";
import { klass, removeHome, startKernel, until } from "./harness.js";

// An op with effects asks the registry again before its effect commits (pipeline/execute.ts,
// refuseIfLapsed): asked in the effect's own transaction, it is ordered against a removal the CLI
// commits beside the kernel, and costs no read transaction of its own. An op whose effects are
// all made there (effectsInAtomically) is not asked before its handler as well.
describe("an effect's registration check", () => {
  it("a small storage.write looks its persona up once, in the transaction its effect commits in", async () => {
    const t = await startKernel();
    const getPersona = SqliteStore.prototype.getPersona;
    const lookups: boolean[] = [];
    try {
      const pia = await t.persona("pia", [{ ops: ["storage.*"], targets: ["obj://ws/**"] }]);
      const c = await t.connect(pia.identity, [pia.token]);
      SqliteStore.prototype.getPersona = function (this: SqliteStore, id: string) {
        if (id === "pia") lookups.push(this.db.inTransaction);
        return getPersona.call(this, id);
      };
      await c.storage.write("obj://ws/a", "hi");
      await c.storage.delete("obj://ws/a");
      assert.deepEqual(lookups, [true, true], "one lookup per effect, inside its transaction");
      await c.close();
    } finally {
      SqliteStore.prototype.getPersona = getPersona;
      await t.stop();
      removeHome(t.home);
    }
  });

  it("a small storage.write whose persona the CLI removed after its admission commits nothing: FAILURE AUTH", async () => {
    const t = await startKernel();
    const lookupDedupe = SqliteStore.prototype.lookupDedupe;
    try {
      const admin = await t.admin();
      const pia = await t.persona("pia", [{ ops: ["storage.*"], targets: ["obj://ws/**"] }]);
      const c = await t.connect(pia.identity, [pia.token]);
      // The removal commits beside the kernel (another connection, as the CLI's) when the write
      // is admitted (its dedupe lookup), before its handler: nothing lets the kernel's tick see it first.
      let removed = false;
      SqliteStore.prototype.lookupDedupe = function (this: SqliteStore, ...a: Parameters<SqliteStore["lookupDedupe"]>) {
        if (!removed && a[0].startsWith("pia:")) {
          removed = true;
          const other = new SqliteStore(join(t.home, HOME_FILES.database));
          other.withJournal({ actor: "test", op: "persona.remove", target: "persona://pia", message: "removed" }, () =>
            other.removePersona("pia"),
          );
          other.close();
        }
        return lookupDedupe.apply(this, a);
      };
      // Refused AUTH (the client then tries to attest again, which the removal refuses too).
      await assert.rejects(c.storage.write("obj://ws/a", "hi"));
      assert.ok(removed);
      const outcome = await until(() =>
        t.k.inspect
          .queryAudit({ persona: "pia", op: "storage.write", limit: 10 })
          .find((r) => r.phase === "outcome" && r.target === "obj://ws/a"),
      );
      assert.equal(outcome.status, "FAILURE");
      assert.equal(outcome.errorClass, "AUTH");
      assert.match(outcome.message ?? "", /pia was removed .* before its effect committed: nothing was changed/);
      await assert.rejects(admin.storage.stat("obj://ws/a"), klass("SEMANTIC", "no object"), "nothing was written");
    } finally {
      SqliteStore.prototype.lookupDedupe = lookupDedupe;
      await t.stop();
      removeHome(t.home);
    }
  });
});
