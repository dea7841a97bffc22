import {
  attestationTranscript,
  encodeMessage,
  HEADER_SIZE,
  type Hello,
  type Message,
  MIN_MAX_BODY,
  negotiateVersion,
  SHM_FEATURE,
  SUPPORTED_VERSIONS,
  verifyBytes,
} from "@kpip/protocol";
import type { AttestedToken } from "../audit/session-records.js";
import type { SessionLimitsConfig } from "./host.js";
import type { PersonaKeys } from "./persona-keys.js";

// The handshake's decisions (PROTOCOL §8), apart from the session's state machine that sends them.

/** The version a HELLO gets (PROTOCOL §8.2), or why it is refused (fatal PROTOCOL). */
export function negotiateHello(body: Hello): { version: number } | { code: string; message: string } {
  const version = negotiateVersion(body.versions);
  if (version === undefined) {
    return {
      code: "UNSUPPORTED_VERSION",
      message: `none of the offered versions [${body.versions.join(", ")}] is supported (supported: ${SUPPORTED_VERSIONS.join(", ")})`,
    };
  }
  if (body.maxBody !== undefined && body.maxBody < MIN_MAX_BODY) {
    return { code: "BAD_FIELD", message: `HELLO.maxBody ${body.maxBody} is below the minimum of ${MIN_MAX_BODY} bytes` };
  }
  return { version };
}

/** The CHALLENGE frame (PROTOCOL §8.3): its body's bytes are half of the attestation transcript. */
export function challengeFrame(
  c: { version: number; session: string; nonce: Uint8Array; kernel: string; maxBody: number; shm: boolean },
  lim: SessionLimitsConfig,
): Uint8Array {
  return encodeMessage({
    type: "CHALLENGE",
    body: {
      version: c.version,
      session: c.session,
      nonce: c.nonce,
      kernel: c.kernel,
      heartbeatMs: lim.heartbeatMs,
      limits: { maxBody: c.maxBody, maxInFlight: lim.maxInFlight, dedupeWindowMs: lim.dedupeWindowMs },
      features: c.shm ? [SHM_FEATURE] : [],
    },
  });
}

/**
 * Why an ATTEST fails, if it does (PROTOCOL §8.4): the persona is registered, with this key, and
 * signed this session's transcript. The cause goes to the audit record only.
 */
export function attestationFailure(
  keys: PersonaKeys,
  hello: { body: Hello; bytes: Uint8Array },
  challenge: Uint8Array,
  signature: Uint8Array,
  /** Told when the registration attested under was made (a success only). */
  registeredAt?: (createdAt: number) => void,
): string | undefined {
  const key = keys.lookup(hello.body.persona);
  if (key === undefined) return "persona is not registered";
  if (!Buffer.from(key.raw).equals(Buffer.from(hello.body.publicKey))) return "public key differs from the registered key";
  if (typeof key.key === "string") return `the registered key is no usable Ed25519 public key: ${key.key}`;
  if (!verifyBytes(key.key, attestationTranscript(hello.bytes, challenge), signature)) {
    return "signature does not verify over this session's transcript";
  }
  registeredAt?.(key.createdAt);
  return undefined;
}

/** WELCOME with a handle per token presented (0 and a reason for a refused one), within the session's maxBody. */
export function welcomeMessage(persona: string, bound: AttestedToken[], maxBody: number): Message {
  const handles = bound.map((r) => ("handle" in r ? r.handle : 0));
  const refused = bound.flatMap((r, index) => ("handle" in r ? [] : [{ index, code: r.code, message: r.message }]));
  const welcome: Message = { type: "WELCOME", body: refused.length ? { persona, handles, refused } : { persona, handles } };
  // Within the session's maxBody (PROTOCOL §6.6): 64 refusals with their messages may not fit the minimum.
  if (encodeMessage(welcome).length - HEADER_SIZE <= maxBody) return welcome;
  return { type: "WELCOME", body: { persona, handles, refused: refused.map((r) => ({ ...r, message: "" })) } };
}
