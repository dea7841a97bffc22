import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { attenuate, decodeToken, encodeToken, type RightPair } from "@kpip/protocol";
import { countingSplits } from "./counting-splits.js";
import { klass, withKernel } from "./harness.js";

// A persona with a narrow, rate-limited token asks only for what it is refused: the rate counted
// only what a grant allowed, so its refusals ran at whatever speed it sent them, each one's check
// as costly as its token made it (case 550's token, 512 pairs, a new ~1,000-segment target each).

describe("bounded after authentication: refused requests and the token's rate", () => {
  it("a PERMISSION refusal draws on its token family's rate; past it requests are refused RESOURCE before their check", async () => {
    // A kernel clock that stands still: the bucket holds `rate` requests and never refills.
    const now = Date.now();
    await withKernel({ clock: () => now }, async (t) => {
      const eve = await t.persona("eve", [{ ops: ["storage.read"], targets: ["obj://ws1/**"] }], { limits: { rate: 5 } });
      const pairs: RightPair[] = Array.from({ length: 64 }, (_, i) => (i < 63 ? ["**", "kernel://"] : ["**", "**"]));
      let token = decodeToken(eve.token);
      for (let i = 0; i < 8; i++) token = attenuate(token, { t: "rights", v: pairs });
      const c = await t.connect(eve.identity, [encodeToken(token)], { maxAttempts: 1 });
      const deep = `${"a/".repeat(1000)}b`;
      const classes: string[] = [];
      const splits: number[] = [];
      for (let i = 0; i < 12; i++) {
        // obj://ws2 is not granted: each is refused, after a check that walked every pair.
        const r = await countingSplits(`ws2/r${i}/`, () =>
          c.storage.read(`obj://ws2/r${i}/${deep}`).then(
            () => undefined,
            (e: unknown) => e,
          ),
        );
        classes.push((r.value as { errorClass?: string } | undefined)?.errorClass ?? String(r.value));
        splits.push(r.splits);
      }
      assert.deepEqual(classes, [...Array(5).fill("PERMISSION"), ...Array(7).fill("RESOURCE")], classes.join(","));
      // Past the rate the check did not run: one split fewer (the client's and the intent's parses remain).
      const checked = splits[0] as number;
      for (const n of splits.slice(5)) assert.ok(n < checked, `${splits.join(",")} splits`);
      // The refusals spent the family's rate, as allowed requests would have: a granted read is refused too.
      await assert.rejects(c.storage.read("obj://ws1/x"), klass("RESOURCE", "rate exceeded"));
    });
  });
});
