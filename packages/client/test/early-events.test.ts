import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { encodeMessage, type Request } from "@kpip/protocol";
import { EARLY_BYTES, EARLY_EVENTS } from "../src/subscriptions.js";
import { FakeKernel, kernelPool, until } from "./harness.js";

describe("events that come before a subscription's id is known", () => {
  const kernel = kernelPool();

  it("an event emitted while event.subscribe awaits its answer reaches the new subscription: the emitter is told it has a subscriber, and it has", async (t) => {
    const k = kernel();
    await k.start();
    const c = await k.connect();
    t.after(() => c.close());
    // Sent in one turn: the kernel makes the subscription live when its op runs and answers once
    // its record commits, so the emit runs in between and its EVENT comes before (or right behind,
    // in the same read as) the answer naming the subscription's id.
    const [sub, emitted] = await Promise.all([c.subscribe("topic://early/**"), c.events.emit("topic://early/x", { n: 1 })]);
    assert.equal(emitted.subscribers, 1, "the kernel counted the subscription as reached");
    // Its answer comes after the EVENT (written while the emit ran): read by then.
    await c.system.health();
    assert.equal(sub.buffered.events, 1, "the event is the subscription's, not dropped as an unknown id's");
    const first = await sub[Symbol.asyncIterator]().next();
    assert.equal(first.value?.topic, "topic://early/x");
    assert.deepEqual(first.value?.data, { n: 1 });
  });

  it("events for an id not known yet are held up to EARLY_BYTES: a kernel sending more while a subscribe is unanswered grows the client no further", async (t) => {
    const k = new FakeKernel();
    await k.listen();
    t.after(() => k.close());
    let held: Request | undefined;
    k.reset((r) => {
      held = r;
      return "silent";
    });
    // A failed assertion must not leave the subscribe unanswered: close() waits for calls in
    // flight (their deadline, minutes), which held the run that long instead of failing it.
    // Registered before the close: after-hooks run in the order they were registered.
    let answered = false;
    t.after(() => {
      if (held !== undefined && !answered) k.answer(held, { status: "SUCCESS", payload: { subscription: 9 } });
    });
    const c = await k.connect();
    t.after(() => c.close());
    const subscribing = c.subscribe("topic://big/**");
    await until(() => held !== undefined, 10_000, "the subscribe sent");
    const data = Buffer.alloc(900 * 1024, 1);
    const n = Math.ceil(EARLY_BYTES / data.length) + 4;
    for (let seq = 1; seq <= n; seq++)
      k.sockets[0]?.write(encodeMessage({ type: "EVENT", body: { subscription: 9, topic: "topic://big/x", seq, data } }));
    // Read by then: every EVENT written before this call's answer.
    await c.system.health();
    const early = (c as unknown as { subs: { early: { bytes: number; length: number } } }).subs.early;
    assert.ok(early.bytes <= EARLY_BYTES, `${early.bytes} bytes held for an unknown id`);
    assert.ok(early.length > 0 && early.length < n, `${early.length} of ${n} events held`);
    k.answer(held as Request, { status: "SUCCESS", payload: { subscription: 9 } });
    answered = true;
    const sub = await subscribing;
    // Every EVENT written before the answer has been read when it resolves.
    assert.ok(sub.buffered.bytes <= EARLY_BYTES, `${sub.buffered.bytes} bytes held`);
    assert.ok(sub.buffered.events > 0 && sub.buffered.events < n, `${sub.buffered.events} of ${n} events`);
  });

  it("with subscribes overlapping, a full hold drops its oldest: late events of an id just unsubscribed do not push out a new subscription's first events", async (t) => {
    const k = new FakeKernel();
    await k.listen();
    t.after(() => k.close());
    const calls: Request[] = [];
    const silent = (r: Request) => {
      calls.push(r);
      return "silent" as const;
    };
    k.reset(silent, silent);
    // As above: a failed assertion answers what is still in flight, or close() waits minutes for it.
    const answered = new Set<Request>();
    t.after(() => {
      for (const [i, r] of calls.entries())
        if (!answered.has(r)) k.answer(r, { status: "SUCCESS", payload: { subscription: 8 + i } });
    });
    const c = await k.connect();
    t.after(() => c.close());
    const first = c.subscribe("topic://a/**");
    const second = c.subscribe("topic://b/**");
    await until(() => calls.length === 2, 10_000, "both subscribes sent");
    // A hold's worth of late events for id 7 (a subscription just unsubscribed), then the new one's.
    for (let seq = 1; seq <= EARLY_EVENTS; seq++)
      k.sockets[0]?.write(encodeMessage({ type: "EVENT", body: { subscription: 7, topic: "topic://old/x", seq, data: seq } }));
    for (let seq = 1; seq <= 3; seq++)
      k.sockets[0]?.write(encodeMessage({ type: "EVENT", body: { subscription: 9, topic: "topic://b/x", seq, data: seq } }));
    k.answer(calls[1] as Request, { status: "SUCCESS", payload: { subscription: 9 } });
    answered.add(calls[1] as Request);
    const sub = await second;
    k.answer(calls[0] as Request, { status: "SUCCESS", payload: { subscription: 8 } });
    answered.add(calls[0] as Request);
    await first;
    // Every EVENT written before the answer has been read when it resolves: the hold was full of id 7's.
    assert.equal(sub.buffered.events, 3, "the new subscription's first events were held, not dropped");
    const it = sub[Symbol.asyncIterator]();
    for (let seq = 1; seq <= 3; seq++) assert.equal((await it.next()).value?.seq, seq);
  });
});
