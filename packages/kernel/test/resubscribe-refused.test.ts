import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { KernelClient } from "@kpip/client";
import { KpipError } from "@kpip/protocol";
import { until } from "@kpip/protocol/testing";
import { removeHome, startKernel } from "./harness.js";

// @kpip/client makes every subscription again after a reconnect. One the kernel refuses then
// must end for its reader, with the refusal: a subscription that waits for events no kernel will
// send, with nothing to say so but an emitter event the reader may not listen to, hangs it.

describe("a subscription the kernel refuses to make again after a reconnect (a real kernel, restarted)", () => {
  it("a client subscription refused at its re-subscription ends its iteration with the refusal's typed error, not waiting for good", async () => {
    const first = await startKernel();
    const home = first.home;
    let client: KernelClient | undefined;
    let second: Awaited<ReturnType<typeof startKernel>> | undefined;
    try {
      const p = await first.persona("sub", [
        { ops: ["event.subscribe", "event.unsubscribe", "event.emit"], targets: ["topic://t/**"] },
      ]);
      client = await KernelClient.connect({
        socket: first.k.socketPath,
        identity: p.identity,
        tokens: [p.token],
        reconnectBackoff: { initialMs: 10, maxMs: 100 },
        maxAttempts: 1,
      });
      const kept = await client.subscribe("topic://t/a/**");
      const refused = await client.subscribe("topic://t/b/**");
      const failed: { pattern: string; error: unknown }[] = [];
      client.on("resubscribeFailed", (f: { pattern: string; error: unknown }) => failed.push(f));
      const resubscribed: string[] = [];
      client.on("resubscribed", (pattern: string) => resubscribed.push(pattern));
      // The kernel restarts allowing one subscription per session: the client reconnects, makes
      // the first again, and is refused the second (RESOURCE).
      await first.stop();
      second = await startKernel({ maxSubscriptionsPerSession: 1 }, home);
      await until(() => failed.length === 1 && resubscribed.length === 1, 60_000, "both re-subscriptions answered");
      assert.deepEqual(resubscribed, ["topic://t/a/**"]);
      assert.equal(failed[0]?.pattern, "topic://t/b/**");
      assert.ok(refused.closed, "the refused subscription is over");
      const it = refused[Symbol.asyncIterator]();
      await assert.rejects(it.next(), (e: unknown) => e instanceof KpipError && e.errorClass === "RESOURCE");
      assert.ok(refused.error instanceof KpipError);
      assert.deepEqual(await it.next(), { value: undefined, done: true }, "then done");
      // The other one works on the new session.
      const events = kept[Symbol.asyncIterator]();
      await client.events.emit("topic://t/a/x", 1);
      assert.equal((await events.next()).value?.data, 1);
    } finally {
      await client?.close();
      await second?.stop();
      removeHome(home);
    }
  });
});
