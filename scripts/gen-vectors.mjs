#!/usr/bin/env node
// Regenerates spec/vectors/*.json from the definitions below (frames: scripts/vectors/frames.mjs)
// with the built @kpip/protocol. Deterministic: fixed keys, ids and times.
// Usage: npm run build && node scripts/gen-vectors.mjs
import { createPrivateKey, sign } from "node:crypto";
import {
  attenuate,
  attestationTranscript,
  chainSignature,
  decodeCanonical,
  derivedTokenId,
  encodeCanonical,
  encodeIntent,
  encodeToken,
  intentHash,
  mintToken,
  rootSignature,
  tokenToString,
} from "../packages/protocol/dist/src/index.js";

import { b, hex, j, key32, out } from "./vectors/common.mjs";
import { invalidFrames, validMessages } from "./vectors/frames.mjs";

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
