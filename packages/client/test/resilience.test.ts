import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type Connector, KernelUnavailableError, TimeoutError } from "../src/index.js";
import { countingConnector, kernelPool, until } from "./harness.js";

describe("client resilience", () => {
  const kernel = kernelPool();

  it("recovers from a SIGKILL mid-stream: every call answered once, no write executed twice", async (t) => {
    const k = kernel();
    await k.start();
    const c = await k.connect();
    t.after(() => c.close());
    const settled = new Map<number, number>();
    const calls = Array.from({ length: 200 }, (_, i) =>
      c.storage.write(`obj://ws1/w/${i}`, `v${i}`, { deadlineMs: 20_000 }).then(
        (r) => {
          settled.set(i, (settled.get(i) ?? 0) + 1);
          return r;
        },
        (e) => {
          settled.set(i, (settled.get(i) ?? 0) + 1);
          throw e;
        },
      ),
    );
    // Killed as soon as the requests are on the socket: the kernel may have run some of them,
    // but none of the answers has come back.
    await new Promise((r) => setImmediate(r));
    const inFlightAtKill = c.inFlight;
    await k.kill();
    await k.start();
    const results = await Promise.all(calls);
    assert.equal(inFlightAtKill, 200, "the kernel died with every call in flight");
    assert.equal(settled.size, 200);
    assert.ok([...settled.values()].every((n) => n === 1));
    assert.ok(
      results.every((r) => r.generation === 1),
      "a retried write answered from the dedupe record, not run again",
    );
    for (let i = 0; i < 200; i += 37) assert.equal((await c.storage.stat(`obj://ws1/w/${i}`)).generation, 1);
  });

  it("while reconnecting, calls wait by default, or fail fast with KernelUnavailableError", async (t) => {
    const k = kernel();
    await k.start();
    const waiting = await k.connect();
    const fast = await k.connect({ failFast: true });
    t.after(async () => {
      await waiting.close();
      await fast.close();
    });
    await k.kill();
    await until(() => waiting.state === "reconnecting" && fast.state === "reconnecting", undefined, "both reconnecting");
    await assert.rejects(fast.system.health(), (e: unknown) => e instanceof KernelUnavailableError);
    await assert.rejects(waiting.system.health({ deadlineMs: 200 }), (e: unknown) => e instanceof TimeoutError);
    const later = waiting.system.health();
    await k.start();
    assert.equal((await later).status, "ok");
    await until(() => fast.state === "ready", undefined, "the fail-fast client ready again");
  });

  it("a programming error while reconnecting ends the client with it, given to waiting calls, instead of reconnecting for ever", async (t) => {
    const k = kernel();
    await k.start();
    const uds = countingConnector(k.socket);
    let broken = false;
    // The broken connector fails only once a call is waiting: failing at once could close the client
    // before the call is made, which then meets "client is closed" instead of the bug.
    let callWaiting!: () => void;
    const waitingCall = new Promise<void>((r) => {
      callWaiting = r;
    });
    const connector: Connector = {
      transport: uds.transport,
      address: uds.address,
      connect: async (deadline) => {
        if (!broken) return uds.connect(deadline);
        await waitingCall;
        throw new TypeError("a bug in the connector");
      },
    };
    const c = await k.connect({ connector });
    t.after(() => c.close());
    broken = true;
    await k.kill();
    await until(() => c.state === "reconnecting", undefined, "reconnecting");
    const waiting = c.system.health();
    callWaiting();
    const e = await waiting.then(
      () => undefined,
      (x: unknown) => x,
    );
    assert.ok(e instanceof TypeError && /a bug in the connector/.test(e.message), String(e));
    assert.equal(c.state, "closed");
  });

  it("backs off against a kernel that stays down: the pauses between attempts grow to the cap instead of looping", async (t) => {
    const k = kernel();
    await k.start();
    // Full jitter drawn at its middle: each pause is half its ceiling (50, 100, 200, then 200 ms at the 400 ms cap).
    t.mock.method(Math, "random", () => 0.5);
    const c = await k.connect({ reconnectBackoff: { initialMs: 100, maxMs: 400 }, healthyAfterMs: 60_000 });
    try {
      const failedAt: number[] = [];
      c.on("reconnectFailed", () => failedAt.push(Date.now()));
      await k.kill();
      await until(() => failedAt.length >= 6, undefined, "six failed reconnects");
      const gaps = failedAt.slice(1).map((at, i) => at - (failedAt[i] as number));
      // Lower bounds only (a busy machine makes pauses longer, never shorter); 2 ms for timer rounding.
      assert.ok(
        gaps.slice(2).every((g) => g >= 198),
        `at the cap each attempt waits at least half of it: gaps ${gaps.join(", ")} ms`,
      );
      await k.start();
      await until(() => c.state === "ready", undefined, "ready once the kernel is back");
    } finally {
      await c.close();
    }
  });
});
