// A limit a persona holds bounds everything done under its authority: the agents it spawns (each
// a persona under it, alice/agent.<name>) and the tokens it mints use its allowance, never a new one.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Right } from "@kpip/protocol";
import { withKernel } from "./harness.js";

const outcome = (p: Promise<unknown>) =>
  p.then(
    () => "ok",
    (e: { errorClass?: string }) => e.errorClass ?? String(e),
  );

describe("limits over a persona's tree: agents and minted tokens", () => {
  it("tokens minted from a rate-limited token share its bucket: its children and grandchildren get its 20 requests in all", async () => {
    const now = Date.now();
    // The kernel's clock stands still: no bucket refills, the counts are exact.
    await withKernel({ clock: () => now }, async (t) => {
      const health: Right = { ops: ["system.health"], targets: ["kernel://"] };
      const a = await t.persona("alice", [health, { ops: ["token.mint"], targets: ["persona://alice", "persona://alice/**"] }], {
        limits: { rate: 20 },
      });
      const c = await t.connect(a.identity, [a.token], { maxAttempts: 1 });
      const mint: Right = { ops: ["token.mint"], targets: ["persona://alice"] };
      const kids: Uint8Array[] = [];
      for (let i = 0; i < 5; i++)
        kids.push((await c.tokens.mint("alice", { rights: [health, mint], ttlMs: 600_000, limits: { rate: 20 } })).token);
      // A grandchild: still the same bucket.
      const kid = await t.connect(a.identity, [kids[0] as Uint8Array], { maxAttempts: 1 });
      kids.push((await kid.tokens.mint("alice", { rights: [health], ttlMs: 600_000, limits: { rate: 20 } })).token);
      const used = 6;
      const results = await Promise.all(
        Array.from({ length: 100 }, (_, i) =>
          outcome(
            c
              .request({ op: "system.health", target: "kernel://", args: {} }, { caps: [kids[i % kids.length] as Uint8Array] })
              .then((r) => {
                if (r.status !== "SUCCESS") throw Object.assign(new Error(r.status), { errorClass: r.error ?? r.status });
              }),
          ),
        ),
      );
      assert.equal(results.filter((r) => r === "ok").length, 20 - used, "the family's 20, less the mints");
      assert.ok(results.every((r) => r === "ok" || r === "RESOURCE"));
      // The parent's own token finds the bucket as empty as its children left it.
      assert.equal(await outcome(c.call("system.health", "kernel://", {}, { caps: [a.token] })), "RESOURCE");
    });
  });
});
