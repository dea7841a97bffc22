import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { AuditChainError, HOME_FILES, MAX_CELL_BYTES, SqliteStore } from "../src/index.js";
import { removeHome, startKernel } from "./harness.js";

const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

/** SQL for a text of `n` bytes (no value of this size is ever built in JavaScript). */
const bigText = (n: number) => `substr(hex(zeroblob(${Math.ceil(n / 2)})), 1, ${n})`;

describe("checkpoints, tokens and revocations: a size bound on reading (the known gap of case 188)", () => {
  it("a tampered value past MAX_CELL_BYTES is never read: the store, a starting kernel and kpip audit tokens see a placeholder", async () => {
    const t = await startKernel({ auditCheckpointEvery: 5 });
    const home = t.home;
    try {
      const c = await t.admin();
      const keep = await c.tokens.mint("admin", { rights: [{ ops: ["system.*"], targets: ["kernel://"] }], ttlMs: 3_600_000 });
      const gone = await c.tokens.mint("admin", { rights: [{ ops: ["system.*"], targets: ["kernel://"] }], ttlMs: 3_600_000 });
      await c.tokens.revoke(gone.id);
      for (let i = 0; i < 6; i++) await c.call("system.health", "kernel://");
      await t.stop();

      const before = new SqliteStore(join(home, HOME_FILES.database));
      const goneChain = before.getToken(gone.id)?.chain;
      assert.ok(goneChain && goneChain.length > 0, "a minted token's chain names its parent");
      before.close();

      const huge = MAX_CELL_BYTES * 64;
      const w = new Database(join(home, HOME_FILES.database));
      w.prepare("UPDATE audit_checkpoints SET signature = zeroblob(?) WHERE seq = (SELECT max(seq) FROM audit_checkpoints)").run(
        huge,
      );
      w.prepare(`UPDATE tokens SET chain = ${bigText(huge)} WHERE id = ?`).run(keep.id);
      w.exec(`INSERT INTO revocations (id, revoked_by, revoked_at) VALUES (${bigText(huge)}, 'x', 0)`);
      w.close();

      const s = new SqliteStore(join(home, HOME_FILES.database));
      try {
        assert.equal(s.checkpoints().at(-1)?.signature.length, 0, "the signature past the bound reads as no bytes");
        assert.deepEqual(s.revokedTokenIds(), [gone.id], "the tampered revocation is no token's: left out");
        // A token read while the kernel serves: the chain past the bound is unknown, the rest as stored.
        assert.deepEqual(s.getToken(keep.id)?.chain, []);
        assert.equal(s.getToken(keep.id)?.sub, "admin");
        assert.deepEqual(s.getToken(gone.id)?.chain, goneChain);
        assert.deepEqual(s.listTokens().find((x) => x.id === keep.id)?.chain, []);
        assert.deepEqual(
          s.tokensDerivedFrom(goneChain.at(-1) as string).map((x) => x.id),
          [gone.id],
          "a chain past the bound is not searched",
        );
        s.pruneTokens(Date.now());
        assert.equal(
          (s.db.prepare("SELECT count(*) AS n FROM revocations").get() as { n: number }).n,
          2,
          "an unreadable chain drops no revocation",
        );
      } finally {
        s.close();
      }

      const cli = spawnSync(process.execPath, [MAIN, "audit", "tokens", "--home", home, "--format", "json"], {
        encoding: "utf8",
      });
      assert.equal(cli.status, 0, cli.stderr);
      assert.ok(cli.stdout.includes(gone.id), "the tree is still shown");

      // The last checkpoint's signature is unreadable: the kernel refuses the chain, as for any forged signature.
      await assert.rejects(startKernel({ auditCheckpointEvery: 5 }, home), (e: Error) => {
        assert.ok(e instanceof AuditChainError, String(e));
        assert.match(e.message, /last checkpoint's signature is invalid/);
        return true;
      });
    } finally {
      await t.stop().catch(() => {});
      removeHome(home);
    }
  });
});
