import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, sign, verify } from "node:crypto";
import { CodecError, ErrorClass } from "./errors.js";
import { isPersonaId } from "./intent/grammar.js";

/**
 * A persona's identity: its id and Ed25519 key pair. The identity file is JSON:
 *
 *   { "kpip": "identity/v1", "persona": "alice", "publicKey": "<base64url 32 bytes>", "privateKey": "<base64url 32-byte seed>" }
 *
 * It is a secret (mode 0600); the public key alone is what the kernel registers.
 */
export interface Identity {
  persona: string;
  publicKey: Uint8Array;
  privateKey: KeyObject;
}

const PKCS8_ED25519_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
const SPKI_ED25519_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

export class IdentityError extends CodecError {
  override name = "IdentityError";
  constructor(message: string) {
    super(ErrorClass.AUTH, "BAD_IDENTITY", message);
  }
}

/** Creates a fresh identity for `persona`. */
export function generateIdentity(persona: string): Identity {
  if (!isPersonaId(persona)) throw new IdentityError(`invalid persona id ${JSON.stringify(persona)}`);
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  return { persona, privateKey, publicKey: rawPublicKey(publicKey) };
}

/** The 32 raw bytes of an Ed25519 public key. */
export function rawPublicKey(key: KeyObject): Uint8Array {
  return key.export({ format: "der", type: "spki" }).subarray(SPKI_ED25519_PREFIX.length);
}

/** A reusable key object for 32 raw public key bytes (parse once, verify many times). */
export function publicKeyFromRaw(raw: Uint8Array): KeyObject {
  if (raw.length !== 32) throw new IdentityError("an Ed25519 public key has 32 bytes");
  return createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, raw]), format: "der", type: "spki" });
}

// Edwards25519: -x² + y² = 1 + d·x²·y² over GF(P).
const P = 2n ** 255n - 19n;
const mod = (a: bigint) => ((a % P) + P) % P;
const pow = (b: bigint, e: bigint): bigint => {
  let r = 1n;
  let x = mod(b);
  for (let k = e; k > 0n; k >>= 1n) {
    if (k & 1n) r = (r * x) % P;
    x = (x * x) % P;
  }
  return r;
};
const inv = (a: bigint) => pow(a, P - 2n);
const D = mod(-121665n * inv(121666n));
const SQRT_M1 = pow(2n, (P - 1n) / 4n);

/**
 * Why 32 bytes are no usable Ed25519 public key, or undefined: not a canonical encoding of a
 * point of the curve (RFC 8032 §5.1.3), or a point of small order. OpenSSL takes any 32 bytes as
 * a key, and verifies with a small-order key a signature anyone can make (R the identity, S 0)
 * over any message: a persona registered with one could be attested by anyone.
 */
export function publicKeyFault(raw: Uint8Array): string | undefined {
  if (raw.length !== 32) return "an Ed25519 public key has 32 bytes";
  const sign = (raw[31] as number) >> 7;
  let y = 0n;
  for (let i = 31; i >= 0; i--) y = (y << 8n) | BigInt(i === 31 ? (raw[i] as number) & 0x7f : (raw[i] as number));
  if (y >= P) return "not a canonical encoding of a point (y is not below 2^255 - 19)";
  const u = mod(y * y - 1n);
  const v = mod(D * y * y + 1n);
  let x = mod(u * pow(v, 3n) * pow(u * pow(v, 7n), (P - 5n) / 8n));
  const vx2 = mod(v * x * x);
  if (vx2 === mod(-u)) x = mod(x * SQRT_M1);
  else if (vx2 !== u) return "not a point of the Ed25519 curve";
  if (x === 0n && sign === 1) return "not a canonical encoding of a point (x is 0 with its sign bit set)";
  if ((x & 1n) !== BigInt(sign)) x = P - x;
  // Small order: 8·point is the identity (0 : 1 : 1). Doubled three times in projective
  // coordinates (a = -1; the law is complete for Edwards25519), with no inversion: a
  // persona.register costs the kernel's thread one square root, not seven modular powers.
  let [X, Y, Z] = [x, y, 1n];
  for (let i = 0; i < 3; i++) {
    const b = mod((X + Y) * (X + Y));
    const c = mod(X * X);
    const d = mod(Y * Y);
    const f = mod(d - c);
    const j = mod(f - 2n * Z * Z);
    [X, Y, Z] = [mod((b - c - d) * j), mod(f * (-c - d)), mod(f * j)];
  }
  if (X === 0n && Y === Z) return "a point of small order: anyone can make signatures it verifies";
  return undefined;
}

/** Serialises an identity to the identity-file JSON text. */
export function serializeIdentity(id: Identity): string {
  const seed = id.privateKey.export({ format: "der", type: "pkcs8" }).subarray(PKCS8_ED25519_PREFIX.length);
  return `${JSON.stringify(
    {
      kpip: "identity/v1",
      persona: id.persona,
      publicKey: Buffer.from(id.publicKey).toString("base64url"),
      privateKey: Buffer.from(seed).toString("base64url"),
    },
    null,
    2,
  )}\n`;
}

/** Parses identity-file JSON text; throws {@link IdentityError} on anything malformed. */
export function parseIdentity(text: string): Identity {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new IdentityError("identity file is not JSON");
  }
  const d = doc as Record<string, unknown>;
  if (d === null || typeof d !== "object" || d.kpip !== "identity/v1") {
    throw new IdentityError('identity file must have "kpip": "identity/v1"');
  }
  if (typeof d.persona !== "string" || !isPersonaId(d.persona))
    throw new IdentityError("identity file has an invalid persona id");
  if (typeof d.privateKey !== "string") throw new IdentityError("identity file has no private key");
  const seed = Buffer.from(d.privateKey, "base64url");
  if (seed.length !== 32) throw new IdentityError("identity private key must be a 32-byte seed");
  const privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]), format: "der", type: "pkcs8" });
  const publicKey = rawPublicKey(createPublicKey(privateKey));
  if (typeof d.publicKey === "string" && Buffer.compare(Buffer.from(d.publicKey, "base64url"), publicKey) !== 0) {
    throw new IdentityError("identity public key does not match its private key");
  }
  return { persona: d.persona, privateKey, publicKey };
}

/** Ed25519 signature over `data`. */
export function signBytes(key: KeyObject, data: Uint8Array): Buffer {
  return sign(null, data, key);
}

/** Verifies an Ed25519 signature; false (never a throw) on any mismatch. */
export function verifyBytes(key: KeyObject, data: Uint8Array, signature: Uint8Array): boolean {
  try {
    return verify(null, data, key, signature);
  } catch {
    return false;
  }
}
