import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { attenuate, decodeToken, encodeToken } from "@kpip/protocol";
import { CACHE_ENTRIES, VERIFIED_TOKENS_TREE_SHARE } from "../src/limits.js";
import { klass } from "./harness.js";
import { withTwoTrees } from "./two-trees.js";

// The cache of verified tokens is kernel-wide and forgot its oldest entries first, whoever's they
// were: a persona that attenuates its own token offline, within its tree's budget of new token
// bytes, pushed every other persona's verified tokens out of it. Each of theirs was then a token
// "not seen before" again, verified again and charged to *their* tree's budget: a persona using a
// working set of tokens larger than one burst of that budget was refused TOO_MANY_NEW_TOKENS for
// tokens it had used all along.

/** A copy of `token` ~6.7 KB long, distinct for each `i` (and `tag`), that still allows system.health on kernel://. */
function freshCopy(token: Uint8Array, tag: string, i: number): Uint8Array {
  const v = ["kernel://", ...Array.from({ length: 60 }, (_, j) => `topic://${tag}${"x".repeat(90)}-${i}-${j}/*`)];
  return encodeToken(attenuate(decodeToken(token), { t: "targets", v }));
}

async function healthWith(c: KernelClient, token: Uint8Array): Promise<unknown> {
  try {
    return (await c.call("system.health", "kernel://", {}, { caps: [token] })).status;
  } catch (e) {
    return e;
  }
}

describe("bounded per persona tree: the cache of verified tokens", () => {
  it("one persona's fresh attenuations do not push another persona's verified tokens out of the cache", async () => {
    // The kernel's clock moves only when the test moves it: each tree's budget of new token bytes
    // (16 × maxTokenBytes a second, bursts 5×) is spent and refilled exactly as the test says.
    await withTwoTrees(async ({ t, bob, eve, tick }) => {
      const b = bob.client;
      const e = eve.client;
      const burst = 5 * 16 * 8192;
      // bob's working set: larger than one burst of his budget, well within his share of the cache.
      const mine = Array.from({ length: 120 }, (_, i) => freshCopy(bob.token, "bob", i));
      const mineBytes = mine.reduce((n, x) => n + x.length, 0);
      assert.ok(mineBytes > burst, `${mineBytes} bytes`);
      assert.ok(mineBytes < CACHE_ENTRIES.verifiedTokenBytes / VERIFIED_TOKENS_TREE_SHARE, `${mineBytes} bytes`);
      for (const x of mine) {
        tick(1000);
        assert.equal(await healthWith(b, x), "SUCCESS");
      }
      // Used again at once, with no time to refill: every one is a verified token, and costs nothing.
      for (const x of mine) assert.equal(await healthWith(b, x), "SUCCESS");
      // eve sends fresh attenuations of her own token, each within her budget, past the cache's bytes.
      let sent = 0;
      for (let i = 0; sent < CACHE_ENTRIES.verifiedTokenBytes * 1.25; i++) {
        const x = freshCopy(eve.token, "eve", i);
        tick(1000);
        assert.equal(await healthWith(e, x), "SUCCESS");
        sent += x.length;
      }
      // bob's working set, again with no time to refill: still verified, never charged to his budget.
      const answers = [];
      for (const x of mine) answers.push(await healthWith(b, x));
      const refused = answers.filter((a) => a !== "SUCCESS");
      assert.equal(refused.length, 0, `${refused.length} of ${mine.length} refused, the first: ${String(refused[0])}`);
      // eve is served all along, within her share: her newest copies are the ones kept.
      const cache = (t.k as unknown as { services: { enforcer: { verifiedCache: { bytes: number } } } }).services.enforcer
        .verifiedCache;
      assert.ok(cache.bytes <= CACHE_ENTRIES.verifiedTokenBytes, `${cache.bytes} bytes`);
      // And what eve's tree may not have verified anew is still refused by her budget, not by the share.
      let over: unknown;
      for (let i = 0; i < 200 && over === undefined; i++) {
        const a = await healthWith(e, freshCopy(eve.token, "late", i));
        if (a !== "SUCCESS") over = a;
      }
      assert.ok(klass("CAPABILITY", "tokens not seen before")(over), String(over));
    });
  });
});
