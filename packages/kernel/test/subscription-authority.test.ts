import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KEvent } from "@kpip/protocol";
import { until, withKernel } from "./harness.js";

const RIGHTS = [{ ops: ["event.subscribe"], targets: ["topic://auth/**"] }];

describe("an event subscription lives as long as the capability that authorized it", () => {
  it("event.unsubscribe ends only a subscription made on its target: a grant over one topic ends neither another token's subscription nor a watch", async () => {
    await withKernel({}, async (t) => {
      const admin = await t.admin();
      // It may unsubscribe on topic://auth/mine only (a session's subscriptions may come from several tokens, or several MCP hosts).
      const p = await t.persona("sharer", [
        { ops: ["event.subscribe"], targets: ["topic://auth/**"] },
        { ops: ["storage.read"], targets: ["obj://ws1/**"] },
        { ops: ["event.unsubscribe"], targets: ["topic://auth/mine"] },
      ]);
      const c = await t.connect(p.identity, [p.token]);
      const sub = (await c.call("event.subscribe", "topic://auth/secret/**")).payload as { subscription: number };
      const watch = (await c.call("storage.watch", "obj://ws1/**")).payload as { subscription: number };
      for (const id of [sub.subscription, watch.subscription]) {
        const r = await c.call("event.unsubscribe", "topic://auth/mine", { subscription: id }).catch((e) => e);
        assert.equal((r as { errorClass?: string }).errorClass, "SEMANTIC", String(r));
      }
      assert.equal((await admin.events.emit("topic://auth/secret/x", 1)).subscribers, 1, "the subscription goes on");
      assert.equal(t.k.events.subscriptionCount(), 2, "and so does the watch");
    });
  });

  it("ends at the revocation: a last EVENT says why, and nothing emitted afterwards reaches the subscriber", async () => {
    await withKernel({}, async (t) => {
      const admin = await t.admin();
      const p = await t.persona("listener", RIGHTS);
      const c = await t.connect(p.identity, [p.token]);
      const seen: KEvent[] = [];
      c.on("event", (e: KEvent) => seen.push(e));
      const sub = await c.subscribe("topic://auth/**");
      const id = sub.remoteId;
      const ended = (async () => {
        const got: unknown[] = [];
        for await (const e of sub) got.push(e.data);
        return got;
      })();
      assert.equal((await admin.events.emit("topic://auth/a", 1)).subscribers, 1);
      await until(() => seen.length >= 1, 30_000, "the first event");
      await admin.tokens.revoke(p.id);
      // Ended by the revocation itself, before any other event: the client's attempt to
      // subscribe again with the revoked token is refused, so its iteration ends.
      assert.deepEqual(await ended, [1]);
      const last = seen.find((e) => e.ended !== undefined) as KEvent;
      assert.equal(last.subscription, id, "on the subscription itself");
      assert.equal(last.ended, `the capability ${p.id} that authorized this subscription was revoked`);
      assert.equal(last.data, undefined);
      assert.equal((await admin.events.emit("topic://auth/a", 2)).subscribers, 0, "no subscriber left");
      assert.equal(t.k.events.subscriptionCount(), 0);
    });
  });

  it("a revocation visits only the subscriptions its tokens authorized: revoking another's token checks none of N, revoking theirs ends all N", async () => {
    await withKernel({}, async (t) => {
      const admin = await t.admin();
      const rights = [...RIGHTS, { ops: ["storage.read"], targets: ["obj://ws1/**"] }];
      const p = await t.persona("many-listener", rights);
      const q = await t.persona("churner", RIGHTS);
      const c = await t.connect(p.identity, [p.token]);
      const seen: KEvent[] = [];
      c.on("event", (e: KEvent) => seen.push(e));
      const N = 100;
      for (let i = 0; i < N - 1; i++) await c.call("event.subscribe", `topic://auth/n${i}`);
      await c.call("storage.watch", "obj://ws1/**");
      assert.equal(t.k.events.subscriptionCount(), N);
      const before = t.k.events.revocationVisits;
      // Another persona's token, revoked (what a persona minting and revoking in a loop does): none of the N is visited.
      await admin.tokens.revoke(q.id);
      assert.equal(t.k.events.revocationVisits - before, 0, "no subscription was checked");
      assert.equal(t.k.events.subscriptionCount(), N, "and none ended");
      // The token that authorized them: every one is visited and ends, with its last EVENT.
      await admin.tokens.revoke(p.id);
      assert.equal(t.k.events.revocationVisits - before, N);
      assert.equal(t.k.events.subscriptionCount(), 0);
      await until(() => seen.filter((e) => e.ended !== undefined).length === N, 30_000, "every subscription's last event");
      for (const e of seen.filter((x) => x.ended !== undefined))
        assert.match(
          e.ended as string,
          new RegExp(`^the capability ${p.id} that authorized this (subscription|watch) was revoked$`),
        );
    });
  });

  it("ends when the capability expires, at its next event, which it is not told", async () => {
    let skew = 0;
    await withKernel({ clock: () => Date.now() + skew }, async (t) => {
      const admin = await t.admin();
      const p = await t.persona("expiring-listener", RIGHTS, { ttlMs: 60_000 });
      const c = await t.connect(p.identity, [p.token], { refreshMarginMs: 0 });
      const seen: KEvent[] = [];
      c.on("event", (e: KEvent) => seen.push(e));
      await c.subscribe("topic://auth/**");
      await admin.events.emit("topic://auth/x", "before");
      await until(() => seen.length >= 1, 30_000, "the first event");
      skew = 120_000;
      assert.equal((await admin.events.emit("topic://auth/x", "after")).subscribers, 0);
      const last = await until(() => seen[1], 30_000, "the subscription's last event");
      assert.equal(last.ended, `the capability ${p.id} that authorized this subscription expired`);
      assert.deepEqual(
        seen.map((e) => e.data),
        ["before", undefined],
        "the event after the expiry was not delivered",
      );
    });
  });

  it("ends when the capability expires even if no event comes: the kernel's next tick ends it and frees its slot", async () => {
    let skew = 0;
    await withKernel({ clock: () => Date.now() + skew }, async (t) => {
      const p = await t.persona("quiet-listener", RIGHTS, { ttlMs: 60_000 });
      const c = await t.connect(p.identity, [p.token], { refreshMarginMs: 0 });
      const seen: KEvent[] = [];
      c.on("event", (e: KEvent) => seen.push(e));
      await c.subscribe("topic://auth/quiet");
      assert.equal(t.k.events.subscriptionCount(), 1);
      skew = 120_000;
      const last = await until(() => seen.find((e) => e.ended !== undefined), 30_000, "the subscription's last event");
      assert.equal(last.ended, `the capability ${p.id} that authorized this subscription expired`);
      assert.equal(t.k.events.subscriptionCount(), 0, "its slot is free");
    });
  });

  it("an emitter cannot end another's subscription by what it emits", async () => {
    await withKernel({}, async (t) => {
      const admin = await t.admin();
      const p = await t.persona("steady-listener", RIGHTS);
      const c = await t.connect(p.identity, [p.token]);
      const sub = await c.subscribe("topic://auth/**");
      const it = sub[Symbol.asyncIterator]();
      await admin.events.emit("topic://auth/x", { kind: "ended", reason: "forged" });
      await admin.events.emit("topic://auth/x", "still here");
      assert.deepEqual((await it.next()).value?.data, { kind: "ended", reason: "forged" });
      assert.equal((await it.next()).value?.data, "still here");
      assert.equal(t.k.events.subscriptionCount(), 1);
    });
  });
});
