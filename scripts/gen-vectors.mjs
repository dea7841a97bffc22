#!/usr/bin/env node
// Regenerates spec/vectors/*.json from the definitions below with the built @kpip/protocol.
// Deterministic: fixed keys, ids and times. Usage: npm run build && node scripts/gen-vectors.mjs
import { createPrivateKey, sign } from "node:crypto";
import { writeFileSync } from "node:fs";
import {
  attenuate,
  attestationTranscript,
  chainSignature,
  decodeCanonical,
  derivedTokenId,
  encodeCanonical,
  encodeIntent,
  encodeMessage,
  encodeToken,
  intentHash,
  mintToken,
  rootSignature,
  tokenToString,
} from "../packages/protocol/dist/src/index.js";

const out = (name, doc) =>
  writeFileSync(new URL(`../spec/vectors/${name}`, import.meta.url), `${JSON.stringify(doc, null, 2)}\n`);
const hex = (b) => Buffer.from(b).toString("hex");
const b = (h) => Buffer.from(h, "hex");
/** CBOR value → JSON-ish: byte strings {"$bytes": hex}, integers beyond ±2^53 {"$int": decimal}. */
const j = (v) =>
  v instanceof Uint8Array
    ? { $bytes: hex(v) }
    : typeof v === "bigint"
      ? { $int: v.toString() }
      : Array.isArray(v)
        ? v.map(j)
        : v && typeof v === "object"
          ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, j(x)]))
          : v;

const key32 = b("03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8");
const intentBytes = encodeIntent({
  op: "storage.write",
  target: "obj://ws1/notes/today.txt",
  args: { data: Buffer.from("hello") },
});

// ---- frames ----------------------------------------------------------------------------
const validMessages = [
  [
    "hello",
    {
      type: "HELLO",
      body: { versions: [1], persona: "alice", publicKey: key32, instance: b("00112233445566778899aabbccddeeff"), features: [] },
    },
    0,
  ],
  [
    "hello-with-client-and-maxbody",
    {
      type: "HELLO",
      body: {
        versions: [1, 2],
        persona: "alice/worker-1",
        publicKey: key32,
        instance: b("0f0e0d0c0b0a09080706050403020100"),
        features: ["shm"],
        client: "py-kpip/0.1",
        maxBody: 1048576,
      },
    },
    0,
  ],
  [
    "challenge",
    {
      type: "CHALLENGE",
      body: {
        version: 1,
        session: "9a0c2b1e-0000-4000-8000-000000000001",
        nonce: b("aa".repeat(32)),
        kernel: "k-00000000-0000-4000-8000-000000000000",
        heartbeatMs: 5000,
        limits: { maxBody: 16777216, maxInFlight: 1024, dedupeWindowMs: 300000 },
        features: [],
      },
    },
    0,
  ],
  ["attest-no-tokens", { type: "ATTEST", body: { signature: b("bb".repeat(64)), tokens: [] } }, 0],
  ["attest-two-tokens", { type: "ATTEST", body: { signature: b("bb".repeat(64)), tokens: [b("8401"), b("840102")] } }, 0],
  ["welcome", { type: "WELCOME", body: { persona: "alice", handles: [1, 2] } }, 0],
  [
    "welcome-refused",
    {
      type: "WELCOME",
      body: { persona: "alice", handles: [1, 0], refused: [{ index: 1, code: "EXPIRED", message: "token expired" }] },
    },
    0,
  ],
  [
    "request-handle",
    {
      type: "REQUEST",
      body: {
        version: 1,
        persona: "alice",
        id: 1,
        intent: intentBytes,
        context: { persona: "alice", workspace: "ws1" },
        caps: [1],
      },
    },
    1,
  ],
  [
    "request-inline-token-and-trace",
    {
      type: "REQUEST",
      body: {
        version: 1,
        persona: "alice",
        id: 4294967296,
        intent: intentBytes,
        context: { persona: "alice", traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" },
        caps: [b("84010203")],
      },
    },
    0,
  ],
  [
    "response-success",
    { type: "RESPONSE", body: { version: 1, id: 1, status: "SUCCESS", payload: { generation: 1, size: 5 } } },
    1,
  ],
  [
    "response-failure",
    {
      type: "RESPONSE",
      body: {
        version: 1,
        id: 2,
        status: "FAILURE",
        error: "PERMISSION",
        message: "no capability grants storage.write on obj://ws2/x",
      },
    },
    2,
  ],
  [
    "response-partial",
    {
      type: "RESPONSE",
      body: { version: 1, id: 3, status: "PARTIAL", payload: { items: [{ path: "a", size: 1, generation: 1 }], cursor: "a" } },
    },
    3,
  ],
  [
    "response-deferred",
    {
      type: "RESPONSE",
      body: {
        version: 1,
        id: 4,
        status: "DEFERRED",
        payload: { op: "op://6d39e09911307117faec8e35d825e7b6", id: "6d39e09911307117faec8e35d825e7b6" },
      },
    },
    4,
  ],
  [
    "response-bytes-and-bigint",
    {
      type: "RESPONSE",
      body: {
        version: 1,
        id: 5,
        status: "SUCCESS",
        payload: { data: b("00ff"), big: 18446744073709551615n, neg: -18446744073709551616n },
      },
    },
    5,
  ],
  ["event", { type: "EVENT", body: { subscription: 3, topic: "topic://chat/room1", seq: 1, data: { text: "hi" } } }, 3],
  ["event-gap", { type: "EVENT", body: { subscription: 3, topic: "topic://chat/room1", seq: 42, data: null, gap: 40 } }, 3],
  ["ping", { type: "PING", body: { seq: 7 } }, 0],
  ["pong", { type: "PONG", body: { seq: 7 } }, 0],
  ["goodbye", { type: "GOODBYE", body: { reason: "client closing" } }, 0],
  ["goodbye-empty", { type: "GOODBYE", body: {} }, 0],
  [
    "error",
    { type: "ERROR", body: { class: "AUTH", code: "ATTESTATION_FAILED", message: "attestation failed", fatal: true } },
    0,
  ],
  [
    "error-with-id",
    {
      type: "ERROR",
      body: { class: "PROTOCOL", code: "UNEXPECTED_MESSAGE", message: "REQUEST before WELCOME", id: 9, fatal: true },
    },
    0,
  ],
];
const header = (type, len, { magic = "4b50", version = 1, flags = 0, reserved = "000000", stream = 0 } = {}) =>
  `${magic}${version.toString(16).padStart(2, "0")}${type.toString(16).padStart(2, "0")}${flags.toString(16).padStart(2, "0")}${reserved}${stream.toString(16).padStart(8, "0")}${len.toString(16).padStart(8, "0")}`;
const ping = hex(encodeMessage({ type: "PING", body: { seq: 7 } }));
const body = (v) => hex(encodeCanonical(v));
const frameWithBody = (type, bodyHex) => header(type, bodyHex.length / 2) + bodyHex;
const invalidFrames = [
  ["bad-magic", `0000${ping.slice(4)}`, "PROTOCOL", "BAD_MAGIC"],
  ["http-request-instead-of-kpip", hex(Buffer.from("GET / HTTP/1.1\r\n\r\n")), "PROTOCOL", "BAD_MAGIC"],
  ["frame-version-2", `4b5002${ping.slice(6)}`, "PROTOCOL", "UNSUPPORTED_VERSION"],
  ["unknown-type-0", `4b500100${ping.slice(8)}`, "PROTOCOL", "UNKNOWN_TYPE"],
  ["unknown-type-12", `4b50010c${ping.slice(8)}`, "PROTOCOL", "UNKNOWN_TYPE"],
  ["unknown-flag", `4b50010880${ping.slice(10)}`, "PROTOCOL", "UNKNOWN_FLAGS"],
  ["reserved-nonzero", `4b5001080000ff00${ping.slice(16)}`, "PROTOCOL", "RESERVED_NONZERO"],
  ["declared-length-over-16MiB", header(5, 16 * 1024 * 1024 + 1), "PROTOCOL", "TOO_LARGE"],
  ["declared-length-4GiB", header(5, 0xffffffff), "PROTOCOL", "TOO_LARGE"],
  ["truncated-body", ping.slice(0, ping.length - 2), "PROTOCOL", "TRUNCATED"],
  ["truncated-header", ping.slice(0, 20), "PROTOCOL", "TRUNCATED"],
  ["trailing-bytes-in-body", frameWithBody(8, "a1637365710700"), "PROTOCOL", "TRAILING_BYTES"],
  ["non-canonical-integer", frameWithBody(8, "a16373657118" + "07"), "PROTOCOL", "NON_CANONICAL"],
  ["unsorted-keys", frameWithBody(10, "a266726561736f6e617863666f6f01"), "PROTOCOL", "UNSORTED_KEYS"],
  ["duplicate-keys", frameWithBody(8, "a2637365710163736571" + "02"), "PROTOCOL", "DUPLICATE_KEY"],
  ["indefinite-map", frameWithBody(8, "bf6373657107ff"), "PROTOCOL", "INDEFINITE_LENGTH"],
  ["float-value", frameWithBody(8, "a1637365" + "71f93c00"), "PROTOCOL", "UNSUPPORTED_TYPE"],
  ["tagged-value", frameWithBody(8, "a1637365" + "71c11a00000000"), "PROTOCOL", "UNSUPPORTED_TAG"],
  ["undefined-value", frameWithBody(8, "a1637365" + "71f7"), "PROTOCOL", "UNSUPPORTED_TYPE"],
  ["invalid-utf8-key", frameWithBody(8, "a163c3287107"), "PROTOCOL", "INVALID_UTF8"],
  ["integer-map-key", frameWithBody(8, "a10107"), "PROTOCOL", "BAD_KEY"],
  ["float-map-key", frameWithBody(8, "a1f93c0007"), "PROTOCOL", "BAD_KEY"],
  ["proto-map-key", frameWithBody(8, `a1${body("__proto__")}07`), "PROTOCOL", "BAD_KEY"],
  ["reserved-additional-info", frameWithBody(8, "a1637365711c"), "PROTOCOL", "MALFORMED"],
  ["lone-break", frameWithBody(8, "a163736571ff"), "PROTOCOL", "MALFORMED"],
  // §5.5: a map key is read as a key (simple value, break, tag: BAD_KEY); a map's count is checked
  // against the bytes left before its first key, so a map cut inside a float key is TRUNCATED.
  ["simple-map-key", frameWithBody(8, "a1f507"), "PROTOCOL", "BAD_KEY"],
  ["break-map-key", frameWithBody(8, "a1ff07"), "PROTOCOL", "BAD_KEY"],
  ["tag-map-key", frameWithBody(8, "a1c10007"), "PROTOCOL", "BAD_KEY"],
  ["truncated-float-map-key", frameWithBody(8, "a1f9"), "PROTOCOL", "TRUNCATED"],
  ["truncated-float-value", frameWithBody(8, "a163736571f9"), "PROTOCOL", "UNSUPPORTED_TYPE"],
  // {"seq": [100 000 zeros]}: a map, a key, an array and its elements are 100 003 items.
  ["too-many-items", frameWithBody(8, `a1637365719a000186a0${"00".repeat(100_000)}`), "PROTOCOL", "TOO_MANY_ITEMS"],
  ["nesting-bomb", frameWithBody(11, "81".repeat(33) + "00"), "PROTOCOL", "TOO_DEEP"],
  ["huge-declared-array", frameWithBody(6, "9bffffffffffffffff"), "PROTOCOL", "TRUNCATED"],
  ["missing-required-field", frameWithBody(8, body({})), "PROTOCOL", "MISSING_FIELD"],
  ["wrong-field-type", frameWithBody(8, body({ seq: "7" })), "PROTOCOL", "BAD_FIELD"],
  [
    "failure-without-error-class",
    frameWithBody(6, body({ version: 1, id: 1, status: "FAILURE", message: "m" })),
    "PROTOCOL",
    "BAD_FIELD",
  ],
  [
    "success-with-error-class",
    frameWithBody(6, body({ version: 1, id: 1, status: "SUCCESS", error: "AUTH" })),
    "PROTOCOL",
    "BAD_FIELD",
  ],
  ["unknown-status", frameWithBody(6, body({ version: 1, id: 1, status: "MAYBE" })), "PROTOCOL", "BAD_FIELD"],
  [
    "failure-without-message",
    frameWithBody(6, body({ version: 1, id: 1, status: "FAILURE", error: "PERMISSION" })),
    "PROTOCOL",
    "MISSING_FIELD",
  ],
  [
    "welcome-65-refused",
    frameWithBody(
      4,
      body({
        persona: "alice",
        handles: [0],
        refused: Array.from({ length: 65 }, (_, index) => ({ index, code: "EXPIRED", message: "" })),
      }),
    ),
    "PROTOCOL",
    "BAD_FIELD",
  ],
  [
    "welcome-refused-message-too-long",
    frameWithBody(
      4,
      body({ persona: "alice", handles: [0], refused: [{ index: 0, code: "EXPIRED", message: "x".repeat(1025) }] }),
    ),
    "PROTOCOL",
    "BAD_FIELD",
  ],
  [
    "request-bad-persona-id",
    frameWithBody(
      5,
      body({ version: 1, persona: "../root", id: 1, intent: intentBytes, context: { persona: "alice" }, caps: [1] }),
    ),
    "PROTOCOL",
    "BAD_FIELD",
  ],
  [
    "hello-short-public-key",
    frameWithBody(1, body({ versions: [1], persona: "alice", publicKey: b("00"), instance: b("00".repeat(16)), features: [] })),
    "PROTOCOL",
    "BAD_FIELD",
  ],
];
out("frames.json", {
  description:
    'KPIP v1 frame vectors. Valid: `hex` is a whole frame (16-byte header + canonical CBOR body); decoding it gives `message` (type, stream, flags, body) and encoding `message` gives `hex` back. Invalid: feeding `hex` to a frame decoder (and then the message decoder) fails with `error.class` and `error.code`; TRUNCATED means the stream ended mid-frame. Byte strings in bodies are {"$bytes": hex}, integers beyond ±2^53 are {"$int": decimal}. The decoder\'s maximum body is the default 16 MiB.',
  valid: validMessages.map(([name, m, stream]) => ({
    name,
    hex: hex(encodeMessage(m, stream)),
    message: { type: m.type, stream, flags: 0, body: j(m.body) },
  })),
  invalid: invalidFrames.map(([name, h, cls, code]) => ({ name, hex: h, error: { class: cls, code } })),
});

// ---- intents ---------------------------------------------------------------------------
const validIntents = [
  ["storage-write-bytes", { op: "storage.write", target: "obj://ws1/notes/today.txt", args: { data: Buffer.from("hello") } }],
  ["storage-write-cas", { op: "storage.write", target: "obj://ws1/a", args: { data: "text", ifGeneration: 0 } }],
  ["system-health", { op: "system.health", target: "kernel://", args: {} }],
  ["with-deadline", { op: "storage.read", target: "obj://ws1/a", args: {}, constraints: { deadline: 1795490000000 } }],
  ["subscribe-pattern", { op: "event.subscribe", target: "topic://chat/*/**", args: {} }],
  // §7.3 rule 4: only the first segment of a persona:// target must be a name; the op checks the rest.
  ["persona-target-later-segment-any-seg", { op: "persona.remove", target: "persona://alice/Helper~1", args: {} }],
  ["unicode-keys-sorted-by-bytes", { op: "llm.generate", target: "kernel://", args: { z: 1, é: 2, abc: 3, 日本: 4 } }],
  [
    "nested-and-big-integers",
    {
      op: "compute.submit",
      target: "op://task/hash",
      args: { args: { n: [0, 23, 24, -25, 4294967296, 18446744073709551615n, -18446744073709551616n], ok: true, none: null } },
    },
  ],
  [
    "agent-spawn",
    {
      op: "agent.spawn",
      target: "agent://node/worker-1",
      args: { args: ["agent.js"], lifetimeMs: 60000, rights: [{ ops: ["storage.*"], targets: ["obj://ws1/**"] }] },
    },
  ],
];
const ib = (v) => hex(encodeCanonical(v));
const invalidIntents = [
  ["not-a-map", ib([1, 2]), "NOT_A_MAP"],
  ["unknown-field", ib({ op: "system.health", target: "kernel://", args: {}, extra: 1 }), "UNKNOWN_FIELD"],
  ["bad-op-uppercase", ib({ op: "Storage.write", target: "obj://ws1/a", args: {} }), "BAD_OP"],
  ["bad-op-no-dot", ib({ op: "write", target: "obj://ws1/a", args: {} }), "BAD_OP"],
  ["target-dotdot", ib({ op: "storage.read", target: "obj://ws1/../ws2/x", args: {} }), "BAD_TARGET"],
  ["target-percent-encoded", ib({ op: "storage.read", target: "obj://ws1/%2e%2e/x", args: {} }), "BAD_TARGET"],
  ["target-empty-segment", ib({ op: "storage.read", target: "obj://ws1//x", args: {} }), "BAD_TARGET"],
  ["target-unknown-scheme", ib({ op: "storage.read", target: "file:///etc/passwd", args: {} }), "BAD_TARGET"],
  ["args-not-a-map", ib({ op: "storage.read", target: "obj://ws1/a", args: [1] }), "BAD_ARGS"],
  ["missing-op", ib({ target: "obj://ws1/a", args: {} }), "BAD_OP"],
  ["missing-target", ib({ op: "storage.read", args: {} }), "BAD_TARGET"],
  ["missing-args", ib({ op: "storage.read", target: "obj://ws1/a" }), "BAD_ARGS"],
  [
    "bad-deadline",
    ib({ op: "storage.read", target: "obj://ws1/a", args: {}, constraints: { deadline: "soon" } }),
    "BAD_CONSTRAINTS",
  ],
  [
    "unknown-constraint",
    ib({ op: "storage.read", target: "obj://ws1/a", args: {}, constraints: { retries: 3 } }),
    "BAD_CONSTRAINTS",
  ],
  [
    "non-canonical-key-order",
    `a3${ib("target")}${ib("kernel://")}${ib("op")}${ib("system.health")}${ib("args")}a0`,
    "UNSORTED_KEYS",
  ],
  [
    "float-in-args",
    `a3${ib("op")}${ib("system.health")}${ib("args")}a1617af93c00${ib("target")}${ib("kernel://")}`,
    "UNSUPPORTED_TYPE",
  ],
  [
    "non-canonical-length",
    `a3${ib("op")}${ib("system.health")}${ib("args")}b800${ib("target")}${ib("kernel://")}`,
    "NON_CANONICAL",
  ],
];
out("intents.json", {
  description:
    "KPIP v1 intent vectors. Valid: `hex` is the intent's canonical CBOR; decoding gives `intent` (JSON-ish as in frames.json) and `sha256` is the intent hash (SHA-256 of exactly `hex`); encoding `intent` canonically gives `hex`. Invalid: decoding `hex` as an intent fails with class SEMANTIC and `error.code`.",
  valid: validIntents.map(([name, v]) => {
    const bytes = encodeIntent(v);
    return { name, hex: hex(bytes), intent: j(v), sha256: hex(intentHash(bytes)) };
  }),
  invalid: invalidIntents.map(([name, h, code]) => ({ name, hex: h, error: { class: "SEMANTIC", code } })),
});

// ---- tokens ----------------------------------------------------------------------------
const rootKey = b("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
const claims = {
  id: "0123456789abcdef0123456789abcdef",
  kid: "k1",
  sub: "alice",
  rights: [{ ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] }],
  limits: { "storage.bytes": 10000000 },
  nbf: 1795490000000,
  exp: 1795493600000,
  maxExp: 1795576400000,
  chain: [],
};
const caveats = [
  { t: "ops", v: ["storage.read"] },
  { t: "exp", v: 1795491800000 },
  { t: "sub", v: "alice/worker-1" },
];
const tokenVectors = [];
let t = mintToken(rootKey, claims);
for (let n = 0; n <= caveats.length; n++) {
  if (n > 0) t = attenuate(t, caveats[n - 1]);
  const chain = [rootSignature(rootKey, t.claimsBytes)];
  for (const c of t.caveatBytes) chain.push(chainSignature(chain[chain.length - 1], c));
  tokenVectors.push({
    name: `root-token-with-${n}-caveats`,
    id: derivedTokenId(t),
    claims: j(claims),
    caveats: caveats.slice(0, n),
    claimsHex: hex(t.claimsBytes),
    caveatsHex: t.caveatBytes.map(hex),
    chain: chain.map(hex),
    hex: hex(encodeToken(t)),
    base64url: tokenToString(t),
  });
}
{
  // A rights caveat keeps (op, target) pairs: read on a/**, write on b/** — never write on a/**.
  const pairs = {
    t: "rights",
    v: [
      ["storage.read", "obj://ws1/a/**"],
      ["storage.write", "obj://ws1/b/**"],
    ],
  };
  const p = attenuate(mintToken(rootKey, claims), pairs);
  tokenVectors.push({
    name: "root-token-with-rights-caveat",
    id: derivedTokenId(p),
    claims: j(claims),
    caveats: [pairs],
    claimsHex: hex(p.claimsBytes),
    caveatsHex: p.caveatBytes.map(hex),
    chain: [rootSignature(rootKey, p.claimsBytes), p.sig].map(hex),
    hex: hex(encodeToken(p)),
    base64url: tokenToString(p),
  });
}
const full = b(tokenVectors[tokenVectors.length - 1 - 1].hex);
const flipLast = Buffer.from(full);
flipLast[flipLast.length - 1] ^= 1;
const unknownCaveat = encodeCanonical({ t: "color", v: "red" });
const withUnknown = { ...t, caveatBytes: [...t.caveatBytes, unknownCaveat], sig: chainSignature(t.sig, unknownCaveat) };
const appendedNoSig = { ...t, caveatBytes: [...t.caveatBytes, encodeCanonical({ t: "ops", v: ["storage.write"] })] };
const editedClaims = { ...t, claimsBytes: encodeCanonical({ ...claims, sub: "mallory" }) };
const wrongKey = mintToken(b("ff".repeat(32)), claims);
const droppedCaveat = { ...t, caveatBytes: t.caveatBytes.slice(0, 2) };
const unknownKid = mintToken(rootKey, { ...claims, kid: "k9" });
const halfPair = encodeCanonical({ t: "rights", v: [["storage.read"]] });
const withHalfPair = { ...t, caveatBytes: [...t.caveatBytes, halfPair], sig: chainSignature(t.sig, halfPair) };
const unknownClaimBytes = encodeCanonical({ ...claims, color: "red" });
const unknownClaim = { claimsBytes: unknownClaimBytes, caveatBytes: [], sig: rootSignature(rootKey, unknownClaimBytes) };
// Claims outside §13.1's bounds, correctly signed: the verifier refuses them as MALFORMED.
const signedClaims = (c) => {
  const claimsBytes = encodeCanonical(c);
  return hex(encodeToken({ claimsBytes, caveatBytes: [], sig: rootSignature(rootKey, claimsBytes) }));
};
const { chain: _chain, ...claimsWithoutChain } = claims;
const badClaims = [
  ["claims-id-uppercase-hex", { ...claims, id: claims.id.toUpperCase() }],
  ["claims-missing-chain", claimsWithoutChain],
  ["claims-limit-over-2^53", { ...claims, limits: { "storage.bytes": 2n ** 53n } }],
  ["claims-exp-after-maxExp", { ...claims, exp: claims.maxExp + 1 }],
].map(([name, c]) => ({ name, hex: signedClaims(c), error: { class: "CAPABILITY", code: "MALFORMED" } }));
out("tokens.json", {
  description:
    'KPIP v1 capability token vectors (§13.1). Valid: with root key `rootKey` (hex) under kid `k1`, `chain[0]` = HMAC-SHA256(rootKey, "kpip-token-v1\\0" || claimsHex) and chain[i] = HMAC-SHA256(chain[i-1], caveatsHex[i-1]); the token\'s signature is the last chain value; `hex` is the wire form [1, claims, [caveats], sig] and `base64url` its text form. Invalid: decoding (`MALFORMED`, `UNKNOWN_CAVEAT`, `UNKNOWN_CLAIM`, `UNSUPPORTED_VERSION`) or verifying against rootKey under kid `k1` (`UNKNOWN_KEY` for any other kid, `BAD_SIGNATURE`) must fail with class CAPABILITY and the stated code.',
  rootKey: hex(rootKey),
  kid: "k1",
  valid: tokenVectors,
  invalid: [
    { name: "bit-flipped-signature", hex: hex(flipLast), error: { class: "CAPABILITY", code: "BAD_SIGNATURE" } },
    { name: "truncated", hex: hex(full.subarray(0, full.length - 10)), error: { class: "CAPABILITY", code: "MALFORMED" } },
    { name: "signed-with-another-key", hex: hex(encodeToken(wrongKey)), error: { class: "CAPABILITY", code: "BAD_SIGNATURE" } },
    { name: "unknown-caveat-type", hex: hex(encodeToken(withUnknown)), error: { class: "CAPABILITY", code: "UNKNOWN_CAVEAT" } },
    { name: "rights-caveat-not-a-pair", hex: hex(encodeToken(withHalfPair)), error: { class: "CAPABILITY", code: "MALFORMED" } },
    {
      name: "caveat-appended-without-chaining",
      hex: hex(encodeToken(appendedNoSig)),
      error: { class: "CAPABILITY", code: "BAD_SIGNATURE" },
    },
    { name: "caveat-removed", hex: hex(encodeToken(droppedCaveat)), error: { class: "CAPABILITY", code: "BAD_SIGNATURE" } },
    { name: "claims-edited", hex: hex(encodeToken(editedClaims)), error: { class: "CAPABILITY", code: "BAD_SIGNATURE" } },
    { name: "unknown-key-id", hex: hex(encodeToken(unknownKid)), error: { class: "CAPABILITY", code: "UNKNOWN_KEY" } },
    { name: "unknown-claim", hex: hex(encodeToken(unknownClaim)), error: { class: "CAPABILITY", code: "UNKNOWN_CLAIM" } },
    {
      name: "version-2",
      hex: `84${hex(encodeCanonical(2))}${hex(full).slice(4)}`,
      error: { class: "CAPABILITY", code: "UNSUPPORTED_VERSION" },
    },
    ...badClaims,
  ],
});
// ---- attestation (§8.4, Appendix A) ------------------------------------------------------
const seed = b("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
const personaKey = createPrivateKey({
  key: Buffer.concat([b("302e020100300506032b657004220420"), seed]),
  format: "der",
  type: "pkcs8",
});
const helloBody = encodeCanonical({
  versions: [1],
  persona: "alice",
  publicKey: key32,
  instance: b("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"),
  features: [],
  client: "example/1.0",
});
const challengeBody = encodeCanonical({
  version: 1,
  session: "5e2f8a4c-1d3b-4c6e-9f70-2a1b3c4d5e6f",
  nonce: Buffer.alloc(32, 0x42),
  kernel: "kernel-example",
  heartbeatMs: 5000,
  limits: { maxBody: 16777216, maxInFlight: 1024, dedupeWindowMs: 300000 },
  features: [],
});
const transcript = attestationTranscript(helloBody, challengeBody);
const signature = sign(null, transcript, personaKey);
// The same signature presented for a HELLO that offered another version list (a downgrade).
const downgraded = encodeCanonical({ ...decodeCanonical(helloBody), versions: [0, 1] });
out("attestation.json", {
  description:
    'KPIP v1 attestation vectors (§8.4; the valid one is Appendix A). transcript = "kpip-attest-v1" 0x00 || SHA-256(helloBody) || SHA-256(challengeBody), 79 bytes, over the exact body bytes as sent; signature = Ed25519(seed, transcript), deterministic. Valid: the transcript and signature must be reproduced exactly and the signature must verify with publicKey. Invalid: `signature` must not verify over the transcript of these bodies (the kernel answers AUTH ATTESTATION_FAILED).',
  valid: [
    {
      name: "appendix-a",
      seed: hex(seed),
      publicKey: hex(key32),
      helloBody: hex(helloBody),
      challengeBody: hex(challengeBody),
      transcript: hex(transcript),
      signature: hex(signature),
    },
  ],
  invalid: [
    {
      name: "signature-from-another-hello",
      publicKey: hex(key32),
      helloBody: hex(downgraded),
      challengeBody: hex(challengeBody),
      signature: hex(signature),
      error: { class: "AUTH", code: "ATTESTATION_FAILED" },
    },
  ],
});

console.log(
  `spec/vectors: ${validMessages.length}+${invalidFrames.length} frames, ${validIntents.length}+${invalidIntents.length} intents, ${tokenVectors.length}+${11 + badClaims.length} tokens, 1+1 attestation`,
);
