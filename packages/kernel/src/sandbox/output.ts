import type { Readable } from "node:stream";
import { startReading, stopReading } from "../read-switch.js";

/**
 * How fast the kernel reads what a process writes to a stream past its captured bytes
 * (`maxOutputBytes`), which it discards: a burst of this much, then this much a second.
 */
export const DISCARD_BYTES_PER_SECOND = 1024 * 1024;

/**
 * Reads of one stream the kernel makes per second at most (after a burst of as many), whatever
 * their size. A read costs the kernel's event loop about the same whether it brings one byte or
 * 64 KiB, and a writer can make each byte its own read at any speed: a message carrying a
 * descriptor (SCM_RIGHTS) on its stdout, a socket, is never joined to the next one by a read.
 * Paused, a stream of ordinary writes is read whole at its next read: only the reads are fewer.
 */
export const READS_PER_SECOND = 100;

/**
 * Throttles `stream`: its reads to {@link READS_PER_SECOND}, and, past `captured` bytes, its
 * bytes to {@link DISCARD_BYTES_PER_SECOND} (it is paused, then resumed when what was read so
 * far fits both rates). The bytes are discarded by the caller's own listener; without this, a
 * process writing without pause (`cat /dev/zero`) had the kernel's event loop read and discard
 * as fast as it could write, for the whole life of the process: 0.7 of a core for one command,
 * the whole loop for a persona's 32; and one sending its output a byte a message, each message
 * with a descriptor, had it make a read per byte, captured bytes included. A process that writes
 * faster than that waits on its pipe, as behind any slow reader.
 */
export function throttlePastCapture(stream: Readable | null | undefined, captured: number): void {
  if (!stream) return;
  let seen = 0;
  // Buckets of discard bytes and of reads: full (one second's worth) at first, refilled at their
  // rates and never past one second's worth, so an hour of silence does not buy an hour's worth.
  let tokens = DISCARD_BYTES_PER_SECOND;
  let reads = READS_PER_SECOND;
  let at = 0;
  let timer: NodeJS.Timeout | undefined;
  stream.on("data", (d: Buffer) => {
    const before = seen;
    seen += d.length;
    const past = seen - Math.max(before, captured);
    const now = Date.now();
    if (at !== 0) {
      // A clock stepped back is no time passed, not a debt (case 664).
      const s = Math.max(0, now - at) / 1000;
      tokens = Math.min(DISCARD_BYTES_PER_SECOND, tokens + s * DISCARD_BYTES_PER_SECOND);
      reads = Math.min(READS_PER_SECOND, reads + s * READS_PER_SECOND);
    }
    at = now;
    if (past > 0) tokens -= past;
    reads -= 1;
    if ((tokens >= 0 && reads >= 0) || timer) return;
    stream.pause();
    stopReading(stream);
    const wait = Math.max(-tokens / DISCARD_BYTES_PER_SECOND, -reads / READS_PER_SECOND);
    timer = setTimeout(
      () => {
        timer = undefined;
        startReading(stream);
        stream.resume();
      },
      Math.ceil(wait * 1000),
    );
    timer.unref();
  });
  stream.once("close", () => clearTimeout(timer));
}

/**
 * What a process wrote to one stream, its first `max` bytes, kept in one buffer that grows by
 * doubling (at most twice what it holds). Kept as the chunks read, a process that writes a byte
 * at a time (each write its own read) cost the kernel ~180 bytes of heap per byte captured:
 * 180 MiB a stream at the 1 MiB default, and a persona tree runs 32 processes of two streams.
 */
export class OutputCapture {
  private buf: Buffer = Buffer.alloc(0);
  /** Bytes captured. */
  size = 0;
  /** More was written than is kept. */
  truncated = false;

  constructor(private readonly max: number) {}

  push(d: Uint8Array): void {
    const room = this.max - this.size;
    if (d.length > room) this.truncated = true;
    const n = Math.min(room, d.length);
    if (n <= 0) return;
    if (this.size + n > this.buf.length) {
      const next = Buffer.allocUnsafe(Math.min(this.max, Math.max(8192, 2 * this.buf.length, this.size + n)));
      this.buf.copy(next, 0, 0, this.size);
      this.buf = next;
    }
    this.buf.set(d.subarray(0, n), this.size);
    this.size += n;
  }

  /** A copy of the bytes captured so far. */
  bytes(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.size));
  }
}
