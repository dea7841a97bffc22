import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { CommandWorker, until } from "@kpip/protocol/testing";
import { evidenceKernel } from "./evidence.js";
import { DISPATCH } from "./run.js";

// The investigator's side of an agent's life: what its token allowed, and what ended it.
const cli = new CommandWorker(DISPATCH);
after(() => cli.close());

interface Node {
  id: string;
  parent: string | null;
  sub: string;
  rights: unknown;
  caveats: unknown;
  exp: number | null;
  record: number | null;
  revoked: { by: string; at: number; record: number | null } | null;
  endedBy: string | null;
}

/**
 * A kernel (no sandbox: the agent is `sleep`) where eve spawns an agent, then the admin revokes
 * eve's token, which kills the agent; stopped, the home is read by `kpip audit tokens` alone.
 */
function stage(home: string) {
  return evidenceKernel(home, async ({ k, admin, as }) => {
    const { client: asEve, token: et } = await as(
      "eve",
      [{ ops: ["storage.*", "agent.*"], targets: ["obj://eve/**", "agent://**"] }],
      { limits: { "storage.bytes": 4096 }, ttlMs: 3_600_000 },
    );
    const spawned = await asEve.agents.spawn("sleep", "w1", {
      args: ["600"],
      rights: [{ ops: ["storage.write"], targets: ["obj://eve/a/**"] }],
      lifetimeMs: 600_000,
    });
    await admin.tokens.revoke(et.id);
    await until(() => k.inspect.queryAudit({ op: "agent.exited", limit: 1 })[0], 30_000, "the agent's end");
    return { eveToken: et.id, agentToken: spawned.token };
  });
}

describe("an agent's token in the evidence", () => {
  it("audit tokens names an agent's rights, caveats and expiry from the record, and that its spawner's revocation ended it before the kernel's own", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-agent-evidence-"));
    try {
      const truth = await stage(home);
      const r = await cli.run(["audit", "tokens", "--json", "--home", home]);
      assert.equal(r.code, 0, r.err);
      const nodes = r.out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as Node);
      const agent = nodes.find((n) => n.id === truth.agentToken);
      assert.ok(agent, "the agent's token is in the tree");
      assert.equal(agent.parent, truth.eveToken);
      assert.equal(agent.sub, "eve/agent.w1");
      // What the agent could do: on the record, not "unknown (no mint record)".
      assert.deepEqual(agent.rights, [["storage.write", "obj://eve/a/**"]]);
      assert.ok(Array.isArray(agent.caveats), "its caveats (the spawner's limits it inherited) are known");
      assert.equal(typeof agent.record, "number", "the record that made it");
      // The admin's revocation of eve's token ended it (and so killed the agent); the kernel's own
      // revocation at the agent's end came after and ended nothing more.
      assert.equal(agent.endedBy, truth.eveToken);
      const text = await cli.run(["audit", "tokens", "--token", truth.agentToken, "--home", home]);
      assert.equal(text.code, 0, text.err);
      assert.match(text.out, /storage\.write on obj:\/\/eve\/a\/\*\*/);
      assert.match(text.out, new RegExp(`ended by the revocation of ${truth.eveToken}`));
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it("audit tokens gives a revocation's record and that record's time, not only the revocations table's time taken before it", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-revocation-record-"));
    try {
      const truth = await stage(home);
      const t = await cli.run(["audit", "timeline", "--op", "token.revoke", "--json", "--home", home]);
      assert.equal(t.code, 0, t.err);
      const [revoke] = t.out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { outcomeSeq: number; end: string });
      assert.ok(revoke);
      const r = await cli.run(["audit", "tokens", "--json", "--home", home]);
      assert.equal(r.code, 0, r.err);
      const eve = r.out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { id: string; revoked: { at: string; record: number; recordAt: string } | null })
        .find((n) => n.id === truth.eveToken);
      assert.ok(eve?.revoked);
      // The table's time is taken mid-request; the outcome record, and its time, is where the revocation is on the record.
      assert.equal(eve.revoked.record, revoke.outcomeSeq);
      assert.equal(eve.revoked.recordAt, revoke.end);
      assert.ok(eve.revoked.at <= eve.revoked.recordAt);
      const text = await cli.run(["audit", "tokens", "--token", truth.eveToken, "--home", home]);
      assert.equal(text.code, 0, text.err);
      assert.ok(text.out.includes(`(record ${revoke.outcomeSeq}, written ${revoke.end})`), text.out);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it("an agent killed by a revocation names on its agent.exited record the revoked token that ended it", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-agent-revoked-by-"));
    try {
      const truth = await stage(home);
      const r = await cli.run(["audit", "timeline", "--op", "agent.exited", "--json", "--home", home]);
      assert.equal(r.code, 0, r.err);
      const [end] = r.out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { detail: Record<string, unknown> | null });
      assert.ok(end);
      assert.equal(end.detail?.killedBy, "token revoked");
      assert.equal(end.detail?.token, truth.agentToken);
      // Its spawner's token, whose revocation killed it: not its own, which the kernel revoked after.
      assert.equal(end.detail?.revokedToken, truth.eveToken);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
