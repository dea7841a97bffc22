import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { generateIdentity } from "@kpip/protocol";
import { addPersonaKey, until, withKernel } from "./harness.js";
import { allAudit } from "./wire.js";

const HEALTH = [{ ops: ["system.health"], targets: ["kernel://"] }];

describe("sessions per persona (maxSessionsPerPersona)", () => {
  it("one persona with no token cannot take every session: past maxSessionsPerPersona (its sub-personas counted) TOO_MANY_SESSIONS; others and the admin get in", async () => {
    await withKernel({ maxSessionsPerPersona: 3, maxSessions: 16, adminReserve: 2 }, async (t) => {
      const m = await t.persona("mallory", HEALTH);
      const b = await t.persona("bob", HEALTH);
      // A sub-persona of mallory's, registered with a key of its own: counted in mallory's tree.
      const sub = generateIdentity("mallory/worker-1");
      addPersonaKey(t, "mallory/worker-1", sub.publicKey);
      const hogs: KernelClient[] = [];
      hogs.push(await t.connect(m.identity, []), await t.connect(m.identity, []), await t.connect(sub, []));
      let refused = 0;
      for (const id of [m.identity, m.identity, sub]) {
        await assert.rejects(t.connect(id, []), (e: Error & { errorClass?: string; code?: string }) => {
          assert.match(e.message, /maxSessionsPerPersona 3|TOO_MANY_SESSIONS/);
          refused++;
          return true;
        });
      }
      assert.equal(refused, 3);
      // Each refusal is on the record, naming the persona (it attested: verified).
      const recs = await until(
        () => {
          const r = allAudit(t.k).filter(
            (x) => x.op === "session.handshake" && (x.message ?? "").startsWith("TOO_MANY_SESSIONS:"),
          );
          return r.length === 3 ? r : undefined;
        },
        10_000,
        "three TOO_MANY_SESSIONS records",
      );
      assert.deepEqual(recs.map((r) => [r.persona, r.errorClass]).sort(), [
        ["mallory", "RESOURCE"],
        ["mallory", "RESOURCE"],
        ["mallory/worker-1", "RESOURCE"],
      ]);
      // Another persona is served, and the admin (not bound by the per-persona limit).
      const bob = await t.connect(b.identity, [b.token]);
      assert.equal((await bob.system.health()).status, "ok");
      const admins: KernelClient[] = [];
      for (let i = 0; i < 4; i++) admins.push(await t.admin());
      // A slot of mallory's freed is usable again.
      await hogs[0]?.close();
      await until(async () => t.connect(m.identity, []).catch(() => undefined), 10_000, "mallory's freed slot");
    });
  });
});
