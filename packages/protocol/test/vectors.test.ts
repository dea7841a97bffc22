import assert from "node:assert/strict";
import { createHmac, createPrivateKey, sign, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import {
  attestationTranscript,
  type CborValue,
  CodecError,
  decodeIntent,
  decodeMessage,
  decodeToken,
  derivedTokenId,
  encodeIntent,
  encodeMessage,
  expectedSignature,
  FrameDecoder,
  type Intent,
  intentHash,
  type Message,
  publicKeyFromRaw,
  TokenError,
  verifyBytes,
} from "../src/index.js";
import { structural } from "../src/testing.js";

const PKCS8_ED25519 = Buffer.from("302e020100300506032b657004220420", "hex");

const load = (name: string) => JSON.parse(readFileSync(new URL(`../../../../spec/vectors/${name}`, import.meta.url), "utf8"));
const frames = load("frames.json");
const intents = load("intents.json");
const tokens = load("tokens.json");
const attestation = load("attestation.json");

/** JSON-ish → CBOR value: {"$bytes": hex} → bytes, {"$int": "…"} → bigint. */
function fromJ(v: unknown): CborValue {
  if (Array.isArray(v)) return v.map(fromJ);
  if (v !== null && typeof v === "object") {
    const o = v as Record<string, unknown>;
    if (typeof o.$bytes === "string" && Object.keys(o).length === 1) return Buffer.from(o.$bytes, "hex");
    if (typeof o.$int === "string" && Object.keys(o).length === 1) return BigInt(o.$int);
    return Object.fromEntries(Object.entries(o).map(([k, x]) => [k, fromJ(x)]));
  }
  return v as CborValue;
}
const norm = structural;

function decodeFrames(hex: string): Message[] {
  const d = new FrameDecoder();
  const out = d.push(Buffer.from(hex, "hex")).map((f) => decodeMessage(f));
  d.end();
  return out;
}

describe("spec/vectors", () => {
  it("has at least 25 valid and 25 invalid vectors", () => {
    const valid = frames.valid.length + intents.valid.length + tokens.valid.length;
    const invalid = frames.invalid.length + intents.invalid.length + tokens.invalid.length;
    assert.ok(valid >= 25, `${valid} valid`);
    assert.ok(invalid >= 25, `${invalid} invalid`);
  });

  for (const v of frames.valid) {
    it(`frame ${v.name} decodes to its message and re-encodes to the same bytes`, () => {
      const [f, ...rest] = new FrameDecoder().push(Buffer.from(v.hex, "hex"));
      assert.ok(f);
      assert.equal(rest.length, 0);
      assert.equal(f.stream, v.message.stream);
      assert.equal(f.flags, v.message.flags);
      const m = decodeMessage(f);
      assert.equal(m.type, v.message.type);
      assert.deepEqual(norm(m.body), norm(fromJ(v.message.body)));
      const again = encodeMessage({ type: v.message.type, body: fromJ(v.message.body) } as Message, v.message.stream);
      assert.equal(again.toString("hex"), v.hex);
    });
  }

  for (const v of frames.invalid) {
    it(`frame ${v.name} fails with ${v.error.class}/${v.error.code}`, () => {
      assert.throws(
        () => decodeFrames(v.hex),
        (e: unknown) => e instanceof CodecError && e.errorClass === v.error.class && e.code === v.error.code,
      );
    });
  }

  for (const v of intents.valid) {
    it(`intent ${v.name} decodes, hashes and re-encodes`, () => {
      const bytes = Buffer.from(v.hex, "hex");
      assert.deepEqual(norm(decodeIntent(bytes)), norm(fromJ(v.intent)));
      assert.equal(intentHash(bytes).toString("hex"), v.sha256);
      assert.equal(encodeIntent(fromJ(v.intent) as unknown as Intent).toString("hex"), v.hex);
    });
  }

  for (const v of intents.invalid) {
    it(`intent ${v.name} is refused with SEMANTIC/${v.error.code}`, () => {
      assert.throws(
        () => decodeIntent(Buffer.from(v.hex, "hex")),
        (e: unknown) => e instanceof CodecError && e.errorClass === "SEMANTIC" && e.code === v.error.code,
      );
    });
  }

  const rootKey = Buffer.from(tokens.rootKey, "hex");
  for (const v of tokens.valid) {
    it(`token ${v.name}: every chain value, recomputed independently`, () => {
      let sig = createHmac("sha256", rootKey).update("kpip-token-v1\0").update(Buffer.from(v.claimsHex, "hex")).digest();
      assert.equal(sig.toString("hex"), v.chain[0]);
      v.caveatsHex.forEach((c: string, i: number) => {
        sig = createHmac("sha256", sig).update(Buffer.from(c, "hex")).digest();
        assert.equal(sig.toString("hex"), v.chain[i + 1]);
      });
      const t = decodeToken(Buffer.from(v.hex, "hex"));
      assert.equal(Buffer.from(t.sig).toString("hex"), v.chain[v.chain.length - 1]);
      assert.deepEqual(norm(t.claims), norm(fromJ(v.claims)));
      assert.deepEqual(t.caveats, v.caveats);
      assert.equal(derivedTokenId(t), v.id);
      assert.equal(Buffer.from(v.base64url, "base64url").toString("hex"), v.hex);
    });
  }

  for (const v of tokens.invalid) {
    it(`token ${v.name} fails with CAPABILITY/${v.error.code}`, () => {
      let code: string;
      try {
        const t = decodeToken(Buffer.from(v.hex, "hex"));
        if (t.claims.kid !== tokens.kid) code = "UNKNOWN_KEY";
        else code = timingSafeEqual(expectedSignature(rootKey, t), Buffer.from(t.sig)) ? "VALID" : "BAD_SIGNATURE";
      } catch (e) {
        assert.ok(e instanceof TokenError && e.errorClass === "CAPABILITY");
        code = e.code;
      }
      assert.equal(code, v.error.code);
    });
  }

  for (const v of attestation.valid) {
    it(`attestation ${v.name}: the transcript and the deterministic signature`, () => {
      const t = attestationTranscript(Buffer.from(v.helloBody, "hex"), Buffer.from(v.challengeBody, "hex"));
      assert.equal(t.toString("hex"), v.transcript);
      const seed = Buffer.from(v.seed, "hex");
      const key = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, seed]), format: "der", type: "pkcs8" });
      assert.equal(sign(null, t, key).toString("hex"), v.signature);
      assert.ok(verifyBytes(publicKeyFromRaw(Buffer.from(v.publicKey, "hex")), t, Buffer.from(v.signature, "hex")));
    });
  }

  for (const v of attestation.invalid) {
    it(`attestation ${v.name} does not verify (${v.error.class}/${v.error.code})`, () => {
      const t = attestationTranscript(Buffer.from(v.helloBody, "hex"), Buffer.from(v.challengeBody, "hex"));
      assert.equal(verifyBytes(publicKeyFromRaw(Buffer.from(v.publicKey, "hex")), t, Buffer.from(v.signature, "hex")), false);
    });
  }
});
