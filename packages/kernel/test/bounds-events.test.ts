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
        p.stall();
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
  it("one large emit to a tree's many sessions that stopped reading: what is written to them stays within the tree's unread bound; others are served, the held event arrives once there is room", async () => {
    // Each session that stopped reading used to be written one whole frame (up to maxBody), counted
    // nowhere: 64 sessions of one tree held 1 GiB after one 16 MiB emit.
    await withKernel({ maxQueuedBytesPerPersona: 8 * MiB }, async (t) => {
      const ev = await t.persona("ev", [{ ops: ["event.*"], targets: ["topic://shared/**"] }]);
      const other = await t.persona("other", [{ ops: ["event.*"], targets: ["topic://shared/**"] }]);
      const stalled: RawPeer[] = [];
      const subscribe = async (p: RawPeer, persona: string) => {
        p.request(1, { op: "event.subscribe", target: "topic://shared/**", args: {} }, { persona });
        assert.equal((await p.response(1)).status, "SUCCESS");
      };
      try {
        for (let i = 0; i < 12; i++) {
          const p = await RawPeer.connect(t.k.socketPath);
          stalled.push(p);
          await p.handshake(ev.identity, [ev.token]);
          await subscribe(p, "ev");
          p.stall();
        }
        // One session of the same tree that reads, and one of another persona's tree.
        const reader = await RawPeer.connect(t.k.socketPath);
        await reader.handshake(ev.identity, [ev.token]);
        await subscribe(reader, "ev");
        const outsider = await RawPeer.connect(t.k.socketPath);
        await outsider.handshake(other.identity, [other.token]);
        await subscribe(outsider, "other");
        const emitter = await t.connect(other.identity, [other.token]);
        const payload = new Uint8Array(3 * MiB).fill(7);
        const r = await emitter.events.emit("topic://shared/x", { payload });
        assert.equal(r.subscribers, 14, "every subscription is reached (held ones wait in the bus)");
        const queued = t.k.bufferedToPeersBytes;
        assert.ok(queued <= 8 * MiB + 4 * MiB, `${queued} bytes queued to peers after one 3 MiB emit (the tree may hold 8 MiB)`);
        const isEvent = (f: { msg: { type: string } }) => f.msg.type === "EVENT";
        await until(() => outsider.frames.find(isEvent), 20_000, "the other tree's subscriber gets the event");
        // The stalled sessions go away: the tree has room again, and the held event reaches the reader.
        for (const p of stalled) p.close();
        await until(
          () => reader.frames.find(isEvent),
          20_000,
          "the reader of the stalled tree gets the event once there is room",
        );
        assert.equal((await (await t.admin()).system.health()).status, "ok");
        reader.close();
        outsider.close();
      } finally {
        for (const p of stalled) p.close();
      }
    });
  });
  it("a large event is not encoded for subscriptions of sessions whose maxBody it cannot fit: they are told of it as a gap, the kernel's thread is not held", async () => {
    // Encoded to be dropped, one 15 MiB emit to 1,024 such subscriptions held the kernel for 18 s.
    await withKernel({}, async (t) => {
      const p = await t.persona("tiny", [{ ops: ["event.*"], targets: ["topic://tiny/**"] }]);
      const small = await t.connect(p.identity, [p.token], { maxBody: 4096 });
      const subs = [];
      for (let i = 0; i < 64; i++) subs.push(await small.events.subscribe("topic://tiny/**"));
      const reader = await t.connect(p.identity, [p.token]);
      const whole = await reader.events.subscribe("topic://tiny/**");
      const payload = new Uint8Array(4 * MiB).fill(7);
      const before = t.k.events.encodedBytes;
      assert.equal((await reader.events.emit("topic://tiny/big", { payload })).subscribers, 65);
      const encoded = t.k.events.encodedBytes - before;
      assert.ok(encoded < 2 * 4 * MiB, `${encoded} bytes of EVENT frames encoded for one 4 MiB event: only the reader's frame`);
      const got = await whole[Symbol.asyncIterator]().next();
      assert.equal((got.value as { topic: string }).topic, "topic://tiny/big");
      // The small sessions' subscriptions hear of the event they missed with the next one.
      await reader.events.emit("topic://tiny/small", { n: 1 });
      const next = await (subs[0] as (typeof subs)[number])[Symbol.asyncIterator]().next();
      const ev = next.value as { topic: string; gap?: number };
      assert.equal(ev.topic, "topic://tiny/small");
      assert.equal(ev.gap, 1);
    });
  });

  it("a persona tree whose sessions stop reading cannot take the kernel's whole event queue from another's: the larger holder gives way, the other is told of no gap", async () => {
    // One tree's stalled sessions filled eventKernelBytes, and every other persona's subscription
    // whose connection was momentarily behind lost each new event to it (a gap it never caused).
    await withKernel({ eventQueueBytes: 2 * MiB, eventSessionBytes: 2 * MiB, eventKernelBytes: 4 * MiB }, async (t) => {
      const eve = await t.persona("eve", [{ ops: ["event.*"], targets: ["topic://eve/**"] }]);
      const bob = await t.persona("bob", [{ ops: ["event.*"], targets: ["topic://bob/**"] }]);
      const subscribe = async (id: { identity: typeof eve.identity; token: Uint8Array }, persona: string, topic: string) => {
        const p = await RawPeer.connect(t.k.socketPath);
        await p.handshake(id.identity, [id.token]);
        p.request(1, { op: "event.subscribe", target: topic, args: {} }, { persona });
        assert.equal((await p.response(1)).status, "SUCCESS");
        p.stall();
        return p;
      };
      const stalled: RawPeer[] = [];
      for (let i = 0; i < 3; i++) stalled.push(await subscribe(eve, "eve", "topic://eve/**"));
      const victim = await subscribe(bob, "bob", "topic://bob/**");
      try {
        const e = await t.connect(eve.identity, [eve.token]);
        const b = await t.connect(bob.identity, [bob.token]);
        const payload = new Uint8Array(512 * 1024).fill(7);
        for (let i = 0; i < 16; i++) await e.events.emit("topic://eve/x", { payload });
        assert.ok(t.k.events.queuedBytes > 4 * MiB - 600 * 1024, `eve's stalled sessions hold ${t.k.events.queuedBytes} bytes`);
        // Bob's reader is behind by one large event (written to it), so the next ones wait in the bus.
        await b.events.emit("topic://bob/big", { payload: new Uint8Array(3 * MiB).fill(1) });
        // Each larger than what eve's tree left of the kernel's bound.
        const more = new Uint8Array(600 * 1024).fill(2);
        for (let i = 0; i < 3; i++) await b.events.emit("topic://bob/more", { i, more });
        assert.ok(t.k.events.queuedBytes <= 4 * MiB, `${t.k.events.queuedBytes} bytes queued, kernel bound 4 MiB`);
        victim.sock.resume();
        const events = () =>
          victim.frames
            .filter((f) => f.msg.type === "EVENT")
            .map((f) => f.msg.body as { topic: string; seq: number; gap?: number });
        await b.events.emit("topic://bob/end");
        await until(() => events().some((ev) => ev.topic === "topic://bob/end"), 20_000, "bob's last event");
        assert.deepEqual(
          events().map((ev) => [ev.topic, ev.seq, ev.gap]),
          [
            ["topic://bob/big", 1, undefined],
            ["topic://bob/more", 2, undefined],
            ["topic://bob/more", 3, undefined],
            ["topic://bob/more", 4, undefined],
            ["topic://bob/end", 5, undefined],
          ],
        );
        // What eve's tree held over the bound was dropped from her own queues, told there as gaps.
        for (const p of stalled) p.sock.resume();
        await e.events.emit("topic://eve/x", { n: 1 });
        await until(
          () => stalled.every((p) => p.frames.some((f) => f.msg.type === "EVENT" && (f.msg.body as { gap?: number }).gap)),
          20_000,
          "eve's sessions told of their gaps",
        );
      } finally {
        for (const p of [...stalled, victim]) p.close();
      }
    });
  });

  it("another persona flooding the shared topics a session subscribes to cannot take the session's event bytes from its other subscriptions: the largest gives way", async () => {
    // The session's bound was first come, first served: two subscriptions on a shared topic filled
    // it, and the session's subscription to a topic only its own persona emits on lost each event.
    await withKernel({ eventQueueBytes: 2 * MiB, eventSessionBytes: 3 * MiB, eventKernelBytes: 64 * MiB }, async (t) => {
      const eve = await t.persona("eve", [{ ops: ["event.emit"], targets: ["topic://shared/**"] }]);
      const bob = await t.persona("bob", [{ ops: ["event.*"], targets: ["topic://shared/**", "topic://bob/**"] }]);
      const p = await RawPeer.connect(t.k.socketPath);
      await p.handshake(bob.identity, [bob.token]);
      const subscribe = async (id: number, target: string) => {
        p.request(id, { op: "event.subscribe", target, args: {} }, { persona: "bob" });
        return ((await p.response(id)).payload as { subscription: number }).subscription;
      };
      await subscribe(1, "topic://shared/**");
      await subscribe(2, "topic://shared/x");
      const own = await subscribe(3, "topic://bob/**");
      p.stall();
      try {
        const e = await t.connect(eve.identity, [eve.token]);
        const b = await t.connect(bob.identity, [bob.token]);
        // Bob's reader is behind by one large event of his own, so the next ones wait in the bus.
        await b.events.emit("topic://bob/big", { payload: new Uint8Array(3 * MiB).fill(1) });
        const payload = new Uint8Array(512 * 1024).fill(7);
        for (let i = 0; i < 12; i++) await e.events.emit("topic://shared/x", { payload });
        // Within a fair share of the session's bytes (a third each): the flooded subscriptions give way.
        const more = new Uint8Array(400 * 1024).fill(2);
        for (let i = 0; i < 2; i++) await b.events.emit("topic://bob/more", { i, more });
        await b.events.emit("topic://bob/end");
        assert.ok(t.k.events.queuedBytes <= 3 * MiB, `${t.k.events.queuedBytes} bytes queued, session bound 3 MiB`);
        p.sock.resume();
        const mine = () =>
          p.frames
            .filter((f) => f.msg.type === "EVENT" && f.stream === own)
            .map((f) => f.msg.body as { topic: string; seq: number; gap?: number });
        await until(() => mine().some((ev) => ev.topic === "topic://bob/end"), 20_000, "bob's last event");
        assert.deepEqual(
          mine().map((ev) => [ev.topic, ev.seq, ev.gap]),
          [
            ["topic://bob/big", 1, undefined],
            ["topic://bob/more", 2, undefined],
            ["topic://bob/more", 3, undefined],
            ["topic://bob/end", 4, undefined],
          ],
        );
        // The flooded subscriptions gave way, and say so.
        assert.ok(p.frames.some((f) => f.msg.type === "EVENT" && f.stream !== own && (f.msg.body as { gap?: number }).gap));
      } finally {
        p.close();
      }
    });
  });

  it("a subscription's queue of many small events is trimmed and dropped in work proportional to the events, not to their square", async () => {
    // Each queued event was taken off the front of an array (Array.prototype.shift moves every
    // other element): a stalled subscription holding 16 MiB of small events (~220,000) cost
    // ~0.3 ms per new event dropped on it and ~25 s of the kernel's thread when its session closed.
    await withKernel({ eventQueueBytes: MiB, eventSessionBytes: MiB }, async (t) => {
      const eve = await t.persona("eve", [{ ops: ["event.*"], targets: ["topic://tiny/**"] }]);
      const p = await RawPeer.connect(t.k.socketPath);
      await p.handshake(eve.identity, [eve.token]);
      p.request(1, { op: "event.subscribe", target: "topic://tiny/**", args: {} }, { persona: "eve" });
      assert.equal((await p.response(1)).status, "SUCCESS");
      p.sock.pause();
      // Behind by one large event, so the small ones wait in the bus: ~14,000 fill its 1 MiB.
      t.k.events.emit("topic://tiny/big", { payload: new Uint8Array(3 * MiB) });
      for (let i = 0; i < 16_000; i++) t.k.events.emit("topic://tiny/x", null);
      assert.ok(t.k.events.queuedBytes > MiB - 1024, `${t.k.events.queuedBytes} bytes queued`);
      // Elements moved by taking from the front of arrays, while events are dropped and the session ends.
      let moved = 0;
      const shift = Array.prototype.shift;
      Array.prototype.shift = function (this: unknown[]) {
        moved += this.length;
        return shift.call(this);
      };
      try {
        for (let i = 0; i < 1_000; i++) t.k.events.emit("topic://tiny/x", null);
        p.close();
        await until(() => t.k.events.subscriptionCount() === 0, 20_000, "the subscription ends with its session");
      } finally {
        Array.prototype.shift = shift;
      }
      assert.equal(t.k.events.queuedBytes, 0);
      assert.ok(moved < 100_000, `${moved} elements moved to drop 1,000 events and end a queue of ~14,000`);
    });
  });

  it("an event reaching many subscriptions has its data encoded once, not once per subscription; each gets it whole", async () => {
    // Each subscription's EVENT frame encoded the event's data again: an emit of 90,000 small
    // items (~180 KB of intent) to one persona tree's 1,024 reading subscriptions cost the
    // kernel's thread ~3.5 s, a 13 MB event of 90,000 strings ~64 s, for one request.
    await withKernel({}, async (t) => {
      const p = await t.persona("amp", [{ ops: ["event.*"], targets: ["topic://amp/**"] }]);
      const subs = [];
      for (let c = 0; c < 4; c++) {
        const s = await t.connect(p.identity, [p.token]);
        for (let i = 0; i < 16; i++) subs.push(await s.events.subscribe(i % 2 ? "topic://amp/**" : "topic://amp/*"));
      }
      const emitter = await t.connect(p.identity, [p.token]);
      const items = Array.from({ length: 20_000 }, (_, i) => i % 24);
      const before = t.k.events.dataEncodings;
      for (const gapless of [1, 2]) {
        assert.equal((await emitter.events.emit("topic://amp/x", { items, gapless })).subscribers, 64);
      }
      assert.equal(t.k.events.dataEncodings - before, 2, "each event's data encoded once, whatever the subscriptions it reaches");
      // Every subscription gets both events whole (the client's decoder takes canonical CBOR only).
      for (const sub of subs) {
        const it = sub[Symbol.asyncIterator]();
        for (const n of [1, 2]) {
          const ev = (await it.next()).value as {
            topic: string;
            seq: number;
            gap?: number;
            data: { items: number[]; gapless: number };
          };
          assert.equal(ev.topic, "topic://amp/x");
          assert.equal(ev.seq, n);
          assert.equal(ev.gap, undefined);
          assert.equal(ev.data.gapless, n);
          assert.deepEqual(ev.data.items, items);
        }
      }
    });
  });

  it("a subscriber's client keeps only an unread event's own bytes, not the socket read it was decoded from", async () => {
    // A byte string decoded from an EVENT was a view of the 64 KiB socket read it came in: an
    // event of one byte, counted at its frame's size, kept the whole read (1,000 unread: 64 MB
    // against a 16 MiB bufferBytes).
    await withKernel({}, async (t) => {
      const vic = await t.persona("vic", [{ ops: ["event.subscribe", "event.unsubscribe"], targets: ["topic://shared/**"] }]);
      const eve = await t.persona("eve", [{ ops: ["event.emit"], targets: ["topic://shared/**"] }]);
      const v = await t.connect(vic.identity, [vic.token]);
      const e = await t.connect(eve.identity, [eve.token]);
      const unread = await v.subscribe("topic://shared/**");
      let ends = 0;
      v.on("event", (ev: { topic: string }) => {
        if (ev.topic === "topic://shared/end") ends++;
      });
      const N = 50;
      await Promise.all(
        Array.from({ length: N }, (_, i) =>
          e.events.emit("topic://shared/x", { i, b: new Uint8Array([i]), n: [new Uint8Array([i])] }),
        ),
      );
      await e.events.emit("topic://shared/end");
      await until(() => ends === 1, 30_000, "the last event reached the subscriber");
      assert.equal(unread.buffered.events, N + 1);
      const it = unread[Symbol.asyncIterator]();
      for (let i = 0; i < N; i++) {
        const ev = (await it.next()).value as { data: { b: Uint8Array; n: Uint8Array[] } };
        for (const b of [ev.data.b, ...ev.data.n]) {
          assert.equal(b.length, 1);
          assert.ok(b.buffer.byteLength < 1024, `a byte string of 1 byte keeps ${b.buffer.byteLength} bytes`);
        }
      }
    });
  });

  it("a subscriber's client that does not take its events keeps at most its buffer's bytes of them, however large the events another persona emits", async () => {
    // The reference client read every EVENT off the socket into a buffer bounded by count only
    // (1,000): another persona emitting large events on a shared topic filled a slow subscriber's
    // process (100 events of 8 MiB: +660 MiB), whatever the kernel's own byte bounds.
    await withKernel({}, async (t) => {
      const vic = await t.persona("vic", [{ ops: ["event.subscribe", "event.unsubscribe"], targets: ["topic://shared/**"] }]);
      const eve = await t.persona("eve", [{ ops: ["event.emit"], targets: ["topic://shared/**"] }]);
      const v = await t.connect(vic.identity, [vic.token]);
      const e = await t.connect(eve.identity, [eve.token]);
      const byDefault = await v.subscribe("topic://shared/**");
      const small = await v.subscribe("topic://shared/**", { bufferBytes: 4 * MiB });
      // A small last event: once it reached the client, every event before it did, or is in a gap.
      let ends = 0;
      v.on("event", (ev: { topic: string }) => {
        if (ev.topic === "topic://shared/end") ends++;
      });
      const N = 48;
      const data = new Uint8Array(512 * 1024).fill(9);
      for (let i = 0; i < N; i++) await e.events.emit("topic://shared/x", { i, data });
      await e.events.emit("topic://shared/end");
      await until(() => ends === 2, 30_000, "the last event reached both subscriptions");
      const drain = async (sub: typeof small) => {
        const it = sub[Symbol.asyncIterator]();
        let events = 0;
        let bytes = 0;
        let missed = 0;
        for (;;) {
          const ev = (await it.next()).value as { topic: string; data?: { data: Uint8Array }; gap?: number };
          missed += ev.gap ?? 0;
          if (ev.topic === "topic://shared/end") return { events, bytes, missed };
          events++;
          bytes += ev.data?.data.length ?? 0;
        }
      };
      const d = await drain(byDefault);
      const s = await drain(small);
      assert.ok(d.bytes <= 16 * MiB, `the default buffer kept ${d.bytes} bytes of events (bound 16 MiB)`);
      assert.ok(s.bytes <= 4 * MiB, `a 4 MiB buffer kept ${s.bytes} bytes of events`);
      // Nothing vanished unannounced: what was not kept is counted in the gap of what was.
      assert.equal(d.events + d.missed, N);
      assert.equal(s.events + s.missed, N);
      assert.ok(s.missed > 0 && d.missed > 0, "events past the buffers were dropped into gap");
      // The newest is always kept (here the last one), and the subscription goes on.
      await e.events.emit("topic://shared/after", { i: N });
      const next = (await small[Symbol.asyncIterator]().next()).value as { topic: string };
      assert.equal(next.topic, "topic://shared/after");
    });
  });
});
