import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { attenuate, decodeToken, encodeToken } from "@kpip/protocol";
import type { CapEnforcer } from "../src/auth/enforcer.js";
import { CACHE_ENTRIES, VERIFIED_TOKENS_TREE_SHARE } from "../src/limits.js";
import { withKernel } from "./harness.js";

// The cache of verified tokens was bounded in entries (4,096), not in bytes: a persona that
// attenuates its own token offline without end gets each copy, up to maxTokenBytes, verified and
// cached for good — inline, at ATTEST or bound, within its budget of new token bytes (case 552) — and each entry keeps its decoded token,
// grant and compiled patterns, ~15× its bytes of heap (~100 KB for a 6.4 KB copy): ~400 MB.

/** A copy of `token` ~6.5 KB long, distinct for each `i`, that still allows system.health on kernel://. */
function freshCopy(token: Uint8Array, i: number): Uint8Array {
  const v = ["kernel://", ...Array.from({ length: 60 }, (_, j) => `topic://${"x".repeat(90)}-${i}-${j}/*`)];
  return encodeToken(attenuate(decodeToken(token), { t: "targets", v }));
}

describe("bounded after authentication: the cache of verified tokens", () => {
  it("fresh attenuations a persona has verified keep at most the cache's byte bound, not 4,096 tokens of any size", async () => {
    // The kernel's clock moves a second per request: the persona keeps within its budget of new tokens.
    let now = Date.now();
    await withKernel({ clock: () => now }, async (t) => {
      // Several persona trees: one holds at most its share of the cache (case 661), more fill it.
      const trees: { token: Uint8Array; c: KernelClient }[] = [];
      for (let n = 0; n <= VERIFIED_TOKENS_TREE_SHARE; n++) {
        const p = await t.persona(`eve${n}`, [{ ops: ["system.health"], targets: ["kernel://"] }]);
        trees.push({ token: p.token, c: await t.connect(p.identity, [p.token], { maxAttempts: 1 }) });
      }
      const c = trees[0]?.c as KernelClient;
      const enforcer = (t.k as unknown as { services: { enforcer: CapEnforcer } }).services.enforcer;
      const bound = CACHE_ENTRIES.verifiedTokenBytes;
      let sent = 0;
      for (let i = 0; sent < bound * 1.5; i++) {
        const eve = trees[i % trees.length] as { token: Uint8Array; c: KernelClient };
        const copy = freshCopy(eve.token, i);
        assert.ok(copy.length > 6000 && copy.length <= 8192, `${copy.length} bytes`);
        now += 1000;
        assert.equal((await eve.c.call("system.health", "kernel://", {}, { caps: [copy] })).status, "SUCCESS");
        sent += copy.length;
      }
      const cache = enforcer.verifiedCache;
      assert.ok(cache.bytes <= bound, `the cache holds ${cache.bytes} bytes of tokens (bound ${bound})`);
      assert.ok(cache.entries <= Math.ceil(bound / 6000), `${cache.entries} entries`);
      // Still a cache: what was verified last is there.
      assert.ok(cache.bytes > bound / 2, `${cache.bytes} bytes kept`);
      assert.equal((await c.system.health()).status, "ok");
    });
  });
});
