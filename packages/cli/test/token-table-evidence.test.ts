import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { KernelClient } from "@kpip/client";
import { Kernel } from "@kpip/kernel";
import { generateIdentity } from "@kpip/protocol";
import { CommandWorker } from "@kpip/protocol/testing";
import Database from "better-sqlite3";
import { connectAdmin, DISPATCH } from "./run.js";

// The token and revocations tables are the kernel's working state, not the chain: whoever can
// write the home can change them without `kpip audit verify --anchors` noticing. Where the
// record says who minted a token, for whom, and who revoked it, `audit tokens` must say so.
const cli = new CommandWorker(DISPATCH);
after(() => cli.close());

describe("the token tree against a tampered token table", () => {
  it("audit tokens takes who minted a token, for whom, and who revoked it from the record, and names where the tables disagree", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-token-table-"));
    try {
      const k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await k.start();
      const clients: KernelClient[] = [];
      let ghostToken: string;
      try {
        const admin = await connectAdmin(home);
        clients.push(admin);
        const ghost = generateIdentity("ghost");
        const bob = generateIdentity("bob");
        await admin.personas.register("ghost", ghost.publicKey);
        await admin.personas.register("bob", bob.publicKey);
        // A leaked admin token mints ghost wide rights; ghost acts, then revokes its own token.
        const g = await admin.tokens.mint("ghost", {
          rights: [{ ops: ["storage.*", "token.*"], targets: ["obj://**", "token://**"] }],
          ttlMs: 600_000,
        });
        ghostToken = g.id;
        const asGhost = await KernelClient.connect({
          socket: k.socketPath,
          identity: ghost,
          tokens: [g.token],
          reconnect: false,
        });
        clients.push(asGhost);
        await asGhost.storage.write("obj://loot/x", new Uint8Array([1]));
        await asGhost.tokens.revoke(g.id);
      } finally {
        for (const c of clients) await c.close().catch(() => {});
        await k.stop();
      }
      // Someone with the home pins it on bob: the tables say bob's, minted and revoked by bob.
      const db = new Database(join(home, "kernel.db"));
      db.prepare("UPDATE tokens SET sub = 'bob', minted_by = 'bob' WHERE id = ?").run(ghostToken);
      db.prepare("UPDATE revocations SET revoked_by = 'bob' WHERE id = ?").run(ghostToken);
      db.close();
      const v = await cli.run(["audit", "verify", "--home", home]);
      assert.equal(v.code, 0, `the chain is untouched: ${v.out}${v.err}`);

      const j = await cli.run(["audit", "tokens", "--json", "--token", ghostToken, "--home", home]);
      assert.equal(j.code, 0, j.err);
      const node = j.out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .find((n) => n.id === ghostToken) as {
        sub: string;
        mintedBy: string;
        revoked: { by: string; record: number };
        disputed: string[];
      };
      assert.equal(node.sub, "ghost");
      assert.equal(node.mintedBy, "admin");
      assert.equal(node.revoked.by, "ghost");
      assert.equal(node.disputed.length, 3, JSON.stringify(node.disputed));
      assert.ok(node.disputed.some((d) => /sub/.test(d) && /bob/.test(d)));

      const t = await cli.run(["audit", "tokens", "--token", ghostToken, "--home", home]);
      assert.equal(t.code, 0, t.err);
      assert.match(t.out, new RegExp(`${ghostToken}  for ghost, mint by admin`));
      assert.match(t.out, /REVOKED by ghost /);
      assert.match(t.out, /THE TOKEN TABLE DISAGREES/);
      assert.doesNotMatch(t.out, /for bob|by bob at/);

      // An untampered token says nothing of the kind.
      const all = await cli.run(["audit", "tokens", "--json", "--home", home]);
      for (const n of all.out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { id: string; disputed: string[] }))
        if (n.id !== ghostToken) assert.deepEqual(n.disputed, [], n.id);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
