import * as crypto from "node:crypto";

type OneShot = (algorithm: string, data: Uint8Array, encoding: "buffer") => Buffer;
// crypto.hash (Node ≥ 20.12) hashes in one call, without a Hash object per input: about twice
// as fast for the small inputs hashed on every request. Older Node 20 releases lack it.
const oneShot = (crypto as unknown as { hash?: OneShot }).hash;

/** SHA-256 of `data`, with the fastest API this Node has. */
export const sha256: (data: Uint8Array) => Buffer = oneShot
  ? (data) => oneShot("sha256", data, "buffer")
  : (data) => crypto.createHash("sha256").update(data).digest();
