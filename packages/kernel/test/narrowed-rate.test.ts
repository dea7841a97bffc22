import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { attenuate, decodeToken, encodeToken } from "@kpip/protocol";
import { klass, withKernel } from "./harness.js";

// A token's `rate` is counted per family (PROTOCOL §13.1): a refreshed, minted or narrowed copy
// shares the bucket of the token it came from. A copy narrowed to a lower rate (a `limits`
// caveat, or a child minted with a lower `rate`) drew on that shared bucket capped at its own
// rate — so whenever the wider token's holder used it, the bucket refilled at the wider rate
// and the narrowed copy took one request per refill: far past the rate it was narrowed to.

describe("a rate narrowed offline", () => {
  it("a copy narrowed to a lower rate keeps to it while the token it came from is used at its own rate", async () => {
    // The kernel's clock moves only when the test moves it.
    let now = Date.now();
    await withKernel({ clock: () => now }, async (t) => {
      const alice = await t.persona("alice", [{ ops: ["system.health"], targets: ["kernel://"] }], { limits: { rate: 100 } });
      const c = await t.connect(alice.identity, [alice.token], { maxAttempts: 1 });
      // The copy alice hands a less trusted part: one request a second.
      const slow = encodeToken(attenuate(decodeToken(alice.token), { t: "limits", v: { rate: 1 } }));
      let copyServed = 0;
      let refused: unknown;
      // Two seconds of the kernel's clock: alice at 40 requests a second, the copy as often as it may.
      for (let i = 0; i < 80; i++) {
        now += 25;
        assert.equal((await c.system.health()).status, "ok");
        try {
          await c.call("system.health", "kernel://", {}, { caps: [slow] });
          copyServed++;
        } catch (e) {
          refused ??= e;
        }
      }
      // Its burst (one) and one a second for two seconds, at most.
      assert.ok(copyServed <= 3, `the copy narrowed to 1 request a second was served ${copyServed} times in 2 s`);
      assert.ok(klass("RESOURCE", "rate exceeded")(refused), String(refused));
      // Copies narrowed to different rates still share the family's bucket: together, at one
      // instant, never more than the family's own rate (100), not the sum of theirs (206).
      let together = 0;
      for (const rate of [50, 51, 52, 53]) {
        const copy = encodeToken(attenuate(decodeToken(alice.token), { t: "limits", v: { rate } }));
        for (let i = 0; i < 60; i++) {
          const ok = await c.call("system.health", "kernel://", {}, { caps: [copy] }).then(
            () => true,
            () => false,
          );
          if (ok) together++;
        }
      }
      assert.ok(together <= 100, `copies narrowed to 50–53 a second were served ${together} times at one instant`);
    });
  });
});
