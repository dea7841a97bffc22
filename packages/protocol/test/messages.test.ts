import assert from "node:assert/strict";
import { createHash, generateKeyPairSync, sign, verify } from "node:crypto";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  attestationTranscript,
  decodeMessage,
  encodeCanonical,
  encodedBody,
  encodeFrame,
  encodeIntent,
  encodeMessage,
  encodeMessagePieces,
  FrameDecoder,
  generateIdentity,
  HEADER_SIZE,
  type Message,
  MessageError,
  MessageType,
  negotiateVersion,
  parseIdentity,
  serializeIdentity,
  withEncodedBody,
} from "../src/index.js";

const roundTrip = (m: Message) => {
  const [f] = new FrameDecoder().push(encodeMessage(m, 3));
  assert.ok(f);
  return decodeMessage(f);
};
const frameOf = (type: keyof typeof MessageType, body: unknown) => {
  const [f] = new FrameDecoder().push(encodeFrame({ type: MessageType[type] }, body as never));
  return f as NonNullable<typeof f>;
};
const bad = (code: string) => (e: unknown) => e instanceof MessageError && e.errorClass === "PROTOCOL" && e.code === code;
const intent = encodeIntent({ op: "system.health", target: "kernel://", args: {} });

describe("messages", () => {
  it("round-trip every message type", () => {
    const all: Message[] = [
      {
        type: "HELLO",
        body: { versions: [1], persona: "alice", publicKey: Buffer.alloc(32, 1), instance: Buffer.alloc(16, 2), features: [] },
      },
      {
        type: "CHALLENGE",
        body: {
          version: 1,
          session: "s",
          nonce: Buffer.alloc(32, 3),
          kernel: "k",
          heartbeatMs: 5000,
          limits: { maxBody: 100, maxInFlight: 2, dedupeWindowMs: 9 },
          features: ["shm"],
        },
      },
      { type: "ATTEST", body: { signature: Buffer.alloc(64, 4), tokens: [Buffer.from([1])] } },
      { type: "WELCOME", body: { persona: "alice", handles: [1, 0], refused: [{ index: 1, code: "EXPIRED", message: "m" }] } },
      {
        type: "REQUEST",
        body: { version: 1, persona: "alice", id: 9, intent, context: { persona: "alice" }, caps: [1, Buffer.from([7])] },
      },
      { type: "RESPONSE", body: { version: 1, id: 9, status: "FAILURE", error: "PERMISSION", message: "no" } },
      { type: "RESPONSE", body: { version: 1, id: 9, status: "PARTIAL", payload: { items: [], cursor: "x" } } },
      { type: "EVENT", body: { subscription: 1, topic: "topic://a", seq: 2, data: null, gap: 5 } },
      { type: "EVENT", body: { subscription: 1, topic: "topic://a/**", seq: 3, ended: "the capability was revoked" } },
      { type: "PING", body: { seq: 1 } },
      { type: "PONG", body: { seq: 1 } },
      { type: "GOODBYE", body: { reason: "r" } },
      { type: "ERROR", body: { class: "AUTH", code: "ATTESTATION_FAILED", message: "m", fatal: true } },
    ];
    for (const m of all) assert.deepEqual(roundTrip(m), m, m.type);
  });

  it("names the exact path of a bad or missing field, however deep", () => {
    const req = {
      version: 1,
      persona: "alice",
      id: 1,
      intent: Buffer.from([0xa0]),
      context: { persona: "alice" },
      caps: [1],
    };
    const limits = { maxBody: 4096, maxInFlight: 1, dedupeWindowMs: 1 };
    const challenge = { version: 1, session: "s", nonce: Buffer.alloc(32), kernel: "k", heartbeatMs: 1, limits, features: [] };
    const cases: [keyof typeof MessageType, unknown, string][] = [
      ["PING", {}, "ping.seq is required"],
      ["PING", [], "ping must be a map"],
      ["REQUEST", { ...req, caps: [1, "x"] }, "request.caps[1] must be a handle (unsigned integer) or a token (byte string)"],
      ["REQUEST", { ...req, caps: [Buffer.alloc(0)] }, "request.caps[0] must be a byte string of 1..8192 bytes"],
      ["REQUEST", { ...req, context: { persona: "alice", workspace: "W" } }, "request.context.workspace must be a workspace id"],
      ["REQUEST", { ...req, context: {} }, "request.context.persona is required"],
      ["REQUEST", { ...req, context: 1 }, "request.context must be a map"],
      ["CHALLENGE", { ...challenge, limits: { ...limits, maxBody: -1 } }, "challenge.limits.maxBody must be an unsigned integer"],
      ["WELCOME", { persona: "a", handles: [], refused: [{ index: 0, code: "c" }] }, "welcome.refused[0].message is required"],
      ["WELCOME", { persona: "a", handles: [0, "1"] }, "welcome.handles[1] must be an unsigned integer"],
      ["HELLO", { versions: 1 }, "hello.versions must be an array of at most 16 items"],
    ];
    for (const [type, body, message] of cases) {
      assert.throws(
        () => decodeMessage(frameOf(type, body)),
        (e: unknown) => e instanceof MessageError && e.message === message,
        message,
      );
    }
  });

  it("refuses control and bidirectional formatting characters in the context's text and HELLO.client (label), and nowhere accepts fewer", () => {
    const req = (context: Record<string, string>) => ({
      version: 1,
      persona: "alice",
      id: 1,
      intent: Buffer.from([0xa0]),
      context: { persona: "alice", ...context },
      caps: [1],
    });
    const hello = (client: string) => ({
      versions: [1],
      persona: "alice",
      publicKey: Buffer.alloc(32),
      instance: Buffer.alloc(16),
      features: [],
      client,
    });
    // A newline forging a line of the record, a terminal escape, a right-to-left override, NEL (C1), DEL.
    for (const text of [
      "run-1\nstatus       SUCCESS",
      "\u001b[8mhidden",
      "evil\u202etxt.exe",
      "a\u0085b",
      "a\u007fb",
      "\u0000",
      // Drawn as nothing or as a line break: zero-width space, line separator, tag characters, soft hyphen, BOM, filler, variation selector.
      "ops\u200bteam",
      "run-1\u2028status SUCCESS",
      "lab\u{e0041}",
      "pro\u00adduction",
      "\ufefflab",
      "\u3164",
      "l\ufe0fab",
    ]) {
      for (const field of ["execution", "domain", "traceparent"]) {
        assert.throws(
          () => decodeMessage(frameOf("REQUEST", req({ [field]: text }))),
          (e: unknown) =>
            e instanceof MessageError && e.code === "BAD_FIELD" && e.message.startsWith(`request.context.${field} must be`),
          `${field} ${JSON.stringify(text)}`,
        );
      }
      assert.throws(() => decodeMessage(frameOf("HELLO", hello(text))), bad("BAD_FIELD"));
    }
    // Printable text of any script, and the W3C traceparent, still pass.
    const good = {
      execution: "run-42 ünïcødé 実行 🚀",
      domain: "lab",
      traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    };
    assert.deepEqual((decodeMessage(frameOf("REQUEST", req(good))).body as { context: unknown }).context, {
      persona: "alice",
      ...good,
    });
    decodeMessage(frameOf("HELLO", hello("kpip-client/0.1.0 (node 20)")));
  });

  it("checks required fields and types, and ignores unknown fields", () => {
    assert.throws(() => decodeMessage(frameOf("PING", {})), bad("MISSING_FIELD"));
    assert.throws(() => decodeMessage(frameOf("PING", { seq: "1" })), bad("BAD_FIELD"));
    assert.throws(() => decodeMessage(frameOf("PING", { seq: -1 })), bad("BAD_FIELD"));
    const event = { subscription: 1, topic: "topic://a", seq: 1 };
    assert.throws(() => decodeMessage(frameOf("EVENT", { ...event, ended: 7 })), bad("BAD_FIELD"));
    assert.throws(() => decodeMessage(frameOf("EVENT", { ...event, ended: "x".repeat(1025) })), bad("BAD_FIELD"));
    assert.deepEqual(decodeMessage(frameOf("PING", { seq: 1, future: "x" })).body, { seq: 1, future: "x" });
    assert.throws(
      () =>
        decodeMessage(
          frameOf("HELLO", {
            versions: [1],
            persona: "Bad Id",
            publicKey: Buffer.alloc(32),
            instance: Buffer.alloc(16),
            features: [],
          }),
        ),
      bad("BAD_FIELD"),
    );
    assert.throws(
      () => decodeMessage(frameOf("RESPONSE", { version: 1, id: 1, status: "FAILURE", message: "m" })),
      bad("BAD_FIELD"),
    );
    assert.throws(
      () => decodeMessage(frameOf("RESPONSE", { version: 1, id: 1, status: "SUCCESS", error: "AUTH" })),
      bad("BAD_FIELD"),
    );
    assert.throws(
      () => decodeMessage(frameOf("RESPONSE", { version: 1, id: 1, status: "FAILURE", error: "AUTH" })),
      bad("MISSING_FIELD"),
    );
    assert.throws(() => decodeMessage(frameOf("RESPONSE", { version: 1, id: 1, status: "MAYBE" })), bad("BAD_FIELD"));
    assert.throws(
      () => decodeMessage(frameOf("ERROR", { class: "NOPE", code: "x", message: "m", fatal: true })),
      bad("BAD_FIELD"),
    );
    assert.throws(() => decodeMessage(frameOf("ATTEST", { signature: Buffer.alloc(63), tokens: [] })), bad("BAD_FIELD"));
  });

  it("negotiates the highest common version, or none", () => {
    assert.equal(negotiateVersion([1]), 1);
    assert.equal(negotiateVersion([3, 1, 2], [1, 2]), 2);
    assert.equal(negotiateVersion([99]), undefined);
    assert.equal(negotiateVersion([]), undefined);
  });

  it("signs exactly prefix || SHA-256(HELLO body) || SHA-256(CHALLENGE body)", () => {
    const hello = encodeCanonical({ a: 1 });
    const challenge = encodeCanonical({ nonce: Buffer.alloc(32, 9) });
    const t = attestationTranscript(hello, challenge);
    assert.equal(t.length, 79);
    assert.equal(t.subarray(0, 15).toString("latin1"), "kpip-attest-v1\0");
    assert.deepEqual(t.subarray(15, 47), createHash("sha256").update(hello).digest());
    assert.deepEqual(t.subarray(47), createHash("sha256").update(challenge).digest());
    const { privateKey, publicKey } = generateKeyPairSync("ed25519");
    const sig = sign(null, t, privateKey);
    assert.ok(verify(null, t, publicKey, sig));
    const other = attestationTranscript(hello, encodeCanonical({ nonce: Buffer.alloc(32, 8) }));
    assert.ok(!verify(null, other, publicKey, sig));
  });

  it("serialises identities and refuses tampered identity files", () => {
    const id = generateIdentity("alice/w1");
    const back = parseIdentity(serializeIdentity(id));
    assert.equal(back.persona, "alice/w1");
    assert.deepEqual(Buffer.from(back.publicKey), Buffer.from(id.publicKey));
    const doc = JSON.parse(serializeIdentity(id));
    doc.publicKey = Buffer.alloc(32).toString("base64url");
    assert.throws(() => parseIdentity(JSON.stringify(doc)), /does not match/);
    assert.throws(() => parseIdentity("nope"), /not JSON/);
    assert.throws(() => parseIdentity(JSON.stringify({ kpip: "identity/v1", persona: "x", privateKey: "AA" })), /32-byte/);
  });

  it("a response marked with its encoding frames as those bytes, the same frame as encoding it; copies carry no mark", () => {
    fc.assert(
      fc.property(
        fc.record({
          id: fc.nat(),
          status: fc.constantFrom("SUCCESS", "FAILURE", "PARTIAL"),
          payload: fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.nat(), fc.string(), fc.uint8Array({ maxLength: 70 }))),
        }),
        fc.nat(1000),
        (r, stream) => {
          const body = { version: 1, ...r };
          const msg: Message = { type: "RESPONSE", body };
          const plain = Buffer.concat(encodeMessagePieces(msg, stream, 16));
          const bytes = encodeCanonical(body as never);
          assert.equal(withEncodedBody(body, bytes), body);
          assert.deepEqual(encodedBody(body), bytes);
          assert.deepEqual(Buffer.concat(encodeMessagePieces(msg, stream, 16)), plain);
          assert.deepEqual(encodeMessage(msg, stream), plain);
          // Invisible to encoders and copies: a changed copy is encoded afresh.
          assert.deepEqual(encodeCanonical(body as never), bytes);
          assert.equal(encodedBody({ ...body, status: "FAILURE" }), undefined);
        },
      ),
      { numRuns: 200 },
    );
  });

  it("puts the stream id in the header and the body after it", () => {
    const f = encodeMessage({ type: "PING", body: { seq: 1 } }, 77);
    assert.equal(f.readUInt32BE(8), 77);
    assert.equal(f.readUInt32BE(12), f.length - HEADER_SIZE);
  });
});
