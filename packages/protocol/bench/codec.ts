/**
 * `npm run bench:codec [-- --json]`: ns per operation for a typical request — a REQUEST with
 * a 256-byte storage.write intent — and its RESPONSE, with cbor-x's own (non-canonical)
 * encode/decode of the same body as a reference, and the two-pass decode the single pass
 * replaced (test/reference.ts). Median of 5 runs of ~0.5 s each.
 */
import { decode as cborxDecode, encode as cborxEncode } from "cbor-x";
import {
  decodeIntent,
  decodeMessage,
  encodeIntent,
  encodeMessage,
  FrameDecoder,
  intentHash,
  type Message,
  messageTypeName,
  validateMessage,
} from "../src/index.js";
import { decodeCanonicalReference } from "../test/reference.js";

const json = process.argv.includes("--json");
const intentValue = { op: "storage.write", target: "obj://ws1/notes/today.txt", args: { data: new Uint8Array(256).fill(42) } };
const intent = encodeIntent(intentValue);
const request: Message = {
  type: "REQUEST",
  body: { version: 1, persona: "alice", id: 12345, intent, context: { persona: "alice", workspace: "ws1" }, caps: [1] },
};
const response: Message = {
  type: "RESPONSE",
  body: { version: 1, id: 12345, status: "SUCCESS", payload: { generation: 3, size: 256 } },
};
const requestFrame = encodeMessage(request, 12345);
const responseFrame = encodeMessage(response, 12345);
const plainBody = { ...request.body };
const cborxBytes = cborxEncode(plainBody);

function measure(name: string, fn: () => unknown): void {
  let iterations = 1000;
  for (;;) {
    const t = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) fn();
    if (Number(process.hrtime.bigint() - t) > 5e7) break;
    iterations *= 4;
  }
  const runs: number[] = [];
  for (let r = 0; r < 5; r++) {
    const t = process.hrtime.bigint();
    for (let i = 0; i < iterations * 10; i++) fn();
    runs.push(Number(process.hrtime.bigint() - t) / (iterations * 10));
  }
  runs.sort((a, b) => a - b);
  const ns = runs[2] as number;
  if (json) console.log(JSON.stringify({ name, unit: "ns/op", value: Math.round(ns) }));
  else console.log(`${name.padEnd(36)} ${ns.toFixed(0).padStart(8)} ns/op`);
}

measure("codec.intent_encode", () => encodeIntent(intentValue));
measure("codec.intent_hash", () => intentHash(intent));
measure("codec.intent_decode", () => decodeIntent(intent));
measure("codec.request_encode", () => encodeMessage(request, 12345));
measure("codec.request_decode", () => {
  for (const f of new FrameDecoder().push(requestFrame)) decodeMessage(f);
});
measure("codec.response_encode", () => encodeMessage(response, 12345));
measure("codec.response_decode", () => {
  for (const f of new FrameDecoder().push(responseFrame)) decodeMessage(f);
});
const twoPass = (f: { type: number; body: Uint8Array }) => {
  const type = messageTypeName(f.type) as Message["type"];
  validateMessage(type, decodeCanonicalReference(f.body));
};
measure("reference.request_decode (two passes)", () => {
  for (const f of new FrameDecoder().push(requestFrame)) twoPass(f);
});
measure("reference.response_decode (two passes)", () => {
  for (const f of new FrameDecoder().push(responseFrame)) twoPass(f);
});
measure("cborx.request_body_encode (reference)", () => cborxEncode(plainBody));
measure("cborx.request_body_decode (reference)", () => cborxDecode(cborxBytes));
