import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { attenuate, decodeToken, derivedTokenId, encodeToken } from "@kpip/protocol";
import { withTwoTrees } from "./two-trees.js";

// The kernel remembers the tokens attenuated offline that it saw used this run (16,384 of them,
// kernel-wide, the oldest forgotten first): a revocation's record lists those it ended (`ended`,
// PROTOCOL §13.1), and a copy's first use gets one `token.derived` record. One persona's fresh
// offline attenuations, within its tree's budget of new token bytes, pushed every other persona's
// out: the revocation of bob's token no longer listed bob's narrowed copy, and the copy's next use
// was recorded as a first use again.

describe("bounded per persona tree: the derived tokens seen used", () => {
  it("one persona's fresh attenuations do not push another persona's derived tokens out of a revocation's record", async () => {
    // The kernel's clock moves only when the test moves it, a second per batch: eve keeps within
    // her tree's budget of new token bytes (16 × 8 KiB a second).
    await withTwoTrees(async ({ t, bob, eve, tick }) => {
      const b = bob.client;
      const e = eve.client;
      // Two copies bob narrowed offline, each used once: the first is not used again.
      const first = attenuate(decodeToken(bob.token), { t: "targets", v: ["kernel://", "topic://first"] });
      const copy = attenuate(decodeToken(bob.token), { t: "targets", v: ["kernel://"] });
      const copyId = derivedTokenId(copy);
      assert.equal((await b.call("system.health", "kernel://", {}, { caps: [encodeToken(first)] })).status, "SUCCESS");
      assert.equal((await b.call("system.health", "kernel://", {}, { caps: [encodeToken(copy)] })).status, "SUCCESS");
      const derivedRecords = () =>
        t.k.inspect
          .queryAudit({ op: "token.derived", persona: "bob", limit: 1000 })
          .filter((r) => r.target === `token://${copyId}`).length;
      assert.equal(derivedRecords(), 1);
      // eve: more fresh offline copies of her own token than the kernel remembers, each allowed.
      const eveToken = decodeToken(eve.token);
      for (let batch = 0; batch < 17_000 / 250; batch++) {
        tick(1000);
        const calls = [];
        for (let i = 0; i < 250; i++) {
          const fresh = encodeToken(attenuate(eveToken, { t: "targets", v: ["kernel://", `topic://e/${batch}/${i}`] }));
          calls.push(e.call("system.health", "kernel://", {}, { caps: [fresh] }));
        }
        for (const r of await Promise.all(calls)) assert.equal(r.status, "SUCCESS");
      }
      // bob's second copy used again: not a first use.
      assert.equal((await b.call("system.health", "kernel://", {}, { caps: [encodeToken(copy)] })).status, "SUCCESS");
      assert.equal(derivedRecords(), 1);
      // The revocation of bob's token lists both copies it ended.
      const admin = await t.admin();
      await admin.tokens.revoke(bob.id);
      const rev = t.k.inspect
        .queryAudit({ op: "token.revoke", limit: 1000 })
        .map((r) => ({ ...r, d: JSON.parse(r.detail ?? "null") }))
        .find((r) => r.phase === "outcome" && r.d?.revoked === bob.id);
      assert.deepEqual(new Set(rev?.d.ended as string[]), new Set([bob.id, derivedTokenId(first), copyId]));
    });
  });
});
