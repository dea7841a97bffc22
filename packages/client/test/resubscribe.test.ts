import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decodeIntent, encodeMessage, KpipError, type Request } from "@kpip/protocol";
import { FakeKernel, until } from "./harness.js";

/** The event.subscribe requests among `rs`. */
const subscribes = (rs: Request[]): Request[] => rs.filter((r) => decodeIntent(r.intent).op === "event.subscribe");

describe("re-subscription after an ended subscription and a reconnect", () => {
  it("a subscription the kernel ended while the link is lost is made again once on the new connection, not twice (no orphan left in the kernel)", async (t) => {
    const k = new FakeKernel();
    await k.listen();
    t.after(() => k.close());
    let next = 1;
    const subscribed = () => ({ status: "SUCCESS" as const, payload: { subscription: next++ } });
    // Registered before the client's close (after-hooks run in that order): a failed assertion
    // answers the subscribes left silent, which close() would otherwise wait minutes for.
    t.after(() => k.answerPending(subscribed));
    k.reset(subscribed);
    const c = await k.connect();
    t.after(() => c.close());
    const sub = await c.subscribe("topic://t/**");
    assert.equal(sub.remoteId, 1);

    // The kernel ends it (its capability lapsed); the client's re-subscription goes unanswered ...
    k.reset(() => "silent");
    const first = k.sockets[0];
    assert.ok(first);
    first.write(encodeMessage({ type: "EVENT", body: { subscription: 1, topic: "topic://t/x", seq: 1, ended: "revoked" } }));
    await until(() => subscribes(k.requests).length === 1, 10_000, "the re-subscription sent");
    // ... and the link is lost with it in flight: the client reconnects, resends it and resubscribes.
    const resubscribed = new Promise<void>((r) => c.once("resubscribed", () => r()));
    k.reset(subscribed);
    first.destroy();
    await resubscribed;
    await until(() => c.state === "ready", 10_000, "ready again");
    // Every request sent before this one has reached the kernel when it answers it.
    await c.system.health();
    assert.equal(
      subscribes(k.requests).length,
      1,
      "one subscription made on the new connection: a second would be held by the kernel, its events delivered to nobody",
    );
    assert.equal(sub.remoteId, 2, "the subscription is the one the kernel made on the new connection");
    const events = sub[Symbol.asyncIterator]();
    k.sockets.at(-1)?.write(encodeMessage({ type: "EVENT", body: { subscription: 2, topic: "topic://t/y", seq: 1, data: 7 } }));
    assert.equal((await events.next()).value?.topic, "topic://t/y", "its events reach it");
  });

  it("an id from the previous session names nothing after a reconnect: an event for the new session's id reaches only the subscription made with it", async (t) => {
    const k = new FakeKernel();
    await k.listen();
    t.after(() => k.close());
    const ids = (n: number) => () => ({ status: "SUCCESS" as const, payload: { subscription: n } });
    k.reset(ids(1), ids(2));
    const c = await k.connect();
    t.after(() => c.close());
    const a = await c.subscribe("topic://a/**");
    const b = await c.subscribe("topic://b/**");
    // After the reconnect, a's re-subscription is refused (a keeps the id of the session gone) and
    // b's is given the id a had.
    const resubscribed = new Promise<void>((r) => c.once("resubscribed", () => r()));
    k.reset(() => ({ status: "FAILURE" as const, error: "PERMISSION" as const, message: "no" }), ids(1));
    k.sockets[0]?.destroy();
    await resubscribed;
    assert.equal(b.remoteId, 1);
    const delivered = { a: 0, b: 0 };
    const count = async (s: typeof a, name: "a" | "b") => {
      for await (const _ of s) delivered[name]++;
    };
    // a was not made again: its iteration ends with the refusal (it no longer waits for good).
    await assert.rejects(count(a, "a"), (e: unknown) => e instanceof KpipError && e.errorClass === "PERMISSION");
    assert.ok(a.closed);
    void count(b, "b");
    k.sockets.at(-1)?.write(encodeMessage({ type: "EVENT", body: { subscription: 1, topic: "topic://b/x", seq: 1, data: 1 } }));
    await until(() => delivered.b === 1, 10_000, "b's event delivered");
    // Every frame written before the answer to this call has been read when it arrives.
    await c.system.health();
    assert.deepEqual(delivered, { a: 0, b: 1 });
  });

  it("a reconnect while an earlier reconnect's re-subscriptions are under way: each subscription is made once on the newest connection, never twice", async (t) => {
    const k = new FakeKernel();
    await k.listen();
    t.after(() => k.close());
    let next = 1;
    const subscribed = () => ({ status: "SUCCESS" as const, payload: { subscription: next++ } });
    // As above: a failed assertion answers what is left silent before the client's close.
    t.after(() => k.answerPending(subscribed));
    k.reset(subscribed, subscribed);
    const c = await k.connect();
    t.after(() => c.close());
    const a = await c.subscribe("topic://a/**");
    const b = await c.subscribe("topic://b/**");
    const target = (r: Request) => decodeIntent(r.intent).target;

    // The first reconnect's re-subscription of a goes unanswered ...
    k.reset(() => "silent");
    k.sockets[0]?.destroy();
    await until(() => subscribes(k.requests).length === 1, 10_000, "a's re-subscription sent on the second connection");
    // ... and that link is lost too. On the third connection a's call (sent again) waits while
    // b's re-subscription, the second reconnect's, is answered at once.
    let held: Request | undefined;
    const answerB = (r: Request) => {
      if (target(r) !== "topic://a/**") return subscribed();
      held = r;
      return "silent" as const;
    };
    k.reset(answerB, answerB, answerB, answerB);
    const bMade = new Promise<void>((r) =>
      c.on("resubscribed", (p) => {
        if (p === "topic://b/**") r();
      }),
    );
    k.sockets[1]?.destroy();
    await bMade;
    await until(() => held !== undefined, 10_000, "a's call sent again on the third connection");
    const aMade = new Promise<void>((r) => c.once("resubscribed", () => r()));
    k.answer(held as Request, subscribed());
    await aMade;
    // Every request sent before this one has reached the kernel when it answers it.
    await c.system.health();
    const onThird = subscribes(k.requests).map(target);
    assert.equal(
      onThird.filter((p) => p === "topic://b/**").length,
      1,
      `b made once on the third connection: the first reconnect's loop, resumed after a's answer, must not make it again (${JSON.stringify(onThird)})`,
    );
    assert.ok(!a.closed && !b.closed, "both still open");
    const events = b[Symbol.asyncIterator]();
    k.sockets
      .at(-1)
      ?.write(encodeMessage({ type: "EVENT", body: { subscription: b.remoteId, topic: "topic://b/y", seq: 1, data: 7 } }));
    assert.equal((await events.next()).value?.topic, "topic://b/y", "b's events reach it");
  });
});
