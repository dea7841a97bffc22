import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { describe, it } from "node:test";
import { KernelClient, KernelUnavailableError } from "@kpip/client";
import { encodeMessage } from "@kpip/protocol";
import type { OpError, OpResult, PrimitiveFamily } from "../src/index.js";
import { adminIdentity, removeHome, startKernel, until, withKernel } from "./harness.js";
import { seenNothing, slowFamily } from "./slow-family.js";
import { auditRecord, RawPeer, requestFrame } from "./wire.js";

const token = (t: { adminToken: string }) => [Buffer.from(t.adminToken, "base64url")];

/** A family whose one op, `held.wait`, runs until the test releases it: a request kept in flight. */
function heldFamily(): { family: PrimitiveFamily; readonly started: number; release(): void } {
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => {
    release = r;
  });
  let started = 0;
  const family: PrimitiveFamily = {
    name: "held",
    ops: [
      {
        op: "held.wait",
        description: "waits until the test releases it",
        targets: ["kernel"],
        args: {},
        idempotent: true,
        effects: false,
        handler: async () => {
          started++;
          await gate;
          return { status: "SUCCESS" };
        },
      },
    ],
  };
  return {
    family,
    get started() {
      return started;
    },
    release: () => release(),
  };
}

describe("session lifecycle over real sockets", () => {
  it("stop with five calls in flight: all SUCCESS without abort, GOODBYE, client closed, socket removed", async () => {
    const seen = seenNothing();
    const t = await startKernel({}, undefined, (k) => k.register(slowFamily(seen)));
    const c = await t.admin();
    const states: string[] = [];
    c.on("state", (s: string) => states.push(s));
    const goodbye = new Promise((r) => c.once("goodbye", r));
    const calls = Array.from({ length: 5 }, () => c.call("slow.wait", "kernel://"));
    await until(() => seen.started === 5, 30_000, "all five handlers running");
    await t.k.stop();
    const results = await Promise.all(calls);
    for (const r of results) assert.deepEqual([r.status, r.payload], ["SUCCESS", { aborted: false }]);
    assert.equal(seen.finished, 5);
    await goodbye;
    await until(() => states.includes("closed"), 30_000, "client closed");
    assert.ok(!existsSync(t.k.socketPath));
    removeHome(t.home);
  });

  it("stop closes peers still in the handshake", async () => {
    const t = await startKernel({ handshakeTimeoutMs: 60_000 });
    const silent = await RawPeer.connect(t.k.socketPath);
    const halfway = await RawPeer.connect(t.k.socketPath);
    await halfway.hello(adminIdentity(t.k));
    await until(() => t.k.sessionCount === 2);
    await t.k.stop();
    await until(() => silent.closed && halfway.closed, 30_000, "handshaking peers closed");
    removeHome(t.home);
  });

  it("a stuck handler past drainTimeoutMs: stop returns, the call settles, the late result is dropped quietly", async () => {
    const seen = seenNothing();
    let release = () => {};
    const released = new Promise<void>((r) => {
      release = r;
    });
    const t = await startKernel({ drainTimeoutMs: 300 }, undefined, (k) => k.register(slowFamily(seen, released)));
    const c = await t.admin();
    const call = c.call("slow.stuck", "kernel://").then(
      () => undefined,
      (e: unknown) => e,
    );
    await until(() => seen.started === 1, 30_000, "the stuck handler running");
    await t.k.stop();
    assert.equal(seen.stuckReturned, 0, "stop returned before the stuck handler did");
    // the kernel closed the session without an answer: the call fails as unavailable, never hangs
    assert.ok((await call) instanceof KernelUnavailableError);
    await c.close();
    // the handler finishes after the kernel stopped: that must not throw in the embedding process
    release();
    await until(() => seen.stuckReturned === 1, 30_000, "the stuck handler to return");
    removeHome(t.home);
  });

  it("a handler with effects still in flight when stop ends its session commits nothing afterwards, and its refusal is on the record", async () => {
    // An op with effects whose handler awaits (as storage.write awaits its body's file, an upload's
    // commit its sync) until the stop, past drainTimeoutMs, has ended its session; then it commits.
    const seen = { started: 0, committed: 0, refused: "" };
    const late: PrimitiveFamily = {
      name: "late",
      ops: [
        {
          op: "late.commit",
          description: "commits once its session has ended",
          targets: ["kernel"],
          args: {},
          idempotent: false,
          effects: true,
          handler: (ctx) =>
            new Promise<OpResult>((resolve, reject) => {
              seen.started++;
              ctx.signal.addEventListener("abort", () => {
                try {
                  resolve(
                    ctx.atomically((): OpResult => {
                      seen.committed++;
                      return { status: "SUCCESS" };
                    }),
                  );
                } catch (e) {
                  seen.refused = `${(e as OpError).errorClass}: ${(e as Error).message}`;
                  reject(e);
                }
              });
            }),
        },
      ],
    };
    const t = await startKernel({ drainTimeoutMs: 50 }, undefined, (k) => k.register(late));
    try {
      const c = await t.admin();
      const call = c.call("late.commit", "kernel://").catch((e: unknown) => e);
      await until(() => seen.started === 1, 30_000, "the handler running");
      await t.k.stop();
      assert.ok((await call) instanceof KernelUnavailableError);
      // Stopped: the kernel.stop record is the last word, no effect lands after its sessions ended.
      assert.equal(seen.committed, 0, "nothing committed after the stop ended the session");
      assert.match(seen.refused, /^RESOURCE: the kernel is stopping/);
      const t2 = await startKernel({}, t.home);
      const rows = t2.k.inspect.queryAudit({ limit: 1000 }).filter((r) => r.op === "late.commit");
      assert.deepEqual(
        rows.map((r) => [r.phase, r.status, r.errorClass]),
        [
          ["intent", null, null],
          ["outcome", "FAILURE", "RESOURCE"],
        ],
      );
      await t2.stop();
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("a request that arrives while the kernel drains for its stop is refused RESOURCE (retryable, not run), not PROTOCOL", async () => {
    // The kernel says GOODBYE as its drain begins, but a request may cross it on the wire: it
    // broke no rule (the peer had not read the GOODBYE yet).
    const held = heldFamily();
    const t = await startKernel({}, undefined, (k) => k.register(held.family));
    try {
      const p = await RawPeer.connect(t.k.socketPath);
      await p.handshake(adminIdentity(t.k), token(t));
      p.send(requestFrame(1, { op: "held.wait", target: "kernel://", args: {} }));
      await until(() => held.started === 1, 30_000, "the held request running");
      const stopped = t.k.stop();
      // Asked again until the drain has begun (the stop first closes its listeners).
      let id = 2;
      p.send(requestFrame(id, { op: "system.health", target: "kernel://", args: {} }));
      let late = await p.response(id);
      while (late.status === "SUCCESS") {
        p.send(requestFrame(++id, { op: "system.health", target: "kernel://", args: {} }));
        late = await p.response(id);
      }
      assert.deepEqual([late.status, late.error], ["FAILURE", "RESOURCE"], late.message);
      assert.match(late.message ?? "", /the kernel is stopping/);
      // The GOODBYE came when the drain began, before the request in flight was answered.
      const goodbye = await p.next("GOODBYE");
      assert.equal(goodbye.body.reason, "the kernel is stopping");
      assert.equal(
        p.frames.some((f) => f.msg.type === "RESPONSE" && (f.msg.body as { id: number }).id === 1),
        false,
        "not answered yet",
      );
      held.release();
      assert.equal((await p.response(1)).status, "SUCCESS", "the request in flight is answered");
      await stopped;
      // On the record as a refusal of the stopping kernel, not as the peer's protocol error.
      const t2 = await startKernel({}, t.home);
      const refused = t2.k.inspect.queryAudit({ op: "system.health", limit: 1000 }).filter((r) => r.status === "FAILURE");
      assert.deepEqual(
        refused.map((r) => r.errorClass),
        ["RESOURCE"],
      );
      await t2.stop();
    } finally {
      held.release();
      await t.stop();
      removeHome(t.home);
    }
  });

  it("a call made while the kernel drains for its stop waits for the next kernel: GOODBYE comes first, nothing new is sent to the stopping one", async () => {
    const held = heldFamily();
    const t = await startKernel({}, undefined, (k) => k.register(held.family));
    let t2: Awaited<ReturnType<typeof startKernel>> | undefined;
    const c = await KernelClient.connect({
      socket: t.k.socketPath,
      identity: adminIdentity(t.k),
      tokens: token(t),
      reconnect: true,
      reconnectBackoff: { initialMs: 20, maxMs: 200 },
      unavailableTimeoutMs: 120_000,
    });
    try {
      let goodbye = false;
      c.once("goodbye", () => {
        goodbye = true;
      });
      const first = c.call("held.wait", "kernel://");
      await until(() => held.started === 1, 30_000, "the held request running");
      const stopped = t.k.stop();
      await until(() => goodbye, 30_000, "the kernel's GOODBYE as its drain begins");
      // Made while the old kernel still drains (its one request held): it must not go there.
      const later = c.call("system.health", "kernel://");
      held.release();
      assert.equal((await first).status, "SUCCESS", "the call in flight is answered by the stopping kernel");
      await stopped;
      t2 = await startKernel({}, t.home);
      assert.equal((await later).status, "SUCCESS", "answered by the next kernel");
      // Never refused by the stopping kernel: no FAILURE of it on the record, nor a retry spent on it.
      const refused = t2.k.inspect.queryAudit({ op: "system.health", limit: 1000 }).filter((r) => r.status === "FAILURE");
      assert.deepEqual(refused, []);
    } finally {
      held.release();
      await c.close();
      await t2?.stop();
      await t.stop();
      removeHome(t.home);
    }
  });

  it("GOODBYE from the peer: in-flight answered, new REQUESTs refused PROTOCOL, then GOODBYE and close", async () => {
    const seen = seenNothing();
    const t = await startKernel({}, undefined, (k) => k.register(slowFamily(seen)));
    const p = await RawPeer.connect(t.k.socketPath);
    await p.handshake(adminIdentity(t.k), token(t));
    p.send(requestFrame(1, { op: "slow.wait", target: "kernel://", args: {} }));
    await until(() => seen.started === 1, 30_000, "the request running");
    p.send(encodeMessage({ type: "GOODBYE", body: { reason: "done" } }));
    p.send(requestFrame(2, { op: "system.health", target: "kernel://", args: {} }));
    const late = await p.response(2);
    assert.deepEqual([late.status, late.error], ["FAILURE", "PROTOCOL"]);
    assert.deepEqual((await p.response(1)).payload, { aborted: false });
    await p.next("GOODBYE");
    await until(() => p.closed, 30_000, "closed after GOODBYE");
    await until(() => t.k.sessionCount === 0);
    await t.stop();
    removeHome(t.home);
  });

  it("client close says GOODBYE after its in-flight call is answered; the kernel drops the session", async () => {
    const seen = seenNothing();
    const t = await startKernel({}, undefined, (k) => k.register(slowFamily(seen)));
    try {
      const c = await t.admin();
      const call = c.call("slow.wait", "kernel://");
      await until(() => seen.started === 1, 30_000, "the call running");
      await c.close();
      assert.deepEqual((await call).payload, { aborted: false });
      await until(() => t.k.sessionCount === 0, 30_000, "session gone");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("dead peer: reads the PINGs but never answers nor sends: the kernel closes it", async () => {
    const t = await startKernel({ heartbeatMs: 100 });
    const p = await RawPeer.connect(t.k.socketPath);
    await p.handshake(adminIdentity(t.k), token(t));
    await until(() => p.closed, 30_000, "the kernel closes a silent peer");
    assert.ok(
      p.frames.some((f) => f.msg.type === "PING"),
      "the kernel pinged before giving up",
    );
    await until(() => t.k.sessionCount === 0);
    const ends = t.k.inspect
      .queryAudit({ persona: "admin", limit: 50 })
      .filter((r) => r.op === "session.close" || r.op === "session.error");
    assert.ok(ends.length >= 1, "the dead peer's session end is on the record");
    await t.stop();
    removeHome(t.home);
  });

  it("slowloris after the handshake: half a REQUEST frame then silence; closed as a dead peer, others served", async () => {
    await withKernel({ heartbeatMs: 100 }, async (t) => {
      const p = await RawPeer.admin(t);
      const frame = requestFrame(1, { op: "system.health", target: "kernel://", args: {} });
      p.send(frame.subarray(0, frame.length - 5));
      // At heartbeatMs 100 a loaded machine can delay even a live client's PONG past three
      // intervals: this one reconnects if so, and must still be served.
      const other = await t.admin({ reconnect: true });
      await until(() => p.closed, 30_000, "the kernel closes the stalled peer");
      assert.ok(!p.frames.some((f) => f.msg.type === "RESPONSE"), "the half request was never executed");
      assert.equal((await other.system.health()).status, "ok");
    });
  });

  it("a kernel and a peer that stalled together (one process, a paused machine) keep their session: the first silent tick PINGs", async () => {
    // 500 ms: after the stall the PONG to the first silent tick's PING must be read before the next
    // tick, 250 ms on; this process being descheduled that long between them would still lose it.
    await withKernel({ heartbeatMs: 500 }, async (t) => {
      const p = await RawPeer.admin(t);
      const pings = p.answerPings();
      // This process (the kernel and its peer) stalled for more than 3 intervals: neither wrote.
      const stalled = Date.now();
      while (Date.now() - stalled <= 3 * 500 + 100) {
        // stalled
      }
      const before = pings();
      // Two PINGs after the stall: the first silent tick's, answered; then one from a tick that found the peer alive.
      await until(() => pings() >= before + 2 || p.closed, 30_000, "two heartbeats after the stall");
      assert.ok(!p.closed, "the peer was not judged dead");
      p.close();
    });
  });

  it("a live peer that answers PINGs stays connected well past three heartbeats", async () => {
    // 500 ms: the peer is closed after three silent heartbeats, so this test process may be
    // descheduled up to 1.5 s on a busy machine without its PONGs counting as silence.
    await withKernel({ heartbeatMs: 500 }, async (t) => {
      const p = await RawPeer.admin(t);
      // Answer each PING as it arrives, and count them: five answered PINGs are five heartbeats
      // survived (closing takes three missed), however slowly this machine runs them.
      const answered = p.answerPings();
      await until(() => answered() >= 5 || p.closed, 60_000, "five heartbeats");
      assert.ok(!p.closed, "an answering peer is not dead");
      p.send(requestFrame(1, { op: "system.health", target: "kernel://", args: {} }));
      assert.equal((await p.response(1)).status, "SUCCESS");
      p.close();
    });
  });

  it("maxSessions 2: a third attested session gets RESOURCE/TOO_MANY_SESSIONS, audited; a freed slot is usable again", async () => {
    const t = await startKernel({ maxSessions: 2, adminReserve: 0 });
    try {
      const a = await RawPeer.connect(t.k.socketPath);
      const b = await RawPeer.connect(t.k.socketPath);
      await a.handshake(adminIdentity(t.k), token(t));
      await b.handshake(adminIdentity(t.k), token(t));
      const c = await RawPeer.connect(t.k.socketPath);
      const { bytes } = await c.hello(adminIdentity(t.k));
      c.sendMessage({ type: "ATTEST", body: { signature: c.sign(adminIdentity(t.k), bytes), tokens: token(t) } });
      const e = await c.next("ERROR");
      assert.deepEqual([e.body.class, e.body.code, e.body.fatal], ["RESOURCE", "TOO_MANY_SESSIONS", true]);
      // Refused, and on the record like every failed handshake.
      const rec = await auditRecord(
        t.k,
        (r) => r.op === "session.handshake" && (r.message ?? "").startsWith("TOO_MANY_SESSIONS:"),
      );
      assert.deepEqual([rec.phase, rec.status, rec.errorClass, rec.persona], ["session", "FAILURE", "RESOURCE", "admin"]);
      await until(() => c.closed, 30_000, "refused connection closed");
      a.close();
      await until(() => t.k.sessionCount === 1, 30_000, "slot freed");
      const d = await RawPeer.connect(t.k.socketPath);
      const w = await d.handshake(adminIdentity(t.k), token(t));
      assert.equal(w.body.persona, "admin");
      for (const x of [b, d]) x.close();
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("a session that ends aborts its in-flight handler, whose outcome is still audited", async () => {
    const seen = seenNothing();
    const t = await startKernel({}, undefined, (k) => k.register(slowFamily(seen)));
    try {
      const p = await RawPeer.connect(t.k.socketPath);
      await p.handshake(adminIdentity(t.k), token(t));
      p.send(requestFrame(41, { op: "slow.until_abort", target: "kernel://", args: {} }));
      await until(() => seen.started === 1, 30_000, "the handler started");
      p.sock.destroy();
      await until(() => seen.aborted === 1, 30_000, "the handler saw the abort");
      const row = await auditRecord(t.k, (r) => r.requestId === 41 && r.op === "slow.until_abort");
      assert.ok(["complete", "outcome"].includes(row.phase));
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
