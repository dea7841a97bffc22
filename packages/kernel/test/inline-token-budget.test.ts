import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { attenuate, decodeToken, encodeToken } from "@kpip/protocol";
import { klass, withKernel } from "./harness.js";
import { RawPeer } from "./wire.js";

// A persona attenuates its own token offline without end, so every request can carry new inline
// tokens of up to maxTokenBytes, and every session it opens sixteen at ATTEST, each a full
// verification (decode, chain, grant) before any `rate` is known — refused or not. Bound tokens
// were bounded per session and inline ones per request, neither over time.

/** A copy of `token` ~7 KB long, distinct for each `i`, that still allows system.health on kernel://. */
function freshCopy(token: Uint8Array, i: number): Uint8Array {
  const v = ["kernel://", ...Array.from({ length: 60 }, (_, j) => `topic://${"x".repeat(100)}-${i}-${j}`)];
  return encodeToken(attenuate(decodeToken(token), { t: "targets", v }));
}

describe("bounded after authentication: new tokens a persona sends", () => {
  it("new tokens, inline or at ATTEST, are verified within a byte budget per persona tree; seen ones, bound handles and other trees are not held back", async () => {
    // A kernel clock that stands still: the budget is its burst, never refilled.
    const now = Date.now();
    await withKernel({ clock: () => now }, async (t) => {
      const right = { ops: ["system.health"], targets: ["kernel://"] };
      const ivy = await t.persona("ivy", [right]);
      const c = await t.connect(ivy.identity, [ivy.token], { maxAttempts: 1 });
      const budget = 5 * 16 * 8192;
      let verified = 0;
      let refused: unknown;
      const sent: Uint8Array[] = [];
      for (let i = 0; i < 200 && refused === undefined; i++) {
        const copy = freshCopy(ivy.token, i);
        assert.ok(copy.length > 6000 && copy.length <= 8192, `${copy.length} bytes`);
        try {
          await c.call("system.health", "kernel://", {}, { caps: [copy] });
          verified += copy.length;
          sent.push(copy);
        } catch (e) {
          refused = e;
        }
      }
      assert.ok(klass("CAPABILITY", "tokens not seen before")(refused), String(refused));
      assert.ok(verified <= budget && verified > budget - 16_384, `${verified} bytes verified`);
      // A token verified before is not verified again, and costs nothing; a bound handle neither.
      assert.equal((await c.call("system.health", "kernel://", {}, { caps: [sent[0] as Uint8Array] })).status, "SUCCESS");
      assert.equal((await c.system.health()).status, "ok");
      // Sessions opened with new tokens draw on the same budget: refused at ATTEST, the session kept.
      const raw = await RawPeer.connect(t.k.socketPath);
      const welcome = await raw.handshake(ivy.identity, [freshCopy(ivy.token, 1000), ivy.token]);
      assert.equal(welcome.body.refused?.[0]?.code, "TOO_MANY_NEW_TOKENS");
      assert.equal(welcome.body.handles?.[0], 0);
      assert.notEqual(welcome.body.handles?.[1], 0);
      raw.close();
      // Another persona tree has a budget of its own.
      const joe = await t.persona("joe", [right]);
      const j = await t.connect(joe.identity, [joe.token], { maxAttempts: 1 });
      assert.equal((await j.call("system.health", "kernel://", {}, { caps: [freshCopy(joe.token, 0)] })).status, "SUCCESS");
      const joeRaw = await RawPeer.connect(t.k.socketPath);
      assert.notEqual((await joeRaw.handshake(joe.identity, [freshCopy(joe.token, 1)])).body.handles?.[0], 0);
      joeRaw.close();
    });
  });
});
