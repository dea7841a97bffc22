import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { attenuate, decodeToken, derivedTokenId, encodeToken, generateIdentity } from "@kpip/protocol";
import { addPersonaKey, klass, withKernel } from "./harness.js";

// token.refresh's ownership rule verified the token argument (within the persona tree's budget of
// new token bytes) and took any refusal for "not delegated to the caller": past the budget, a
// delegate refreshing the token narrowed to it was told the token was another persona's
// (PERMISSION), not to use the tokens it holds (CAPABILITY TOO_MANY_NEW_TOKENS). And the handler
// verified it again: a token that does not verify (never cached) was charged to the budget twice.

/** A copy of `token` ~7 KB long, distinct for each `i`, that keeps its rights over the targets used here. */
function freshCopy(token: Uint8Array, i: number): Uint8Array {
  const v = ["kernel://", "token://**", ...Array.from({ length: 60 }, (_, j) => `topic://${"x".repeat(100)}-${i}-${j}`)];
  return encodeToken(attenuate(decodeToken(token), { t: "targets", v }));
}

type Budget = { newTokenBytes: { take(root: string, now: number): { tokens: number } } };

describe("token.refresh and the budget of new token bytes", () => {
  it("past the budget, a delegate's refresh of a new copy of the token narrowed to it is refused CAPABILITY (tokens not seen before), not PERMISSION", async () => {
    // A kernel clock that stands still: the budget is its burst, never refilled.
    const now = Date.now();
    await withKernel({ clock: () => now }, async (t) => {
      const ivy = await t.persona("ivy", [
        { ops: ["system.health"], targets: ["kernel://"] },
        { ops: ["token.*"], targets: ["token://**"] },
      ]);
      const worker = generateIdentity("ivy/w");
      addPersonaKey(t, "ivy/w", worker.publicKey);
      const d = encodeToken(attenuate(decodeToken(ivy.token), { t: "sub", v: "ivy/w" }));
      const c = await t.connect(worker, [d], { maxAttempts: 1 });
      let refused: unknown;
      for (let i = 0; i < 200 && refused === undefined; i++) {
        try {
          await c.call("system.health", "kernel://", {}, { caps: [freshCopy(d, i)] });
        } catch (e) {
          refused = e;
        }
      }
      assert.ok(klass("CAPABILITY", "tokens not seen before")(refused), String(refused));
      const y = freshCopy(d, 1000);
      await assert.rejects(
        c.call("token.refresh", `token://${derivedTokenId(decodeToken(y))}`, { token: y }, { caps: [d] }),
        klass("CAPABILITY", "tokens not seen before"),
      );
    });
  });

  it("a token that does not verify, sent to be refreshed by its owner, is charged to the budget once", async () => {
    const now = Date.now();
    await withKernel({ clock: () => now }, async (t) => {
      const ivy = await t.persona("ivy", [{ ops: ["token.*"], targets: ["token://**"] }]);
      const c = await t.connect(ivy.identity, [ivy.token], { maxAttempts: 1 });
      const forged = decodeToken(ivy.token);
      const bad = encodeToken({ ...forged, sig: Buffer.alloc(32, 7) });
      const budget = (t.k as unknown as { services: { enforcer: Budget } }).services.enforcer.newTokenBytes;
      const before = budget.take("ivy", now).tokens;
      await assert.rejects(
        c.call("token.refresh", `token://${forged.claims.id}`, { token: bad }, { caps: [ivy.token] }),
        klass("CAPABILITY", "signature"),
      );
      assert.equal(before - budget.take("ivy", now).tokens, bad.length, "charged once, its length");
    });
  });
});
