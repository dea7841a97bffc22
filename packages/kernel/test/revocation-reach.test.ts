import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { decodeToken, generateIdentity } from "@kpip/protocol";
import { addPersonaKey, klass, removeHome, startKernel, type TestKernel } from "./harness.js";

/** The audit records of `op` (outcomes of requests and the kernel's own acts), oldest first, their detail parsed. */
const records = (t: TestKernel, op: string) =>
  t.k.inspect
    .queryAudit({ op, limit: 1000 })
    .map((r) => ({ ...r, d: JSON.parse(r.detail ?? "null") as Record<string, unknown> }));

const idOf = (tok: Uint8Array) => decodeToken(tok).claims.id;

/** A token's status as token.inspect answers it to the admin. */
async function status(admin: KernelClient, tok: Uint8Array): Promise<string> {
  const r = await admin.call("token.inspect", `token://${idOf(tok)}`, { token: tok });
  return (r.payload as { status: string }).status;
}

describe("a revocation reaches the whole refresh family", () => {
  it("revoking a refreshed copy ends the older copy, its refreshes and what was minted from any copy, across a restart", async () => {
    let t = await startKernel();
    const home = t.home;
    try {
      const admin = await t.admin();
      const carol = generateIdentity("carol");
      addPersonaKey(t, "carol", carol.publicKey);
      const rights = [
        { ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] },
        { ops: ["token.mint"], targets: ["persona://carol/**"] },
      ];
      const T = (await admin.tokens.mint("carol", { rights, ttlMs: 600_000, maxLifetimeMs: 3_600_000 })).token;
      const c = await t.connect(carol, []);
      const refresh = async (tok: Uint8Array) =>
        (
          (await c.call("token.refresh", `token://${idOf(tok)}`, { token: tok }, { caps: [tok] })).payload as {
            token: Uint8Array;
          }
        ).token;
      // Minted from the first copy before it was refreshed, and from the refreshed copy after.
      const fromT = (await c.tokens.mint("carol/helper", { rights: rights.slice(0, 1), ttlMs: 60_000 }, { caps: [T] })).token;
      const T1 = await refresh(T);
      const fromT1 = (await c.tokens.mint("carol/helper", { rights: rights.slice(0, 1), ttlMs: 60_000 }, { caps: [T1] })).token;
      await c.storage.write("obj://ws1/x", "1", { caps: [T1] });
      // A copy of an unrelated token of carol's: untouched.
      const other = (await admin.tokens.mint("carol", { rights: rights.slice(0, 1), ttlMs: 600_000 })).token;

      await admin.call("token.revoke", `token://${idOf(T1)}`);

      // The older copy is as revoked as the one named: no use, no refresh into a fresh copy.
      await assert.rejects(c.storage.write("obj://ws1/x", "2", { caps: [T] }), klass("CAPABILITY"));
      await assert.rejects(refresh(T), klass("CAPABILITY"));
      for (const tok of [T, T1, fromT, fromT1]) assert.equal(await status(admin, tok), "revoked", idOf(tok));
      assert.equal(await status(admin, other), "valid");
      await c.storage.write("obj://ws1/x", "3", { caps: [other] });
      // The revocation's record lists every token it ended, and the family's root revoked with it.
      const rec = records(t, "token.revoke").find((r) => r.phase === "outcome" && r.d.revoked === idOf(T1));
      assert.equal(rec?.d.family, idOf(T));
      assert.deepEqual([...((rec?.d.ended ?? []) as string[])].sort(), [T, T1, fromT, fromT1].map(idOf).sort());

      // Persisted: after a restart the older copy is still refused.
      await t.stop();
      t = await startKernel({}, home);
      const again = await t.connect(carol, []);
      await assert.rejects(again.storage.write("obj://ws1/x", "4", { caps: [T] }), klass("CAPABILITY"));
      await again.storage.write("obj://ws1/x", "5", { caps: [other] });
    } finally {
      await t.stop();
      removeHome(home);
    }
  });
});
