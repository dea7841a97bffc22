import { createHash } from "node:crypto";

/** Domain-separation prefix of the attestation transcript: ASCII "kpip-attest-v1" and a zero byte. */
export const ATTEST_CONTEXT = Buffer.from("kpip-attest-v1\0", "latin1");

/**
 * The exact bytes a persona signs with Ed25519 in ATTEST:
 *
 *   "kpip-attest-v1" 0x00 || SHA-256(HELLO body bytes) || SHA-256(CHALLENGE body bytes)
 *
 * 79 bytes. Binding both bodies as sent ties the signature to this session's nonce and
 * session id and to the versions and features the persona asked for, so an attestation
 * cannot be replayed on another session or survive a tampered handshake.
 */
export function attestationTranscript(helloBody: Uint8Array, challengeBody: Uint8Array): Buffer {
  return Buffer.concat([
    ATTEST_CONTEXT,
    createHash("sha256").update(helloBody).digest(),
    createHash("sha256").update(challengeBody).digest(),
  ]);
}
