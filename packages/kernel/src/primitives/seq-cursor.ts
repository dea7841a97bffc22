import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";

/**
 * Listing positions (agents, ops, tokens) are row numbers shared by every persona: handed out
 * as they are, the gap between two of a persona's cursors counts what everyone else created in
 * between. A cursor is the position enciphered (AES-128 of one block: the position and a tag
 * of the listing) under a key of this kernel run: opaque (PROTOCOL §9.3), not forgeable into
 * another position, and meaningless to another listing. A kernel restart ends every cursor
 * (SEMANTIC; the listing starts over).
 */
const key = randomBytes(16);
const tags = new Map<string, Buffer>();
const tagOf = (listing: string): Buffer => {
  let t = tags.get(listing);
  if (!t) {
    t = createHash("sha256").update(listing).digest().subarray(0, 8);
    tags.set(listing, t);
  }
  return t;
};

/** The cursor of listing position `seq` in `listing`. */
export function sealSeq(seq: number, listing: string): string {
  const block = Buffer.alloc(16);
  block.writeBigUInt64BE(BigInt(seq), 0);
  tagOf(listing).copy(block, 8);
  const c = createCipheriv("aes-128-ecb", key, null).setAutoPadding(false);
  return Buffer.concat([c.update(block), c.final()]).toString("base64url");
}

/** The position a cursor of `listing` names, or undefined when it is not one (another listing's, another run's, made up). */
export function openSeq(cursor: string, listing: string): number | undefined {
  if (!/^[A-Za-z0-9_-]{22}$/.test(cursor)) return undefined;
  const d = createDecipheriv("aes-128-ecb", key, null).setAutoPadding(false);
  const block = Buffer.concat([d.update(Buffer.from(cursor, "base64url")), d.final()]);
  if (!block.subarray(8).equals(tagOf(listing))) return undefined;
  const seq = block.readBigUInt64BE(0);
  return seq <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(seq) : undefined;
}
