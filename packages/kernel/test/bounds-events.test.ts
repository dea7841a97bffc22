import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { adminIdentity, klass, removeHome, startKernel, until, withKernel } from "./harness.js";
import { RawPeer } from "./wire.js";

const MiB = 1024 * 1024;

describe("bounded after authentication: events", () => {
  it("subscribers that stop reading hold at most their byte bounds; the next delivered event carries the gap", async () => {
    const t = await startKernel({ eventQueueBytes: 2 * MiB, eventSessionBytes: 3 * MiB, eventKernelBytes: 4 * MiB });
    const peers: RawPeer[] = [];
    try {
      const token = Buffer.from(t.adminToken, "base64url");
      // Three sessions that stop reading: one with two subscriptions (the session bound), two more (the kernel bound).
      for (let i = 0; i < 3; i++) {
        const p = await RawPeer.connect(t.k.socketPath);
        peers.push(p);
        await p.handshake(adminIdentity(t.k), [token]);
        p.request(1, { op: "event.subscribe", target: "topic://flood/**", args: {} }, { persona: "admin" });
        await p.response(1);
        if (i === 0) {
          p.request(2, { op: "event.subscribe", target: "topic://flood/*", args: {} }, { persona: "admin" });
          await p.response(2);
        }
        p.sock.pause();
      }
      const emitter = await t.admin();
      const payload = new Uint8Array(512 * 1024).fill(7);
      let maxQueued = 0;
      for (let i = 0; i < 40; i++) {
        await emitter.events.emit("topic://flood/x", { payload });
        maxQueued = Math.max(maxQueued, t.k.events.queuedBytes);
      }
      assert.ok(maxQueued <= 4 * MiB, `${maxQueued} bytes queued, kernel bound 4 MiB`);
      assert.ok(t.k.events.dropped > 0, "events past the bounds were dropped");
      // The first peer reads again: what waited arrives, and a delivered event says how many it missed.
      const first = peers[0] as RawPeer;
      first.sock.resume();
      await emitter.events.emit("topic://flood/x", { payload });
      const ev = await until(
        () => first.frames.find((f) => f.msg.type === "EVENT" && ((f.msg.body as { gap?: number }).gap ?? 0) > 0),
        20_000,
        "an EVENT with a gap",
      );
      assert.ok((ev.msg.body as { gap: number }).gap > 0);
      assert.equal((await emitter.system.health()).status, "ok");
    } finally {
      for (const p of peers) p.close();
      await t.stop();
      removeHome(t.home);
    }
  });

  it("subscriptions are bounded per session and per persona (RESOURCE); an emit reaches only the matching ones", async () => {
    await withKernel({ maxSubscriptionsPerSession: 30, maxSubscriptionsPerPersona: 50 }, async (t) => {
      const p = await t.persona("subs", [{ ops: ["event.*"], targets: ["topic://subs/**"] }]);
      const a = await t.connect(p.identity, [p.token], { maxAttempts: 1 });
      const b = await t.connect(p.identity, [p.token], { maxAttempts: 1 });
      const subscribe = (c: typeof a, topic: string) => c.call("event.subscribe", topic);
      const firstId = ((await subscribe(a, "topic://subs/a0")).payload as { subscription: number }).subscription;
      for (let i = 1; i < 30; i++) await subscribe(a, `topic://subs/a${i}`);
      await assert.rejects(subscribe(a, "topic://subs/one-more"), klass("RESOURCE", "maxSubscriptionsPerSession"));
      for (let i = 0; i < 20; i++) await subscribe(b, `topic://subs/b${i}`);
      await assert.rejects(subscribe(b, "topic://subs/one-more"), klass("RESOURCE", "maxSubscriptionsPerPersona"));
      // Unsubscribing frees a slot of the session and of the persona.
      await a.call("event.unsubscribe", "topic://subs/a0", { subscription: firstId });
      await subscribe(a, "topic://subs/again");
      await assert.rejects(subscribe(a, "topic://subs/one-more"), klass("RESOURCE"));
      // Only the subscriptions whose pattern matches count as receivers.
      const e = await b.events.emit("topic://subs/a7");
      assert.equal(e.subscribers, 1);
      const none = await b.events.emit("topic://subs/nobody");
      assert.equal(none.subscribers, 0);
    });
  });
});
