import assert from "node:assert/strict";
import net from "node:net";
import { describe, it } from "node:test";
import { encodeFrameParts, encodeMessage, MessageType } from "@kpip/protocol";
import { removeHome, startKernel, until } from "./harness.js";
import { auditRecord, RawPeer } from "./wire.js";

describe("hostile input over the wire", () => {
  it("closes sessions that send nesting bombs, huge declared arrays or tagged values, and keeps serving", async () => {
    const t = await startKernel();
    const bodies = [
      Buffer.from(`${"81".repeat(10_000)}00`, "hex"), // nesting bomb as a whole body
      Buffer.from("9bffffffffffffffff", "hex"), // an array claiming 2^64-1 elements
      Buffer.from("c11a00000000", "hex"), // a tagged value (epoch date)
    ];
    for (const body of bodies) {
      const p = await RawPeer.admin(t);
      const [h, b] = encodeFrameParts({ type: MessageType.REQUEST, stream: 1 }, body);
      p.send(Buffer.concat([h, b]));
      const e = await p.next("ERROR");
      assert.equal(e.body.class, "PROTOCOL");
      await until(() => p.closed);
    }
    // inside an otherwise valid REQUEST, a nesting bomb or a tag in the intent is SEMANTIC for that request only
    const p = await RawPeer.admin(t);
    let id = 10;
    for (const intent of [
      Buffer.from(`${"81".repeat(40)}00`, "hex"),
      Buffer.from("c11a00000000", "hex"),
      Buffer.from("9a7fffffff", "hex"),
    ]) {
      p.request(id, intent, { persona: "admin" });
      const r = await p.response(id++);
      assert.deepEqual([r.status, r.error], ["FAILURE", "SEMANTIC"]);
    }
    p.request(id, { op: "system.health", target: "kernel://", args: {} }, { persona: "admin" });
    assert.equal((await p.response(id)).status, "SUCCESS", "the session survives bad intents");
    p.close();
    await t.stop();
    removeHome(t.home);
  });

  it("survives 10,000 connection attempts and still serves", async () => {
    const t = await startKernel({ maxSessions: 256 });
    let done = 0;
    for (let batch = 0; batch < 40; batch++) {
      await Promise.all(
        Array.from(
          { length: 250 },
          () =>
            new Promise<void>((resolve) => {
              const s = net.connect(t.k.socketPath);
              s.on("connect", () => s.destroy());
              // a refused attempt (full backlog) counts too: what matters is that the kernel survives it
              s.on("close", () => {
                done++;
                resolve();
              });
              s.on("error", () => {});
            }),
        ),
      );
    }
    assert.equal(done, 10_000);
    const c = await t.admin();
    assert.equal((await c.system.health()).status, "ok");
    await until(() => t.k.sessionCount <= 1, 30_000, "abandoned sessions cleaned up");
    await t.stop();
    removeHome(t.home);
  });

  it("drops a peer that never reads its responses instead of buffering without bound", async () => {
    const t = await startKernel({ maxWriteBuffer: 256 * 1024, maxInFlight: 100_000 });
    const p = await RawPeer.admin(t);
    const c = await t.admin();
    p.sock.pause();
    // Small answers (below what the budget of answers in preparation counts): queued, not refused.
    // A large one (system.describe's op table, a read) past the session's budget with its queue
    // unread would be refused RESOURCE instead of queued.
    for (let i = 0; i < 20_000; i++)
      p.request(1000 + i, { op: "system.health", target: "kernel://", args: {} }, { persona: "admin" });
    await until(() => t.k.sessionCount === 1, 10_000, "the non-reading session is dropped");
    assert.equal((await c.system.health()).status, "ok");
    p.close();
    await t.stop();
    removeHome(t.home);
  });

  it("drops a peer that sends PINGs and never reads the PONGs (each PONG is queued like an answer)", async () => {
    const t = await startKernel({ maxWriteBuffer: 64 * 1024 });
    const p = await RawPeer.admin(t);
    const c = await t.admin();
    p.sock.pause();
    // 200,000 PINGs: ~2.6 MB of PONGs queued if the kernel kept them all, 40 times its bound.
    const ping = encodeMessage({ type: "PING", body: { seq: 1 } });
    const burst = Buffer.concat(Array.from({ length: 1000 }, () => ping));
    for (let i = 0; i < 200 && !p.sock.destroyed; i++) await new Promise<void>((r) => p.sock.write(burst, () => r()));
    await until(() => t.k.sessionCount === 1, 30_000, "the non-reading session is dropped");
    assert.equal((await c.system.health()).status, "ok");
    const rec = await auditRecord(t.k, (r) => r.op === "session.error" && r.errorClass === "RESOURCE", "the drop's record");
    assert.match(rec.message ?? "", /^SLOW_CONSUMER/);
    p.close();
    await t.stop();
    removeHome(t.home);
  });
});
