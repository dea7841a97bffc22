import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decodeToken } from "@kpip/protocol";
import { klass, withKernel } from "./harness.js";

/**
 * token.inspect's status and token.refresh's maximum-lifetime check read the kernel's clock, the
 * one the enforcer judges expiry by — not the host's: under a kernel clock (a test's, a kernel
 * whose clock option is set) the two never disagree.
 */
describe("token status by the kernel clock", () => {
  it("token.inspect's status and token.refresh agree with enforcement under a kernel clock that is not the host's", async () => {
    // Ten minutes behind the host: a token minted now has expired by the host's clock, not the kernel's.
    let offset = -600_000;
    await withKernel({ clock: () => Date.now() + offset }, async (t) => {
      const admin = await t.admin();
      const ws = [{ ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] }];
      const gus = await t.persona("gus", ws, { ttlMs: 60_000 });
      const c = await t.connect(gus.identity, [gus.token]);
      await c.storage.write("obj://ws1/g", "x");
      assert.equal((await admin.tokens.inspect(gus.id, gus.token)).status, "valid", "usable, so valid");

      // Refreshing within the maximum lifetime by the kernel's clock is allowed.
      const m = await admin.tokens.mint("gus", { rights: ws, ttlMs: 10_000, maxLifetimeMs: 60_000 });
      const r = await c.call("token.refresh", `token://${m.id}`, { token: m.token }, { caps: [m.token] });
      const fresh = (r.payload as { token: Uint8Array }).token;
      assert.ok(decodeToken(fresh).claims.exp <= decodeToken(m.token).claims.maxExp);

      // Past its expiry by the kernel's clock: refused, and inspect says so.
      offset += 61_000;
      await assert.rejects(c.storage.write("obj://ws1/g", "x"), klass("CAPABILITY"));
      assert.equal((await admin.tokens.inspect(gus.id, gus.token)).status, "expired");
    });
  });
});
