import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { type KernelClient, KpipError, TokenRefreshError } from "../src/index.js";
import { KernelProcess, until } from "./harness.js";

/** An admin token of 1.5 s (refreshable for a minute) and a client holding it that refreshes 0.7 s before expiry. */
async function shortLived(k: KernelProcess, admin: KernelClient) {
  const m = await admin.tokens.mint("admin", { rights: [{ ops: ["**"], targets: ["**"] }], ttlMs: 1500, maxLifetimeMs: 60_000 });
  const c = await k.connect({ tokens: [m.token], refreshMarginMs: 700 });
  return { m, c };
}

describe("token holding and refresh", () => {
  const k = new KernelProcess();
  after(async () => {
    await k.dispose();
  });

  it("refreshes a held token before it expires and keeps working past the original expiry", async () => {
    await k.start();
    const admin = await k.connect();
    const { m, c } = await shortLived(k, admin);
    const refreshed = new Promise((r) => c.once("tokenRefreshed", r));
    await refreshed;
    await until(() => Date.now() > m.exp + 100, 30_000, "original expiry");
    assert.equal((await c.system.health()).status, "ok");
    await c.close();
    await admin.close();
  });

  it("surfaces a failed refresh as an event and on the next call", async () => {
    const admin = await k.connect();
    const { m, c } = await shortLived(k, admin);
    await admin.tokens.revoke(m.id);
    const failed = await new Promise<Error>((r) => c.once("tokenRefreshFailed", r));
    assert.ok(failed instanceof TokenRefreshError);
    await assert.rejects(c.system.health(), (e: unknown) => e instanceof TokenRefreshError);
    await assert.rejects(c.system.health(), (e: unknown) => e instanceof KpipError && e.errorClass === "CAPABILITY");
    await c.close();
    await admin.close();
  });

  it("reports tokens the kernel refused to bind", async () => {
    const admin = await k.connect();
    const m = await admin.tokens.mint("admin", { rights: [{ ops: ["**"], targets: ["**"] }], ttlMs: 60_000 });
    await admin.tokens.revoke(m.id);
    const c = await k.connect({ tokens: [m.token] });
    assert.deepEqual(
      c.refusedTokens.map((r) => r.code),
      ["REVOKED"],
    );
    await c.close();
    await admin.close();
  });
});
