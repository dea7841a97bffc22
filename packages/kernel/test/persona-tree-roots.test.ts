// The kernel-wide per-persona bounds count a persona's tree, whose top is found from the registry
// (who registered whom), not from the first segment of its id: personas the admin registered side
// by side under a common prefix are separate trees; what a persona registers stays in its tree.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { generateIdentity, type Right } from "@kpip/protocol";
import { type TestKernel, withKernel } from "./harness.js";

const outcome = (p: Promise<unknown>) =>
  p.then(
    () => "ok",
    (e: { errorClass?: string; code?: string }) => e.errorClass ?? e.code ?? String(e),
  );

const HEALTH: Right = { ops: ["system.health"], targets: ["kernel://"] };

/** A session of `identity`, or the refusal's class. */
const session = (t: TestKernel, identity: Parameters<TestKernel["connect"]>[0], tokens: Uint8Array[] = []) =>
  t.connect(identity, tokens, { maxAttempts: 1, reconnect: false }).then(
    (c) => c,
    (e: { errorClass?: string }) => e.errorClass ?? String(e),
  );

describe("persona trees found from the registry", () => {
  it("team/alice and team/bob, registered by the admin side by side, are two trees: team/alice at her bounds does not refuse team/bob", async () => {
    const bounds = { maxSessionsPerPersona: 2, maxUploadsPerPersona: 1, maxSubscriptionsPerPersona: 1 };
    await withKernel(bounds, async (t) => {
      const rights = (me: string): Right[] => [
        HEALTH,
        { ops: ["storage.write"], targets: ["obj://ws1/**"] },
        { ops: ["event.subscribe"], targets: ["topic://t/**"] },
        { ops: ["persona.register"], targets: [`persona://${me}/**`] },
      ];
      const a = await t.persona("team/alice", rights("team/alice"));
      const b = await t.persona("team/bob", rights("team/bob"));
      const ca = await t.connect(a.identity, [a.token]);
      assert.equal(await outcome(ca.call("storage.upload.begin", "obj://ws1/a1", { size: 10 })), "ok");
      assert.equal(await outcome(ca.call("storage.upload.begin", "obj://ws1/a2", { size: 10 })), "RESOURCE");
      assert.equal(await outcome(ca.subscribe("topic://t/a1")), "ok");
      assert.equal(await outcome(ca.subscribe("topic://t/a2")), "RESOURCE");
      const second = await session(t, a.identity);
      assert.notEqual(typeof second, "string", "alice's second session");
      assert.equal(await session(t, a.identity), "RESOURCE", "alice's third session: past maxSessionsPerPersona");
      // A sub-persona alice registers is in her tree: refused like her.
      const helper = generateIdentity("team/alice/helper");
      await ca.personas.register("team/alice/helper", helper.publicKey);
      assert.equal(await session(t, helper), "RESOURCE", "alice's sub-persona counts in her tree");
      // Bob shares only the prefix "team": his bounds are his own.
      const cb = await session(t, b.identity, [b.token]);
      assert.notEqual(typeof cb, "string", `bob's session: ${String(cb)}`);
      const bob = cb as KernelClient;
      assert.equal(await outcome(bob.call("storage.upload.begin", "obj://ws1/b1", { size: 10 })), "ok");
      assert.equal(await outcome(bob.subscribe("topic://t/b1")), "ok");
      assert.notEqual(typeof (await session(t, b.identity)), "string", "bob's second session");
    });
  });

  it("persona.register outside the registrar's tree is PERMISSION, whatever its grant; inside it, registered", async () => {
    await withKernel({}, async (t) => {
      const a = await t.persona("alice", [{ ops: ["persona.register"], targets: ["persona://**"] }]);
      const c = await t.connect(a.identity, [a.token]);
      const key = generateIdentity("x").publicKey;
      // A persona of its own making outside its tree would be a tree with bounds of its own.
      assert.equal(await outcome(c.personas.register("carol", key)), "PERMISSION");
      assert.equal(await outcome(c.personas.register("team/carol", key)), "PERMISSION");
      assert.equal(await outcome(c.personas.register("alice/helper", key)), "ok");
      // The admin registers anywhere.
      const admin = await t.admin();
      assert.equal(await outcome(admin.personas.register("carol", key)), "ok");
    });
  });

  it("a persona under the admin (its sub-persona, or an agent) registers only under the admin's tree: the keys it holds start no trees whose sessions take every slot but the admin's", async () => {
    await withKernel({ maxSessions: 8, adminReserve: 1, maxSessionsPerPersona: 3 }, async (t) => {
      const ops = await t.persona("admin/ops", [{ ops: ["persona.register"], targets: ["persona://**"] }]);
      const c = await t.connect(ops.identity, [ops.token]);
      // Each persona it registered outside would be a tree of its own, its key in ops's hands:
      // ops alone could open maxSessionsPerPersona sessions as each, and every other persona be refused.
      const carol = generateIdentity("carol");
      assert.equal(await outcome(c.personas.register("carol", carol.publicKey)), "PERMISSION");
      assert.equal(await outcome(c.personas.register("team/carol", carol.publicKey)), "PERMISSION");
      // Under the admin's tree, registered — and counted there, within one tree's bound of sessions.
      const helper = generateIdentity("admin/helper");
      assert.equal(await outcome(c.personas.register("admin/helper", helper.publicKey)), "ok");
      const opened = [await session(t, helper), await session(t, helper)];
      assert.deepEqual(
        opened.map((o) => (typeof o === "string" ? o : "ok")),
        ["ok", "RESOURCE"],
        "the admin's session (it minted ops's token), admin/ops's and one of admin/helper's fill the admin tree's 3",
      );
      // bob, a tree of his own, still gets in.
      const bob = await t.persona("bob", [HEALTH]);
      assert.equal(typeof (await session(t, bob.identity, [bob.token])), "object");
      // The admin persona itself still registers anywhere.
      const admin = await t.admin();
      assert.equal(await outcome(admin.personas.register("carol", carol.publicKey)), "ok");
    });
  });

  it("a persona under the admin (its sub-persona, or an agent) removes and queries only personas of the admin's tree; the admin persona itself, any", async () => {
    await withKernel({}, async (t) => {
      const broad: Right = { ops: ["persona.register", "persona.remove", "resource.query"], targets: ["persona://**"] };
      const ops = await t.persona("admin/ops", [broad]);
      const c = await t.connect(ops.identity, [ops.token]);
      await t.persona("bob", [HEALTH]);
      await t.persona("bob/helper", [HEALTH]);
      // A less trusted admin agent or sub-persona with a broad grant: another tree is not its to remove or look into.
      assert.equal(await outcome(c.personas.remove("bob")), "PERMISSION");
      assert.equal(await outcome(c.personas.remove("bob/helper")), "PERMISSION");
      assert.equal(await outcome(c.resources.query("persona://bob")), "PERMISSION");
      // Within the admin's tree, as registration is.
      const helper = generateIdentity("admin/helper");
      assert.equal(await outcome(c.personas.register("admin/helper", helper.publicKey)), "ok");
      assert.equal(await outcome(c.resources.query("persona://admin/helper")), "ok");
      assert.equal(await outcome(c.personas.remove("admin/helper")), "ok");
      // The admin persona itself acts on any persona.
      const admin = await t.admin();
      assert.equal(await outcome(admin.resources.query("persona://bob")), "ok");
      assert.equal(await outcome(admin.personas.remove("bob")), "ok");
    });
  });

  it("token.mint for a persona outside the minting token's subject's tree is PERMISSION; inside it, and by the admin, minted", async () => {
    await withKernel({}, async (t) => {
      const ws1: Right = { ops: ["storage.write"], targets: ["obj://ws1/**"] };
      const a = await t.persona("alice", [ws1, { ops: ["token.mint"], targets: ["persona://**"] }], {
        limits: { "storage.bytes": 1000 },
      });
      await t.persona("bob", [HEALTH]);
      const c = await t.connect(a.identity, [a.token]);
      const spec = { rights: [ws1], ttlMs: 60_000, limits: { "storage.bytes": 1000 } };
      // Bob's tree is not alice's: her 1000 bytes would not bound what bob does with it.
      assert.equal(await outcome(c.tokens.mint("bob", spec)), "PERMISSION");
      assert.equal(await outcome(c.tokens.mint("alice/helper", spec)), "ok");
      assert.equal(await outcome(c.tokens.mint("alice", spec)), "ok");
      const admin = await t.admin();
      assert.equal(await outcome(admin.tokens.mint("bob", spec)), "ok");
    });
  });

  it("the trees follow the registry: once the admin registers team above team/alice and team/bob they are one tree, and sessions opened before are released where they were counted", async () => {
    await withKernel({ maxSessionsPerPersona: 2 }, async (t) => {
      const a = await t.persona("team/alice", [HEALTH]);
      const b = await t.persona("team/bob", [HEALTH]);
      const oldA = (await session(t, a.identity)) as KernelClient;
      const oldB = (await session(t, b.identity)) as KernelClient;
      assert.notEqual(typeof oldA, "string");
      assert.notEqual(typeof oldB, "string");
      const admin = await t.admin();
      await admin.personas.register("team", generateIdentity("team").publicKey);
      // One tree now, "team": its count starts with the sessions opened from here on.
      const newA = (await session(t, a.identity)) as KernelClient;
      assert.notEqual(typeof newA, "string", "the first session counted in team's tree");
      assert.notEqual(typeof (await session(t, b.identity)), "string", "the second");
      assert.equal(await session(t, a.identity), "RESOURCE", "team's tree is at 2");
      // The session counted in team/alice's tree is released there: team's count stays 2.
      await oldA.close();
      await oldB.close();
      assert.equal(await session(t, b.identity), "RESOURCE", "team's tree is still at 2");
      await newA.close();
      assert.notEqual(typeof (await session(t, b.identity)), "string", "a slot of team's freed");
    });
  });
});
