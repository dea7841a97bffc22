import * as crypto from "node:crypto";

type OneShot = (algorithm: string, data: Uint8Array, encoding: "latin1") => string;
// crypto.hash (Node ≥ 20.12) hashes in one call, without a Hash object per input: about twice
// as fast for the small inputs hashed on every request. Older Node 20 releases lack it.
const oneShot = (crypto as unknown as { hash?: OneShot }).hash;

/**
 * The SHA-256 of `data` as a latin1 string (a char per byte). Asking crypto.hash for a string
 * and copying it into a Buffer (from Buffer's pool) costs ~250 ns less than asking it for a
 * Buffer, which gets an ArrayBuffer of its own from C++: two such hashes are on every request.
 */
export const sha256Latin1: (data: Uint8Array) => string = oneShot
  ? (data) => oneShot("sha256", data, "latin1")
  : (data) => crypto.createHash("sha256").update(data).digest().toString("latin1");

/**
 * SHA-256 of `data`, with the fastest API this Node has. The result is a view of Buffer's shared
 * 8 KiB pool slab: a hash kept for long keeps its slab alive, so a cache of many such hashes
 * would hold 8 KiB each; copy one out (`Buffer.from(new Uint8Array(h))`) or keep the latin1
 * string where it is kept long. Today none is: the kernel keeps intent and record hashes only
 * while their record is pending, except the audit chain's head (one hash, replaced by the next
 * record); the dedupe cache copies its 32 bytes into its own table, tokens and bodies hash with Hash objects
 * (unpooled digests), the upload's digest and an installed body's address live as long as their upload.
 */
export const sha256 = (data: Uint8Array): Buffer => Buffer.from(sha256Latin1(data), "latin1");
