import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { withKernel } from "./harness.js";

// A token's rights go on the record as (op, target) pairs: the product of each right's ops and
// targets. Within an 8 KiB token that product of long targets was half a MiB of detail a record.
describe("a token's detail on the record", () => {
  it("a token of 64 ops on 4 targets of 1,800 characters keeps its mint's and its agent's spawn's records small", async () => {
    await withKernel({ sandbox: "none" }, async (t) => {
      const eve = await t.persona("eve", [
        { ops: ["**"], targets: ["obj://eve/**", "token://**", "agent://**", "persona://eve"] },
      ]);
      const c = await t.connect(eve.identity, [eve.token]);
      const ops = Array.from({ length: 64 }, (_, i) => `s${i}.*`);
      const targets = Array.from({ length: 4 }, (_, i) => `obj://eve/${String(i).repeat(1800)}/**`);
      const minted = await c.tokens.mint("eve", { rights: [{ ops, targets }], ttlMs: 600_000 });
      const spawned = await c.agents.spawn("sleep", "w1", { args: ["60"], rights: [{ ops, targets }], lifetimeMs: 300_000 });
      await c.agents.kill(spawned.agent);
      const detailOf = (op: string, id: string) => {
        const r = [...t.k.inspect.queryAudit({ op, limit: 100 })].find((x) => x.detail?.includes(`"id":"${id}"`));
        assert.ok(r?.detail, `a ${op} record of the token`);
        return r.detail;
      };
      for (const [op, id] of [
        ["token.mint", minted.id],
        ["agent.spawned", spawned.token],
      ] as const) {
        const d = detailOf(op, id);
        // The request was ~8 KiB: its record's detail stays within a few times that, not 256 × 1.8 KiB.
        assert.ok(d.length < 32 * 1024, `${op}'s detail is ${d.length} characters`);
        // The pairs left out are counted.
        assert.match(d, /"rightsTotal":256/);
      }
    });
  });
});
