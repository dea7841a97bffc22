import { MAX_FRAGMENTS_PER_FRAME, MIN_FRAGMENT_BYTES } from "./connection.js";

/**
 * How long a connection's reads stop for each read past the allowance of {@link ReadGauge}
 * (the default of the `readHoldMs` setting): such reads are at most 1000 / READ_HOLD_MS a second
 * per connection.
 */
export const READ_HOLD_MS = 50;

/**
 * Counts a connection's reads that bring a frame no nearer to the session: reads of fewer than
 * {@link MIN_FRAGMENT_BYTES} that complete no frame. A read costs the kernel's event loop about
 * the same whatever it brings, and a peer of the Unix socket decides what a read brings: a
 * message carrying a descriptor (SCM_RIGHTS) is never joined to the next by a read, so a peer
 * sending a byte a message — before it authenticated too — made the kernel read a byte a read,
 * ~6× the sender's CPU. A frame may come in {@link MAX_FRAGMENTS_PER_FRAME} such reads (a
 * client writing its header and body apart makes one; an honest writer's large frame arrives in
 * reads of 64 KiB); each one past that stops the connection's reads for {@link READ_HOLD_MS}
 * (paused, never closed: what was sent meanwhile is read whole at the next read). A read that
 * completes a frame the kernel pays for (a REQUEST, HELLO or ATTEST) resets the count: its own
 * bounds and records hold it. One that completes only control frames (PING, PONG, GOODBYE,
 * ERROR) takes one off the count per frame (a header and body read apart cost nothing): a PING
 * sent in 8 pieces had every piece read at once, 9 reads a PING, however many PINGs. O(1) a
 * read, no system call.
 */
export class ReadGauge {
  /** Reads of the current frame that brought little and completed no frame. */
  private fragments = 0;
  /** Reads the connection was held for so far (tests; counted by the session, which holds it). */
  held = 0;

  /**
   * A read of `length` bytes that completed `frames` frames, `paid` of them not control frames:
   * whether to hold the connection's reads.
   */
  read(length: number, frames: number, paid: number): boolean {
    if (paid > 0) {
      this.fragments = 0;
      return false;
    }
    if (frames > 0) {
      this.fragments = Math.max(0, this.fragments - frames);
      return false;
    }
    return length < MIN_FRAGMENT_BYTES && ++this.fragments > MAX_FRAGMENTS_PER_FRAME;
  }
}
