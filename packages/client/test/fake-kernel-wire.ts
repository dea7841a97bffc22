/**
 * The wire side of the client tests' fake kernels (FakeKernel in harness.ts, the stall-peer.ts
 * worker): a Unix-socket server that hands each message a client sends to the test, decoded, and
 * the handshake answers a kernel gives. No test runner hooks nor client imports here (a worker loads it).
 */
import net from "node:net";
import { decodeMessage, encodeMessage, FrameDecoder, type Message } from "@kpip/protocol";

/** What a fake kernel does with one message (and its stream); "stop" drops the rest of that read (the connection is gone). */
export type OnMessage = (m: Message, stream: number) => "stop" | undefined;

/** A server calling `accepted` for each connection; the handler it returns sees the connection's messages in order. */
export function messageServer(accepted: (s: net.Socket) => OnMessage): net.Server {
  return net.createServer((s) => {
    const on = accepted(s);
    const d = new FrameDecoder();
    s.on("error", () => {});
    s.on("data", (chunk) => {
      for (const f of d.push(chunk)) if (on(decodeMessage(f), f.stream) === "stop") break;
    });
  });
}

/** The CHALLENGE a fake kernel answers a HELLO with (a zero nonce: the fakes check no signature). */
export function challengeFrame(session: string, kernel: string, heartbeatMs: number, maxBody: number): Uint8Array {
  const limits = { maxBody, maxInFlight: 64, dedupeWindowMs: 1000 };
  return encodeMessage({
    type: "CHALLENGE",
    body: { version: 1, session, nonce: Buffer.alloc(32), kernel, heartbeatMs, limits, features: [] },
  });
}

/** The WELCOME a fake kernel answers any ATTEST with: persona alice. */
export const welcomeFrame = (): Uint8Array => encodeMessage({ type: "WELCOME", body: { persona: "alice", handles: [] } });

/** A kernel's answer to its peer's GOODBYE (then it closes the connection). */
export const goodbyeFrame = (): Uint8Array => encodeMessage({ type: "GOODBYE", body: { reason: "peer said goodbye" } });
