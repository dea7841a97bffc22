import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { encodeIntent, encodeMessage, type Message } from "@kpip/protocol";
import { adminIdentity, withTasks } from "./harness.js";
import { liveBytes } from "./live-bytes.js";
import { RawPeer } from "./wire.js";

const MiB = 1024 * 1024;

describe("a task's input waits in the kernel as what it is counted as", () => {
  it("holds a copy of the input, not the REQUEST frame it came in: a one-byte byte string submitted in 1 MiB frames costs its counted bytes", async () => {
    await withTasks({ computeWorkers: 1 }, { hang: "hang" }, async (t) => {
      const p = await RawPeer.connect(t.k.socketPath);
      await p.handshake(adminIdentity(t.k), [Buffer.from(t.adminToken, "base64url")]);
      // An unknown REQUEST field is ignored (PROTOCOL §10): it only makes the frame the input is a view of large.
      const pad = Buffer.alloc(MiB, 1);
      const before = liveBytes();
      for (let i = 0; i < 40; i++) {
        const id = 10 + i;
        const intent = encodeIntent({
          op: "compute.submit",
          target: "op://task/hang",
          args: { args: { b: new Uint8Array([i]) } },
        });
        const body = { version: 1, persona: "admin", id, intent, context: { persona: "admin" }, caps: [1], pad };
        p.send(encodeMessage({ type: "REQUEST", body } as unknown as Message, id));
        const r = await p.response(id);
        assert.equal(r.status, "DEFERRED", JSON.stringify(r));
      }
      const held = liveBytes() - before;
      p.close();
      // Each queued task pinned its whole frame: ~40-80 MiB held for inputs of a few bytes.
      assert.ok(held < 8 * MiB, `${(held / MiB).toFixed(1)} MiB held for 40 inputs of a few bytes`);
    });
  });
});
