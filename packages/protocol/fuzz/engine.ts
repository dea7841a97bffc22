/**
 * A mutation fuzzer for the protocol decoders. Seeds are valid frames of every message type
 * and valid intents; each iteration mutates one (bit flips, interesting bytes, truncation,
 * extension, length lies, splices, duplications, nesting bombs, huge declared lengths) and
 * feeds it, in random chunks, through FrameDecoder → decodeMessage → decodeIntent, and
 * straight into decodeCanonical / decodeIntent.
 *
 * The oracle: every call returns or throws a CodecError. Anything else (TypeError,
 * RangeError, stack overflow), an input that takes over 100 ms, a decoded message that
 * does not re-encode to the same body bytes, or a decodeCanonical verdict other than the
 * two-pass reference's (test/reference.ts: same value, or the same error code and message)
 * is a finding.
 */
import { inspect, isDeepStrictEqual } from "node:util";
import {
  CodecError,
  decodeCanonical,
  decodeIntent,
  decodeMessage,
  encodeIntent,
  encodeMessage,
  FrameDecoder,
  HEADER_SIZE,
  type Message,
} from "../src/index.js";
import { decodeCanonicalReference } from "../test/reference.js";

export interface Finding {
  kind: "exception" | "slow" | "roundtrip" | "differential";
  signature: string;
  message: string;
  input: Uint8Array;
}

export interface FuzzOptions {
  iterations: number;
  seed: number;
  /** Replaces the decoding step (tests use it to check the oracle catches bugs). */
  target?: (input: Uint8Array, rand: () => number) => void;
  onProgress?: (done: number, findings: number) => void;
}

/** mulberry32: small, fast, deterministic. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const intent = encodeIntent({
  op: "storage.write",
  target: "obj://ws1/notes/today.txt",
  args: { data: new Uint8Array(40).fill(7), n: 5 },
});
const key = new Uint8Array(32).fill(1);
/** One valid message of every type: the fuzzer's seeds, and the equivalence test's. */
export const SEED_MESSAGES: Message[] = [
  {
    type: "HELLO",
    body: { versions: [1], persona: "alice", publicKey: key, instance: new Uint8Array(16), features: ["shm"], client: "fuzz/1" },
  },
  {
    type: "CHALLENGE",
    body: {
      version: 1,
      session: "s-1",
      nonce: key,
      kernel: "k-1",
      heartbeatMs: 5000,
      limits: { maxBody: 1 << 20, maxInFlight: 64, dedupeWindowMs: 1000 },
      features: [],
    },
  },
  { type: "ATTEST", body: { signature: new Uint8Array(64).fill(3), tokens: [new Uint8Array([1, 2, 3])] } },
  { type: "WELCOME", body: { persona: "alice", handles: [1, 0], refused: [{ index: 1, code: "EXPIRED", message: "x" }] } },
  {
    type: "REQUEST",
    body: {
      version: 1,
      persona: "alice",
      id: 7,
      intent,
      context: { persona: "alice", workspace: "ws1" },
      caps: [1, new Uint8Array([9])],
    },
  },
  {
    type: "RESPONSE",
    body: { version: 1, id: 7, status: "SUCCESS", payload: { a: [1, -2, "x", new Uint8Array([1])], b: null } },
  },
  { type: "RESPONSE", body: { version: 1, id: 8, status: "FAILURE", error: "SEMANTIC", message: "no" } },
  { type: "RESPONSE", body: { version: 1, id: 9, status: "PARTIAL", payload: { items: [], cursor: "c" } } },
  { type: "EVENT", body: { subscription: 3, topic: "topic://a/b", seq: 10, data: { x: 2n ** 60n }, gap: 4 } },
  { type: "PING", body: { seq: 1 } },
  { type: "PONG", body: { seq: 1 } },
  { type: "GOODBYE", body: { reason: "bye" } },
  { type: "ERROR", body: { class: "PROTOCOL", code: "BAD_MAGIC", message: "m", fatal: true } },
];
const SEEDS: Uint8Array[] = [...SEED_MESSAGES.map((m, i) => encodeMessage(m, i)), intent];
const INTERESTING = [0x00, 0xff, 0x7f, 0x80, 0x18, 0x19, 0x1a, 0x1b, 0x1f, 0x9f, 0xbf, 0x5f, 0x7f, 0xf9, 0xfa, 0xfb, 0xc0, 0xd8];

/** One random mutation round (1–4 edits) of `src`; exported for the live kernel fuzzer. */
export function mutate(src: Uint8Array, r: () => number): Uint8Array {
  const pick = (n: number) => Math.floor(r() * n);
  let b = Buffer.from(src);
  const rounds = 1 + pick(4);
  for (let k = 0; k < rounds; k++) {
    switch (pick(11)) {
      case 0: // bit flip
        if (b.length) {
          const i = pick(b.length);
          b[i] = (b[i] as number) ^ (1 << pick(8));
        }
        break;
      case 1: // interesting byte
        if (b.length) b[pick(b.length)] = INTERESTING[pick(INTERESTING.length)] as number;
        break;
      case 2: // truncate
        b = b.subarray(0, pick(b.length + 1));
        break;
      case 3: // extend with random bytes
        b = Buffer.concat([b, Buffer.from(Array.from({ length: 1 + pick(32) }, () => pick(256)))]);
        break;
      case 4: // header length lie
        if (b.length >= HEADER_SIZE)
          b.writeUInt32BE(([0, 1, b.length, 0xffffffff, pick(0xffffffff)][pick(5)] as number) >>> 0, 12);
        break;
      case 5: // splice with another seed
        {
          const o = SEEDS[pick(SEEDS.length)] as Uint8Array;
          const at = pick(b.length + 1);
          b = Buffer.concat([b.subarray(0, at), Buffer.from(o.subarray(pick(o.length)))]);
        }
        break;
      case 6: // duplicate a region
        if (b.length) {
          const s = pick(b.length);
          const e = s + pick(Math.min(64, b.length - s) + 1);
          b = Buffer.concat([b.subarray(0, e), b.subarray(s, e), b.subarray(e)]);
        }
        break;
      case 7: // nesting bomb in the body
        {
          const bomb = Buffer.alloc(1000 + pick(100_000), [0x81, 0xa1][pick(2)] as number);
          b = Buffer.concat([b.subarray(0, Math.min(b.length, HEADER_SIZE)), bomb]);
          if (b.length >= HEADER_SIZE) b.writeUInt32BE(b.length - HEADER_SIZE, 12);
        }
        break;
      case 8: // huge declared array/map/bytes/text
        {
          const head = [0x9b, 0xbb, 0x5b, 0x7b, 0x9a, 0xba, 0x5a, 0x7a][pick(8)] as number;
          const lie = Buffer.from([head, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
          const at = pick(b.length + 1);
          b = Buffer.concat([b.subarray(0, at), lie, b.subarray(at)]);
        }
        break;
      case 9: // random CBOR head somewhere
        if (b.length) b[pick(b.length)] = (pick(8) << 5) | pick(32);
        break;
      default: // swap two bytes
        if (b.length > 1) {
          const i = pick(b.length);
          const j = pick(b.length);
          const t = b[i] as number;
          b[i] = b[j] as number;
          b[j] = t;
        }
    }
  }
  return b;
}

/** The default target: the whole decode path over one input, in random chunks. */
export function decodeAll(input: Uint8Array, r: () => number): void {
  const d = new FrameDecoder(1 << 20);
  try {
    let pos = 0;
    while (pos < input.length) {
      const n = 1 + Math.floor(r() * Math.min(64, input.length - pos));
      for (const f of d.push(input.subarray(pos, pos + n))) {
        const m = decodeMessage(f);
        // Canonical round trip: what decodes must re-encode to the very same body.
        const again = encodeMessage(m, f.stream, f.flags).subarray(HEADER_SIZE);
        if (!Buffer.from(again).equals(Buffer.from(f.body))) throw new RoundTripError(`${m.type} re-encodes differently`);
        if (m.type === "REQUEST") {
          try {
            decodeIntent(m.body.intent);
          } catch (e) {
            if (!(e instanceof CodecError)) throw e;
          }
        }
      }
      pos += n;
    }
    d.end();
  } catch (e) {
    if (!(e instanceof CodecError)) throw e;
  }
  try {
    decodeIntent(input);
  } catch (e) {
    if (!(e instanceof CodecError)) throw e;
  }
  const fast = verdict(() => decodeCanonical(input));
  if (
    !isDeepStrictEqual(
      fast,
      verdict(() => decodeCanonicalReference(input)),
    )
  ) {
    throw new DifferentialError(`decodeCanonical and the two-pass reference disagree: ${inspect(fast).slice(0, 200)}`);
  }
}

/** A decoder's result or its error's code and message (anything but a CodecError is thrown on). */
function verdict(f: () => unknown): unknown {
  try {
    return { value: f() };
  } catch (e) {
    if (!(e instanceof CodecError)) throw e;
    return { error: e.constructor.name, code: e.code, message: e.message };
  }
}

class RoundTripError extends Error {}
class DifferentialError extends Error {}

/** CPU time (ms) above which one decode of one small input is a finding. */
const SLOW_MS = 100;

/** The process's CPU time spent in `f`, in ms. */
function cpuMs(f: () => void): number {
  const before = process.cpuUsage();
  f();
  const d = process.cpuUsage(before);
  return (d.user + d.system) / 1000;
}

/** Runs the fuzzer; returns findings deduplicated by signature. */
export function fuzz(opts: FuzzOptions): { iterations: number; findings: Finding[] } {
  const r = prng(opts.seed);
  const target = opts.target ?? decodeAll;
  const findings = new Map<string, Finding>();
  const step = Math.max(1, Math.floor(opts.iterations / 10));
  for (let i = 0; i < opts.iterations; i++) {
    const input = mutate(SEEDS[Math.floor(r() * SEEDS.length)] as Uint8Array, r);
    const run = () => {
      try {
        target(input, r);
      } catch (e) {
        const err = e as Error;
        const kind = e instanceof RoundTripError ? "roundtrip" : e instanceof DifferentialError ? "differential" : "exception";
        const signature = `${kind}:${err.name}:${(err.stack ?? "").split("\n")[1]?.trim() ?? err.message}`;
        if (!findings.has(signature)) findings.set(signature, { kind, signature, message: err.message, input });
      }
    };
    // CPU time, not wall time: another process on a busy machine must not make an input "slow".
    // An input is slow only if it stays slow when run twice more (a GC pause does not repeat).
    let ms = cpuMs(run);
    if (ms > SLOW_MS) ms = Math.min(ms, cpuMs(run), cpuMs(run));
    if (ms > SLOW_MS) {
      const signature = `slow:${input.length}`;
      if (!findings.has(signature)) findings.set(signature, { kind: "slow", signature, message: `${ms.toFixed(0)} ms`, input });
    }
    if ((i + 1) % step === 0) opts.onProgress?.(i + 1, findings.size);
  }
  return { iterations: opts.iterations, findings: [...findings.values()] };
}
