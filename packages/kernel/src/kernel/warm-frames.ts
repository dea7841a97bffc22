import {
  COPY_BELOW,
  encodeCanonical,
  encodeMessage,
  FrameReader,
  framePieces,
  type Message,
  peerDecodeLimits,
} from "@kpip/protocol";
import { encodeBatch, type JournalBatch } from "../store/audit-journal.js";

/**
 * Rounds of {@link warmFramePath}: V8 gives a function feedback only after a few calls (8× its
 * bytecode size run, Node 20), and optimizes it only after some 100 KB more; 16 rounds record
 * every shape below in the feedback and optimize nothing on them alone.
 */
export const WARM_ROUNDS = 16;

/**
 * What the kernel's frame path meets besides requests and answers, which a session meets only
 * seconds in: its first heartbeat (the kernel's PING and the peer's PONG, the peer's PING and the
 * kernel's PONG), a GOODBYE, an ERROR. Seen first there, after the path was optimized on
 * requests and answers alone, they deoptimized the codec once per process (`framePieces`,
 * `encodeFramePieces`, `writeMap`, `decodeMessage`) and ~60 ms of recompiling followed, inside
 * the first seconds' requests (BENCHMARKS.md, rounds twenty-six and twenty-eight).
 */
function shapes(): { inbound: Buffer; outbound: Message[]; answer: Message } {
  const intent = encodeCanonical({ op: "bench.noop", target: "kernel://" });
  const request: Message = {
    type: "REQUEST",
    body: { version: 1, persona: "warm", id: 1, intent, context: { persona: "warm" }, caps: [1] },
  };
  const inbound: Message[] = [
    request,
    { type: "PING", body: { seq: 1 } },
    { type: "PONG", body: { seq: 1 } },
    { type: "GOODBYE", body: { reason: "warm" } },
    { type: "ERROR", body: { class: "INTERNAL", code: "WARM", message: "warm", fatal: false } },
  ];
  const outbound: Message[] = [
    { type: "PING", body: { seq: 1 } },
    { type: "PONG", body: { seq: 1 } },
    { type: "GOODBYE", body: { reason: "warm" } },
    { type: "ERROR", body: { class: "INTERNAL", code: "WARM", message: "warm", fatal: true } },
  ];
  const answer: Message = { type: "RESPONSE", body: { version: 1, id: 1, status: "SUCCESS", payload: { ok: true } } };
  return { inbound: Buffer.concat(inbound.map((m) => encodeMessage(m))), outbound, answer };
}

/**
 * An audit batch with a signed checkpoint: its time is a double (`Date.now()`), where a
 * request's batch has only small integers for `encodeBatch`'s numbers.
 */
function checkpointBatch(): JournalBatch {
  const bytes = new Uint8Array(32);
  return {
    rows: [{ seq: 1, hash: bytes, record: bytes }],
    dedupe: [],
    journalUpTo: 0,
    checkpoints: [{ seq: 1, hash: bytes, time: Date.now() + 0.5, kernel: "warm", publicKey: bytes, signature: bytes }],
  };
}

let warmed = false;

/**
 * Runs the frame codec once per process on every shape above, before the first session: decodes
 * them as a session's reader does, encodes them as its sends and answers do (the answer into the
 * shared writer, as a socket's), and encodes an audit batch with a checkpoint. Nothing leaves:
 * no channel, socket, store or record is touched; the frames and batch are dropped.
 */
export function warmFramePath(rounds = WARM_ROUNDS): void {
  if (warmed) return;
  warmed = true;
  const { inbound, outbound, answer } = shapes();
  const reader = new FrameReader(64 * 1024);
  reader.decodeLimits = peerDecodeLimits;
  const batch = checkpointBatch();
  const into = Buffer.allocUnsafe(4096);
  let seen = 0;
  for (let i = 0; i < rounds; i++) {
    reader.push(
      inbound,
      () => {
        seen++;
        return true;
      },
      (e) => {
        throw e;
      },
    );
    for (const m of outbound) framePieces(m, 0);
    framePieces(answer, 1, COPY_BELOW);
    encodeBatch(batch, into);
  }
  if (seen !== rounds * 5) throw new Error(`frame warm-up decoded ${seen} messages, not ${rounds * 5}`);
}
