import { writeHead } from "@kpip/protocol";

/** The largest buffer kept between values (a record with a large intent grows it past this once). */
const KEEP_BYTES = 1024 * 1024;

/** A growable buffer that writes CBOR heads: the writer under the audit record encoder (record.ts). */
export class CborWriter {
  protected buf = Buffer.allocUnsafe(4096);
  protected pos = 0;

  /** Starts a new value; the buffer an unusually large one grew is let go, not kept for ever. */
  protected restart(): void {
    this.pos = 0;
    if (this.buf.length > KEEP_BYTES) this.buf = Buffer.allocUnsafe(4096);
  }

  protected ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
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
