import { writeHead } from "@kpip/protocol";

/**
 * A growable buffer that writes CBOR heads: the one writer under both record hashers
 * (record.ts's, over decoded rows, and verify-raw.ts's, over SQLite's raw columns).
 */
/** The largest buffer kept between values (a record with a large intent grows it past this once). */
const KEEP_BYTES = 1024 * 1024;

export class CborWriter {
  protected buf = Buffer.allocUnsafe(4096);
  protected pos = 0;

  protected ensure(n: number): void {
    if (this.pos + n <= this.buf.length) {
      // Starting anew after an unusually large value: its buffer is let go, not kept for ever.
      if (this.pos === 0 && this.buf.length > KEEP_BYTES) this.buf = Buffer.allocUnsafe(Math.max(4096, n));
      return;
    }
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  /** A major type's head with argument `n` (a non-negative safe integer): the protocol's canonical head. */
  protected head(major: number, n: number): void {
    this.ensure(9);
    this.pos = writeHead(this.buf, this.pos, major, n);
  }
}

/** A short ASCII map key (under 24 bytes) as its CBOR text string. */
export function textKey(k: string): Buffer {
  return Buffer.concat([Buffer.from([0x60 | k.length]), Buffer.from(k, "latin1")]);
}
