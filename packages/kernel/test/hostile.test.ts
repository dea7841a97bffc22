import assert from "node:assert/strict";
import net from "node:net";
import { describe, it } from "node:test";
import {
  encodeFrameParts,
  encodeIntent,
  encodeMessage,
  type Message,
  MessageType,
  PEER_MESSAGE_MAX_ITEMS,
  PEER_OTHER_MESSAGE_MAX_ITEMS,
} from "@kpip/protocol";
import { removeHome, startKernel, until, withKernel } from "./harness.js";
import { liveBytes } from "./live-bytes.js";
import { auditRecord, RawPeer, requestFrame } from "./wire.js";

/** Resolves once the event loop went round (a write to the kernel's socket has been read by then, or is read next). */
const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe("hostile input over the wire", () => {
  it("a PING, GOODBYE or REQUEST carrying an unknown field of 50,000 map keys is refused at its type's item bound: fatal PROTOCOL/TOO_MANY_ITEMS; the fullest REQUEST is served", async () => {
    await withKernel({}, async (t) => {
      // Unknown fields are ignored, but were decoded first: ~140 ms of the kernel's thread a frame (300 KB).
      const junk: Record<string, number> = {};
      for (let i = 0; i < 50_000; i++) junk[`k${i.toString(36)}`] = 0;
      const health = encodeIntent({ op: "system.health", target: "kernel://", args: {} });
      const context = { persona: "admin", execution: "run-1", domain: "lab" };
      const bodies: [string, Record<string, unknown>][] = [
        ["PING", { seq: 1, junk }],
        ["GOODBYE", { junk }],
        ["REQUEST", { version: 1, persona: "admin", id: 1, intent: health, context, caps: [1], junk }],
      ];
      for (const [type, body] of bodies) {
        const p = await RawPeer.admin(t);
        p.sendMessage({ type, body } as unknown as Message, type === "REQUEST" ? 1 : 0);
        const e = await p.next("ERROR");
        assert.deepEqual([e.body.class, e.body.code, e.body.fatal], ["PROTOCOL", "TOO_MANY_ITEMS", true], type);
        const bound = type === "REQUEST" ? PEER_MESSAGE_MAX_ITEMS[MessageType.REQUEST] : PEER_OTHER_MESSAGE_MAX_ITEMS;
        assert.match(e.body.message, new RegExp(`more than ${bound} data items`), type);
        await until(() => p.closed);
      }
      // The most items a REQUEST holds: a full context and 64 capabilities.
      const p = await RawPeer.admin(t);
      const caps = new Array<number>(64).fill(1);
      p.sendMessage({ type: "REQUEST", body: { version: 1, persona: "admin", id: 2, intent: health, context, caps } }, 2);
      assert.equal((await p.response(2)).status, "SUCCESS");
      p.close();
    });
  });

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
    // It still serves: the handshake may wait behind the flood's closes on a busy machine (a full
    // run at load ~20 took past the client's 10 s default), which is not what this asserts.
    const c = await t.admin({ connectTimeoutMs: 120_000 });
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
    // No control-frame rate (which would end it after its burst, control-frames.test): the write buffer's bound is what is tested.
    const t = await startKernel({ maxWriteBuffer: 64 * 1024, controlFrameRate: 0 });
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

  it("an attested session that trickles a large frame a byte per read holds about what it sent, not an object per read; the frame is served whole", async () => {
    // Reads not held (readHoldMs 0): at the default each read past a frame's eighth waits 50 ms.
    await withKernel({ readHoldMs: 0 }, async (t) => {
      const p = await RawPeer.admin(t);
      const data = Buffer.alloc(2 * 1024 * 1024);
      for (let i = 0; i < data.length; i++) data[i] = (i * 31 + 7) & 0xff;
      const frame = requestFrame(1, { op: "storage.write", target: "obj://ws1/trickled", args: { data } }, { persona: "admin" });
      const TRICKLED = 100_000;
      const before = liveBytes();
      // One byte per read: each byte is sent only once the kernel has taken the one before.
      for (let i = 0; i < TRICKLED; i++) {
        p.send(frame.subarray(i, i + 1));
        while (t.k.partialFrames.received !== i + 1) {
          assert.ok(!p.closed, "the session stays open");
          await turn();
        }
        if (i % 10_007 === 0 || i === TRICKLED - 1) {
          const { received, retained } = t.k.partialFrames;
          assert.ok(retained <= 3 * received + 64 * 1024, `${retained} bytes held for ${received} received`);
        }
      }
      // Before the fix ~200 bytes of heap and buffers per byte (a chunk and a view per read): 20 MB here.
      const grown = liveBytes() - before;
      assert.ok(grown < 8 * 1024 * 1024, `the kernel's heap grew ${grown} bytes for ${TRICKLED} bytes trickled`);
      p.send(frame.subarray(TRICKLED));
      assert.equal((await p.response(1)).status, "SUCCESS");
      assert.deepEqual(t.k.partialFrames, { received: 0, retained: 0 });
      const c = await t.admin();
      assert.ok(Buffer.from((await c.storage.read("obj://ws1/trickled")).data).equals(data), "the object is the bytes sent");
      p.close();
    });
  });
});
