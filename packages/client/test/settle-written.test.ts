import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CancelledError, type KernelClient, KpipError, TimeoutError } from "../src/index.js";
import { kernelPool, until } from "./harness.js";

/** A macrotask: every settled promise's handlers have run. */
const turn = () => new Promise((r) => setImmediate(r));

describe("a call ended locally with the caller's bytes still queued on the socket", () => {
  const kernel = kernelPool();

  /** The object's bytes, or undefined when the kernel stored nothing under that name. */
  const stored = async (c: KernelClient, target: string): Promise<Buffer | undefined> => {
    try {
      return Buffer.from((await c.storage.read(target)).data);
    } catch (e) {
      if (e instanceof KpipError && e.errorClass === "SEMANTIC") return undefined;
      throw e;
    }
  };

  it("rejects (abort, local deadline) only once the socket has let go of the bytes: changing them after the rejection never reaches the kernel", async () => {
    const k = kernel();
    await k.start();
    // Inline over the socket (shared memory would copy the body at once). 8 MiB: far more than
    // a socket buffer holds while the kernel, stopped, reads nothing.
    const c = await k.connect({ shm: false, reconnect: false });
    const size = 8 * 1024 * 1024;
    const cases = [
      { target: "obj://ws1/aborted", end: "abort" as const },
      { target: "obj://ws1/expired", end: "deadline" as const },
    ];
    const outcomes: { target: string; original: Buffer; heldWhileStopped: boolean; error: unknown }[] = [];
    for (const { target, end } of cases) {
      const data = Buffer.alloc(size, 0xaa);
      const original = Buffer.from(data);
      k.signal("SIGSTOP");
      const ac = new AbortController();
      let rejected = false;
      const p = c.storage.write(target, data, end === "abort" ? { signal: ac.signal } : { deadlineMs: 300 }).then(
        () => undefined,
        (e: unknown) => {
          rejected = true;
          // The caller reuses its buffer the moment the call has failed.
          data.fill(0xbb);
          return e;
        },
      );
      await turn(); // the frame is on the socket, which the stopped kernel does not drain
      if (end === "abort") ac.abort();
      // Ended locally: no longer in flight (the deadline's timer, or the abort at once).
      await until(() => c.inFlight === 0, 30_000, "the call ended locally");
      await turn();
      const heldWhileStopped = !rejected;
      k.signal("SIGCONT");
      outcomes.push({ target, original, heldWhileStopped, error: await p });
    }
    // Whatever the kernel did with the requests is done once it has stopped (it drains them).
    await c.close();
    await k.stop();
    await k.start();
    const d = await k.connect();
    try {
      for (const o of outcomes) {
        const got = await stored(d, o.target);
        assert.ok(got === undefined || got.equals(o.original), `${o.target}: nothing stored, or the original bytes`);
        assert.ok(o.heldWhileStopped, `${o.target}: not rejected while its bytes were still queued`);
      }
      assert.ok(outcomes[0]?.error instanceof CancelledError, String(outcomes[0]?.error));
      assert.ok(outcomes[1]?.error instanceof TimeoutError, String(outcomes[1]?.error));
    } finally {
      await d.close();
    }
  });
});
