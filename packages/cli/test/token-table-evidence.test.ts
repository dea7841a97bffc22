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

  it("every revocation the kernel or the CLI made is tied to its record; one only the revocations table claims says so", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-token-table-"));
    try {
      const k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await k.start();
      const clients: KernelClient[] = [];
      const ids: Record<string, string> = {};
      try {
        const admin = await connectAdmin(home);
        clients.push(admin);
        const as = async (name: string) => {
          const id = generateIdentity(name);
          await admin.personas.register(name, id.publicKey);
          const t = await admin.tokens.mint(name, {
            rights: [{ ops: ["token.refresh"], targets: ["token://**"] }],
            ttlMs: 600_000,
          });
          ids[name] = t.id;
          return { id, t };
        };
        // carol refreshes her token; the admin revokes the first: the copy's row goes with it.
        const carol = await as("carol");
        const asCarol = await KernelClient.connect({
          socket: k.socketPath,
          identity: carol.id,
          tokens: [carol.t.token],
          reconnect: false,
        });
        clients.push(asCarol);
        const copy = await asCarol.call("token.refresh", `token://${carol.t.id}`, { token: carol.t.token });
        ids.copy = (copy.payload as { id: string }).id;
        await admin.tokens.revoke(carol.t.id);
        // dan is removed through the kernel, erin by the CLI with no kernel running; frank keeps his.
        await as("dan");
        await admin.personas.remove("dan");
        await as("erin");
        await as("frank");
      } finally {
        for (const c of clients) await c.close().catch(() => {});
        await k.stop();
      }
      const rm = await cli.run(["persona", "remove", "erin", "--home", home]);
      assert.equal(rm.code, 0, rm.err);
      // The next start puts the CLI's change on the chain (an `offline` record naming the tokens it ended).
      const again = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await again.start();
      await again.stop();
      // A revocation of frank's token that no record made.
      const db = new Database(join(home, "kernel.db"));
      const n = db.prepare("SELECT COUNT(*) AS n FROM revocations").get() as { n: number };
      db.prepare("INSERT INTO revocations (id, revoked_by, revoked_at) VALUES (?, 'bob', ?)").run(ids.frank, Date.now());
      db.close();

      const j = await cli.run(["audit", "tokens", "--json", "--home", home]);
      assert.equal(j.code, 0, j.err);
      const nodes = j.out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { id: string; revoked: { by: string; record: number | null } | null; disputed: string[] });
      const revoked = nodes.filter((x) => x.revoked);
      assert.equal(revoked.length, n.n + 1, "each row of the table, and the forged one");
      for (const x of revoked) {
        if (x.id === ids.frank) assert.equal(x.revoked?.record, null);
        else assert.notEqual(x.revoked?.record, null, `${x.id}'s revocation is on the record`);
        assert.deepEqual(x.disputed, [], x.id);
      }
      for (const name of ["carol", "dan", "erin", "frank"])
        assert.ok(
          revoked.some((x) => x.id === ids[name]),
          `${name}'s token is revoked`,
        );
      const t = await cli.run(["audit", "tokens", "--home", home]);
      const alone = t.out.split("\n").filter((l) => /no record says so/.test(l));
      assert.equal(alone.length, 1, t.out);
      assert.match(alone[0] as string, /REVOKED by bob/);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
