import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { describe, it } from "node:test";
import { removeHome, startKernel, until } from "./harness.js";
import { seenNothing, slowFamily } from "./slow-family.js";
import { RawPeer } from "./wire.js";

describe("session lifecycle and limits", () => {
  it("stop answers the requests in flight, says GOODBYE and removes the socket", async () => {
    const seen = seenNothing();
    const t = await startKernel({}, undefined, (k) => k.register(slowFamily(seen)));
    const c = await t.admin();
    const goodbye = new Promise((r) => c.once("goodbye", r));
    const calls = Array.from({ length: 5 }, () => c.call("slow.wait", "kernel://"));
    await until(() => seen.started === 5, 10_000, "the five handlers started");
    await t.k.stop();
    const results = await Promise.all(calls);
    assert.deepEqual(
      results.map((r) => r.status),
      ["SUCCESS", "SUCCESS", "SUCCESS", "SUCCESS", "SUCCESS"],
    );
    await goodbye;
    assert.ok(!existsSync(t.k.socketPath));
    removeHome(t.home);
  });

  it("client close says GOODBYE and the kernel drains the session", async () => {
    const t = await startKernel();
    const c = await t.admin();
    const p = c.system.health();
    await c.close();
    assert.equal((await p).status, "ok");
    await until(() => t.k.sessionCount === 0, 30_000, "session gone");
    await t.stop();
    removeHome(t.home);
  });

  it("detects a dead peer that stops answering heartbeats", async () => {
    const t = await startKernel({ heartbeatMs: 100 });
    try {
      const p = await RawPeer.admin(t);
      p.sock.pause(); // reads nothing, answers no PING
      await until(() => t.k.sessionCount === 0, 30_000, "dead peer closed");
      p.close();
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("tells in-flight handlers to stop when their session ends", async () => {
    const seen = seenNothing();
    const t = await startKernel({}, undefined, (k) => k.register(slowFamily(seen)));
    try {
      const p = await RawPeer.admin(t);
      p.request(1, { op: "slow.until_abort", target: "kernel://", args: {} }, { persona: "admin" });
      await until(() => seen.started === 1, 10_000, "the handler started");
      p.close();
      await until(() => seen.aborted === 1, 10_000, "abort");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
