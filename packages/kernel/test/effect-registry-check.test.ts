import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SqliteStore } from "../src/index.js";
import { removeHome, startKernel } from "./harness.js";

// An op with effects asks the registry again before its effect commits (pipeline/execute.ts,
// refuseIfLapsed): asked in the effect's own transaction, it is ordered against a removal the CLI
// commits beside the kernel, and costs no read transaction of its own.
describe("an effect's registration check", () => {
  it("a small storage.write looks its persona up in the transaction its effect commits in", async () => {
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
      assert.ok(lookups.length > 0, "the registry was asked");
      assert.equal(lookups.at(-1), true, "the last lookup before the commit is inside its transaction");
      await c.close();
    } finally {
      SqliteStore.prototype.getPersona = getPersona;
      await t.stop();
      removeHome(t.home);
    }
  });
});
