/**
 * A worker thread that plays a kernel for one client while the client's own thread is stalled:
 * it runs on its own event loop, so it can write while the test's loop is busy, and it reports
 * through shared memory (readable from a busy loop) when its bytes are in the client's socket.
 * Unlike a kernel process it never judges the stalled client silent, so the stall can last as
 * long as the test needs (a real kernel drops a peer silent for 3 intervals, the same bound the
 * client applies: a stall over it is always at the kernel's edge).
 */
import type net from "node:net";
import { parentPort, workerData } from "node:worker_threads";
import { encodeMessage } from "@kpip/protocol";
import { challengeFrame, goodbyeFrame, messageServer, welcomeFrame } from "./fake-kernel-wire.js";

/** Slots of the shared Int32Array. */
export const LISTENING = 0;
/** PINGs written to the client (counted once the write completed: the bytes are in its socket). */
export const PINGS_WRITTEN = 1;
/** PONGs read from the client. */
export const PONGS_READ = 2;
/** The client's own PINGs read after its first PONG (a heartbeat tick that found the link alive). */
export const CLIENT_PINGS_AFTER_PONG = 3;
export const SLOTS = 4;

export const HEARTBEAT_MS = 500;

// Only as the worker (the test imports the slots above).
const data = workerData as { stallPeer?: { path: string; shared: SharedArrayBuffer } } | null;
if (parentPort && data?.stallPeer) {
  const { path, shared } = data.stallPeer;
  const counts = new Int32Array(shared);
  let client: net.Socket | undefined;
  const server = messageServer((s) => {
    client = s;
    return (m) => {
      if (m.type === "HELLO") {
        s.write(challengeFrame("s1", "stall-peer", HEARTBEAT_MS, 1 << 20));
      } else if (m.type === "ATTEST") {
        s.write(welcomeFrame());
      } else if (m.type === "PONG") {
        Atomics.add(counts, PONGS_READ, 1);
      } else if (m.type === "PING") {
        if (Atomics.load(counts, PONGS_READ) > 0) Atomics.add(counts, CLIENT_PINGS_AFTER_PONG, 1);
        s.write(encodeMessage({ type: "PONG", body: { seq: m.body.seq } }));
      } else if (m.type === "GOODBYE") {
        s.end(goodbyeFrame());
      }
      return undefined;
    };
  });
  // "ping": the test's thread is stalled from now on; PING it, and count the PING once written.
  parentPort.on("message", (msg: string) => {
    if (msg === "ping")
      client?.write(encodeMessage({ type: "PING", body: { seq: 1 } }), () => Atomics.add(counts, PINGS_WRITTEN, 1));
    if (msg === "stop") server.close(() => parentPort?.close());
  });
  server.listen(path, () => Atomics.store(counts, LISTENING, 1));
}
