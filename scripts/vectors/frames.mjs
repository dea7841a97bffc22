// spec/vectors/frames.json: valid messages and invalid frames (scripts/gen-vectors.mjs runs it).
import { encodeCanonical, encodeMessage } from "../../packages/protocol/dist/src/index.js";
import { b, hex, intentBytes, j, key32, out } from "./common.mjs";

// ---- frames ----------------------------------------------------------------------------
export const validMessages = [
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
export const invalidFrames = [
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
