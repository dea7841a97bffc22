import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { attenuate, decodeToken, derivedTokenId, encodeToken } from "@kpip/protocol";
import { klass, withKernel } from "./harness.js";

// Case 552 verifies a token never seen before within a byte budget per persona tree — inline, at
// ATTEST, by token.bind. token.inspect (and token.refresh) verified the token argument outside it:
// a persona granted token.inspect had 400 fresh ~7 KB attenuations of its own token verified in
// 0.6 s, where the same tokens inline were refused past ~95.

/** A copy of `token` ~7 KB long, distinct for each `i`. */
function freshCopy(token: Uint8Array, i: number): Uint8Array {
  const v = ["kernel://", ...Array.from({ length: 60 }, (_, j) => `topic://${"x".repeat(100)}-${i}-${j}`)];
  return encodeToken(attenuate(decodeToken(token), { t: "targets", v }));
}

describe("bounded after authentication: tokens a persona has inspected", () => {
  it("token.inspect verifies new tokens within the tree's budget of new token bytes; seen ones are inspected as before", async () => {
    // A kernel clock that stands still: the budget is its burst, never refilled.
    const now = Date.now();
    await withKernel({ clock: () => now }, async (t) => {
      const eve = await t.persona("eve", [{ ops: ["token.inspect"], targets: ["token://**"] }]);
      const c = await t.connect(eve.identity, [eve.token], { maxAttempts: 1 });
      const budget = 5 * 16 * 8192;
      let verified = 0;
      let refused: unknown;
      const seen: Uint8Array[] = [];
      for (let i = 0; i < 400 && refused === undefined; i++) {
        const copy = freshCopy(eve.token, i);
        try {
          const d = await c.tokens.inspect(derivedTokenId(decodeToken(copy)), copy);
          assert.equal(d.status, "valid");
          verified += copy.length;
          seen.push(copy);
        } catch (e) {
          refused = e;
        }
      }
      assert.ok(klass("CAPABILITY", "tokens not seen before")(refused), String(refused));
      assert.ok(verified <= budget && verified > budget - 16_384, `${verified} bytes verified`);
      // One verified before is inspected from the cache, past the budget.
      const first = seen[0] as Uint8Array;
      assert.equal((await c.tokens.inspect(derivedTokenId(decodeToken(first)), first)).status, "valid");
    });
  });
});
