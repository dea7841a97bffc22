// Control frames after WELCOME (PING, PONG, GOODBYE, a non-fatal ERROR) are answered or ignored
// without a record: one session sending them as fast as it could write held the kernel's thread.
// A session may send controlFrameRate of them a second (bursts 5×); past it, it ends.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { encodeMessage, type Message } from "@kpip/protocol";
import { until } from "@kpip/protocol/testing";
import { removeHome, startKernel, type TestKernel } from "./harness.js";
import { seenNothing, slowFamily } from "./slow-family.js";
import { auditRecord, RawPeer, requestFrame } from "./wire.js";

/** 2,000 frames: four times the default burst (100 a second, 5×), in one write. */
const FLOOD = 2000;

describe("control frames past the session's rate", () => {
  let t: TestKernel;
  let persona: Awaited<ReturnType<TestKernel["persona"]>>;
  const seen = seenNothing();
  before(async () => {
    t = await startKernel({}, undefined, (k) => k.register(slowFamily(seen)));
    persona = await t.persona("flooder", [
      { ops: ["system.health"], targets: ["kernel://"] },
      { ops: ["slow.until_abort"], targets: ["kernel://"] },
    ]);
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  /** A session of the flooder (no token bound: it needs none) that sends `m` FLOOD times in one write; its frames once it closed. */
  async function flood(m: Message): Promise<RawPeer> {
    const p = await RawPeer.connect(t.k.socketPath);
    const welcome = await p.handshake(persona.identity, []);
    assert.deepEqual(welcome.body.handles, []);
    const one = encodeMessage(m);
    p.send(Buffer.concat(Array.from({ length: FLOOD }, () => one)));
    await until(() => p.closed, 30_000, "the flooding session ends");
    return p;
  }

  /** The fatal ERROR it was sent, and its session's record. */
  async function assertFlood(p: RawPeer): Promise<void> {
    const err = p.frames.find((f) => f.msg.type === "ERROR")?.msg;
    assert.ok(err?.type === "ERROR", "a fatal ERROR before the close");
    assert.equal(err.body.class, "RESOURCE");
    assert.equal(err.body.code, "CONTROL_FLOOD");
    assert.equal(err.body.fatal, true);
    const rec = await auditRecord(
      t.k,
      (r) => r.op === "session.error" && r.persona === "flooder" && (r.message ?? "").startsWith("CONTROL_FLOOD"),
      "the session's CONTROL_FLOOD record",
    );
    assert.equal(rec.errorClass, "RESOURCE");
  }

  it("a session PINGing past controlFrameRate is ended with fatal RESOURCE/CONTROL_FLOOD, on the record, its PINGs past the burst unanswered; another session is served", async () => {
    const other = await t.connect(persona.identity, [persona.token]);
    const p = await flood({ type: "PING", body: { seq: 7 } });
    const pongs = p.frames.filter((f) => f.msg.type === "PONG").length;
    assert.ok(pongs < FLOOD, `${pongs} PONGs for ${FLOOD} PINGs`);
    await assertFlood(p);
    assert.equal((await other.system.health()).status, "ok");
  });

  it("unsolicited PONGs past the rate end the session alike", async () => {
    await assertFlood(await flood({ type: "PONG", body: { seq: 7 } }));
  });

  it("non-fatal ERRORs past the rate end the session alike", async () => {
    await assertFlood(await flood({ type: "ERROR", body: { class: "INTERNAL", code: "X", message: "x", fatal: false } }));
  });

  it("GOODBYEs repeated while the session closes (a request holding it open) are counted: past the rate, fatal CONTROL_FLOOD, and the request aborted", async () => {
    const p = await RawPeer.connect(t.k.socketPath);
    const welcome = await p.handshake(persona.identity, [persona.token]);
    const started = seen.started;
    p.send(
      requestFrame(
        1,
        { op: "slow.until_abort", target: "kernel://", args: {} },
        { caps: welcome.body.handles, persona: "flooder" },
      ),
    );
    await until(() => seen.started > started, 30_000, "the request running");
    // The first GOODBYE starts the closing; the session stays open until the request ends.
    p.sendMessage({ type: "GOODBYE", body: { reason: "done" } });
    const one = encodeMessage({ type: "GOODBYE", body: { reason: "again" } });
    p.send(Buffer.concat(Array.from({ length: FLOOD }, () => one)));
    await until(() => p.closed, 30_000, "the flooding session ends");
    await assertFlood(p);
  });

  it("a client at the smallest heartbeat, idle, keeps its session: its PINGs and PONGs are within the rate", async () => {
    const k = await startKernel({ heartbeatMs: 100 });
    try {
      const c = await k.admin();
      // Idle for some heartbeats: each side PINGs every 50 ms, and the client answers the kernel's.
      // Thirty of the kernel's PINGs (by its count, however slowly this machine runs its ticks).
      const sessions = (k.k as unknown as { services: { sessions: { sessions: Set<{ pingSeq: number }> } } }).services.sessions
        .sessions;
      await until(() => [...sessions].some((s) => s.pingSeq >= 30), 60_000, "thirty heartbeats");
      assert.equal((await c.system.health()).status, "ok");
      assert.ok(!k.k.inspect.queryAudit({ limit: 1000 }).some((r) => (r.message ?? "").startsWith("CONTROL_FLOOD")));
    } finally {
      await k.stop();
      removeHome(k.home);
    }
  });
});
