import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { attenuate, decodeToken, encodeToken, type RightPair } from "@kpip/protocol";
import { countingSplits } from "./counting-splits.js";
import { klass, withKernel } from "./harness.js";

// A persona holding a narrow token attenuates it offline into a token of the largest accepted
// size whose every rights caveat holds 64 pairs that each need the target's segments, and asks
// with ~1,000-segment targets that change every request (no kept decision applies). The check's
// cost is counted in target splits, not timed: each split of a 2 KiB target cost ~30 µs.

describe("bounded after authentication: the capability check's cost", () => {
  it("a token of many rights-caveat pairs splits a long target once per check, not once per pair (requests and token.mint)", async () => {
    await withKernel({}, async (t) => {
      const eve = await t.persona("eve", [
        { ops: ["storage.read"], targets: ["obj://ws1/**"] },
        { ops: ["token.mint"], targets: ["persona://eve/**"] },
      ]);
      // 63 pairs that fail on the target's first segment, then one that passes: every pair is walked.
      const pairs: RightPair[] = Array.from({ length: 64 }, (_, i) => (i < 63 ? ["**", "kernel://"] : ["**", "**"]));
      let token = decodeToken(eve.token);
      while (encodeToken(attenuate(token, { t: "rights", v: pairs })).length <= 8192) {
        token = attenuate(token, { t: "rights", v: pairs });
      }
      const caveats = token.caveats.length;
      assert.ok(caveats >= 6, `${caveats} caveats`);
      const c = await t.connect(eve.identity, [encodeToken(token)], { maxAttempts: 1 });
      const deep = `${"a/".repeat(1000)}b`;
      for (let i = 0; i < 3; i++) {
        const r = await countingSplits(`ws1/cost-${i}/`, () =>
          c.storage.read(`obj://ws1/cost-${i}/${deep}`).then(
            () => "read",
            (e: unknown) => e,
          ),
        );
        // Allowed (nothing is there), after a check that walked every pair.
        assert.ok(klass("SEMANTIC", "no object at")(r.value), String(r.value).slice(0, 200));
        // The client's and the kernel's parses, and the check's one split: not one per pair (~64 × caveats).
        assert.ok(r.splits <= 8, `${r.splits} splits of the target for one request over ${caveats * 64} pairs`);
      }
      await assert.rejects(c.storage.read(`obj://ws2/${deep}`), klass("PERMISSION"));
      // The escalation check of a mint: each of the spec's patterns split once, whatever the caveats.
      const m = await countingSplits("ws1/mint/", () =>
        c.tokens.mint("eve/sub", {
          rights: [{ ops: ["storage.read"], targets: [`obj://ws1/mint/${deep}/**`] }],
          ttlMs: 60_000,
        }),
      );
      assert.equal(m.value.token.length > 0, true);
      assert.ok(m.splits <= 8, `${m.splits} splits of the spec's pattern for one mint over ${caveats * 64} pairs`);
    });
  });
});
