import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { describe, it } from "node:test";
import { adminIdentity, removeHome, startKernel, until } from "./harness.js";
import { RawPeer } from "./wire.js";

const slowFamily = (seen: { aborted: boolean[] }) => ({
  name: "slow",
  ops: [
    {
      op: "slow.wait",
      description: "waits 200 ms",
      targets: ["kernel" as const],
      args: {},
      idempotent: true,
      effects: false,
      handler: async () => {
        await new Promise((r) => setTimeout(r, 200));
        return { status: "SUCCESS" as const, payload: { ok: true } };
      },
    },
    {
      op: "slow.forever",
      description: "waits until aborted",
      targets: ["kernel" as const],
      args: {},
      idempotent: true,
      effects: false,
      handler: (ctx: { signal: AbortSignal }) =>
        new Promise<{ status: "SUCCESS" }>((resolve) => {
          ctx.signal.addEventListener("abort", () => {
            seen.aborted.push(true);
            resolve({ status: "SUCCESS" });
          });
        }),
    },
  ],
});

describe("session lifecycle and limits", () => {
  it("stop answers the requests in flight, says GOODBYE and removes the socket", async () => {
    const t = await startKernel({}, undefined, (k) => k.register(slowFamily({ aborted: [] })));
    const c = await t.admin();
    const goodbye = new Promise((r) => c.once("goodbye", r));
    const calls = Array.from({ length: 5 }, () => c.call("slow.wait", "kernel://"));
    await new Promise((r) => setTimeout(r, 50));
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
    await until(() => t.k.sessionCount === 0, 3000, "session gone");
    await t.stop();
    removeHome(t.home);
  });

  it("detects a dead peer that stops answering heartbeats", async () => {
    const t = await startKernel({ heartbeatMs: 100 });
    const p = await RawPeer.connect(t.k.socketPath);
    await p.handshake(adminIdentity(t.k), [Buffer.from(t.adminToken, "base64url")]);
    p.sock.pause(); // reads nothing, answers no PING
    await until(() => t.k.sessionCount === 0, 3000, "dead peer closed");
    p.close();
    await t.stop();
    removeHome(t.home);
  });

  it("refuses sessions over the limit with RESOURCE/TOO_MANY_SESSIONS", async () => {
    const t = await startKernel({ maxSessions: 2, adminReserve: 0 });
    const tok = [Buffer.from(t.adminToken, "base64url")];
    const a = await RawPeer.connect(t.k.socketPath);
    const b = await RawPeer.connect(t.k.socketPath);
    await a.handshake(adminIdentity(t.k), tok);
    await b.handshake(adminIdentity(t.k), tok);
    const c = await RawPeer.connect(t.k.socketPath);
    const { bytes } = await c.hello(adminIdentity(t.k));
    c.sendMessage({ type: "ATTEST", body: { signature: c.sign(adminIdentity(t.k), bytes), tokens: tok } });
    const e = await c.next("ERROR");
    assert.deepEqual([e.body.class, e.body.code], ["RESOURCE", "TOO_MANY_SESSIONS"]);
    await until(() => c.closed);
    for (const x of [a, b, c]) x.close();
    await t.stop();
    removeHome(t.home);
  });

  it("tells in-flight handlers to stop when their session ends", async () => {
    const seen = { aborted: [] as boolean[] };
    const t = await startKernel({}, undefined, (k) => k.register(slowFamily(seen)));
    const p = await RawPeer.connect(t.k.socketPath);
    await p.handshake(adminIdentity(t.k), [Buffer.from(t.adminToken, "base64url")]);
    p.request(1, { op: "slow.forever", target: "kernel://", args: {} }, { persona: "admin" });
    await new Promise((r) => setTimeout(r, 100));
    p.close();
    await until(() => seen.aborted.length === 1, 3000, "abort");
    await t.stop();
    removeHome(t.home);
  });
});
