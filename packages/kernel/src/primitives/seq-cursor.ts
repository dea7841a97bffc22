import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";

/**
 * Listing positions (agents, ops, tokens) are row numbers shared by every persona: handed out
 * as they are, the gap between two of a persona's cursors counts what everyone else created in
 * between. A cursor is the position enciphered (AES-128 of one block: the position and a tag
 * of the listing): opaque (PROTOCOL §9.3), not forgeable into another position, and
 * meaningless to another listing. The kernel's key is derived from its home's signing key, so
 * cursors outlive a restart (a pager spanning one carries on); without one (a family built
 * alone), a key of the process.
 */
export class SeqCursors {
  private readonly tags = new Map<string, Buffer>();

  constructor(private readonly key: Uint8Array = randomBytes(16)) {
    if (key.length !== 16) throw new RangeError("a cursor key is 16 bytes");
  }

  /** The cursor of listing position `seq` in `listing`. */
  seal(seq: number, listing: string): string {
    const block = Buffer.alloc(16);
    block.writeBigUInt64BE(BigInt(seq), 0);
    this.tagOf(listing).copy(block, 8);
    const c = createCipheriv("aes-128-ecb", this.key, null).setAutoPadding(false);
    return Buffer.concat([c.update(block), c.final()]).toString("base64url");
  }

  /** The position a cursor of `listing` names, or undefined when it is not one (another listing's, another key's, made up). */
  open(cursor: string, listing: string): number | undefined {
    if (!/^[A-Za-z0-9_-]{22}$/.test(cursor)) return undefined;
    const d = createDecipheriv("aes-128-ecb", this.key, null).setAutoPadding(false);
    const block = Buffer.concat([d.update(Buffer.from(cursor, "base64url")), d.final()]);
    if (!block.subarray(8).equals(this.tagOf(listing))) return undefined;
    const seq = block.readBigUInt64BE(0);
    return seq <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(seq) : undefined;
  }

  private tagOf(listing: string): Buffer {
    let t = this.tags.get(listing);
    if (!t) {
      t = createHash("sha256").update(listing).digest().subarray(0, 8);
      this.tags.set(listing, t);
    }
    return t;
  }
}

/** The cursors of families built without the kernel's key (unit tests, embedders' own routers). */
export const PROCESS_CURSORS = new SeqCursors();
