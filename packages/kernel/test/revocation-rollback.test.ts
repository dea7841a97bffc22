import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Revocations } from "../src/auth/revocations.js";
import { SqliteStore } from "../src/index.js";
import { removeHome } from "./harness.js";

const TOKEN = "0".repeat(31) + "1";

describe("a revocation undone with its rolled-back transaction", () => {
  it("a revocation whose row another process stored already is kept in force when this process's transaction rolls back", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-revrb-"));
    // Two kernels' processes on one store: each keeps its own revocations in memory.
    const mine = new SqliteStore(join(home, "kpip.db"));
    const theirs = new SqliteStore(join(home, "kpip.db"));
    try {
      mine.recordToken({ id: TOKEN, kid: "k", sub: "ann", chain: [], exp: 5000, mintedBy: "admin", createdAt: 0, family: TOKEN });
      const here = new Revocations(mine);
      const there = new Revocations(theirs);
      const grant = { id: TOKEN, chain: [] };
      // The other process revokes it; this one has not reloaded yet.
      assert.equal(there.revoke(TOKEN, "admin", 1000).changed, true);
      assert.equal(here.covers(grant), false);
      // This process revokes it too, in a transaction that then rolls back (a removal whose commit failed).
      assert.throws(() =>
        mine.transaction(() => {
          assert.equal(here.revoke(TOKEN, "admin", 1001).changed, false, "the row was there already");
          throw new Error("commit failed");
        }),
      );
      assert.deepEqual(mine.revokedTokenIds(), [TOKEN], "the other process's row stands");
      assert.equal(here.covers(grant), true, "so its revocation stays in force here, not only after a reload");

      // A revocation this transaction made is undone with it, as before.
      const other = "0".repeat(31) + "2";
      mine.recordToken({ id: other, kid: "k", sub: "bob", chain: [], exp: 5000, mintedBy: "admin", createdAt: 0, family: other });
      assert.throws(() =>
        mine.transaction(() => {
          assert.equal(here.revoke(other, "admin", 1002).changed, true);
          throw new Error("commit failed");
        }),
      );
      assert.equal(here.covers({ id: other, chain: [] }), false, "its row rolled back, so is it in memory");
    } finally {
      mine.close();
      theirs.close();
      removeHome(home);
    }
  });
});
