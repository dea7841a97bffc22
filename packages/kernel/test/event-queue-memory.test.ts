import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { encodeIntent, encodeMessage, type Message } from "@kpip/protocol";
import { adminIdentity, type TestKernel, withKernel } from "./harness.js";
import { liveBytes } from "./live-bytes.js";
import { RawPeer } from "./wire.js";

const MiB = 1024 * 1024;

/**
 * An admin session subscribed to `topic` that stops reading, a 4 MiB event already written to it
 * (so what follows waits in its subscription's queue), kept alive by a PING now and then.
 */
async function stalledSubscriber(t: TestKernel, topic: string): Promise<{ close(): void }> {
  const p = await RawPeer.connect(t.k.socketPath);
  await p.handshake(adminIdentity(t.k), [Buffer.from(t.adminToken, "base64url")]);
  p.request(1, { op: "event.subscribe", target: topic, args: {} }, { persona: "admin" });
  assert.equal((await p.response(1)).status, "SUCCESS");
  p.stall();
  const admin = await t.admin();
  await admin.events.emit(topic, { big: new Uint8Array(4 * MiB).fill(7) });
  return { close: () => p.close() };
}

describe("an event waiting for a subscriber costs the kernel what it is counted as", () => {
  it("holds a copy of its data, not the REQUEST frame it came in: a one-byte byte string emitted in 1 MiB frames costs its counted bytes", async () => {
    await withKernel({}, async (t) => {
      const sub = await stalledSubscriber(t, "topic://held/x");
      try {
        const e = await RawPeer.connect(t.k.socketPath);
        await e.handshake(adminIdentity(t.k), [Buffer.from(t.adminToken, "base64url")]);
        // An unknown REQUEST field is ignored (PROTOCOL §10): it only makes the frame the data is a view of large.
        const pad = Buffer.alloc(MiB, 1);
        const before = liveBytes();
        const queued = t.k.events.queuedBytes;
        for (let i = 0; i < 40; i++) {
          const id = 10 + i;
          const intent = encodeIntent({ op: "event.emit", target: "topic://held/x", args: { data: { b: new Uint8Array([i]) } } });
          const body = { version: 1, persona: "admin", id, intent, context: { persona: "admin" }, caps: [1], pad };
          e.send(encodeMessage({ type: "REQUEST", body } as unknown as Message, id));
          const r = await e.response(id);
          assert.deepEqual([r.status, r.payload], ["SUCCESS", { subscribers: 1 }]);
        }
        const counted = t.k.events.queuedBytes - queued;
        const held = liveBytes() - before;
        e.close();
        assert.ok(counted > 0, "the events wait in the subscription's queue");
        // Each event pinned its whole frame: ~40-80 MiB held for ~20 KB counted.
        assert.ok(held < counted + 8 * MiB, `${(held / MiB).toFixed(1)} MiB held for ${counted} bytes counted`);
      } finally {
        sub.close();
      }
    });
  });

  it("an event of many small items waits as its encoding, not its decoded value: an array of 3,900 nulls costs about its counted bytes", async () => {
    await withKernel({}, async (t) => {
      const sub = await stalledSubscriber(t, "topic://held/y");
      try {
        const admin = await t.admin();
        // Under 4 KiB of intent: no intent-item rate applies. Decoded, each null is an 8-byte slot counted as 1.
        const data = new Array(3_900).fill(null);
        const before = liveBytes();
        const queued = t.k.events.queuedBytes;
        for (let i = 0; i < 800; i++) assert.equal((await admin.events.emit("topic://held/y", data)).subscribers, 1);
        const counted = t.k.events.queuedBytes - queued;
        const held = liveBytes() - before;
        assert.ok(counted > 800 * 3_900, `${counted} bytes counted: every event waits`);
        // Kept decoded: ~25 MiB of heap for ~3.4 MiB counted.
        assert.ok(
          held < 2 * counted + 4 * MiB,
          `${(held / MiB).toFixed(1)} MiB held for ${(counted / MiB).toFixed(1)} MiB counted`,
        );
      } finally {
        sub.close();
      }
    });
  });
});
