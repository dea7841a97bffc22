import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { KernelUnavailableError, TimeoutError } from "../src/index.js";
import { KernelProcess, until } from "./harness.js";

describe("client resilience", () => {
  const kernels: KernelProcess[] = [];
  const kernel = (args: string[] = []) => {
    const k = new KernelProcess(args);
    kernels.push(k);
    return k;
  };
  after(async () => {
    for (const k of kernels) await k.dispose();
  });

  it("recovers from a SIGKILL mid-stream: every call answered once, no write executed twice", async () => {
    const k = kernel();
    await k.start();
    const c = await k.connect();
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
    await new Promise((r) => setTimeout(r, 15));
    await k.kill();
    await k.start();
    const results = await Promise.all(calls);
    assert.equal(settled.size, 200);
    assert.ok([...settled.values()].every((n) => n === 1));
    assert.ok(
      results.every((r) => r.generation === 1),
      "a retried write answered from the dedupe record, not run again",
    );
    for (let i = 0; i < 200; i += 37) assert.equal((await c.storage.stat(`obj://ws1/w/${i}`)).generation, 1);
    await c.close();
  });

  it("while reconnecting, calls wait by default, or fail fast with KernelUnavailableError", async () => {
    const k = kernel();
    await k.start();
    const waiting = await k.connect();
    const fast = await k.connect({ failFast: true });
    await k.kill();
    await until(() => waiting.state === "reconnecting" && fast.state === "reconnecting", 3000);
    await assert.rejects(fast.system.health(), (e: unknown) => e instanceof KernelUnavailableError);
    await assert.rejects(waiting.system.health({ deadlineMs: 200 }), (e: unknown) => e instanceof TimeoutError);
    const later = waiting.system.health();
    await k.start();
    assert.equal((await later).status, "ok");
    await until(() => fast.state === "ready", 5000);
    await waiting.close();
    await fast.close();
  });

  it("backs off against a flapping kernel instead of looping", async () => {
    const k = kernel();
    await k.start();
    const c = await k.connect({ reconnectBackoff: { initialMs: 50, maxMs: 400 }, healthyAfterMs: 10_000 });
    let attempts = 0;
    c.on("state", (s) => {
      if (s === "reconnecting") attempts++;
    });
    c.on("reconnectFailed", () => attempts++);
    await k.kill();
    const windowStart = Date.now();
    await new Promise((r) => setTimeout(r, 2000));
    const elapsed = Date.now() - windowStart;
    // a tight loop would try hundreds of times; full-jitter backoff capped at 400 ms cannot exceed ~2 per 50 ms early on
    assert.ok(attempts > 1, "it keeps trying");
    assert.ok(attempts < 2 * (elapsed / 50), `${attempts} attempts in ${elapsed} ms`);
    await k.start();
    await until(() => c.state === "ready", 5000);
    await c.close();
  });
});
