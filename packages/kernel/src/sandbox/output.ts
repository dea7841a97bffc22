import type { Readable } from "node:stream";

/**
 * How fast the kernel reads what a process writes to a stream past its captured bytes
 * (`maxOutputBytes`), which it discards: a burst of this much, then this much a second.
 */
export const DISCARD_BYTES_PER_SECOND = 1024 * 1024;

/**
 * Past `captured` bytes, reads `stream` at most at {@link DISCARD_BYTES_PER_SECOND} (it is
 * paused, then resumed when the bytes read so far fit the rate). The bytes are discarded by
 * the caller's own listener; without this, a process writing without pause (`cat /dev/zero`)
 * had the kernel's event loop read and discard as fast as it could write, for the whole life
 * of the process: 0.7 of a core for one command, the whole loop for a persona's 32. A process
 * that writes faster than the rate waits on its pipe, as behind any slow reader.
 */
export function throttlePastCapture(stream: Readable | null | undefined, captured: number): void {
  if (!stream) return;
  let seen = 0;
  let since = 0;
  let timer: NodeJS.Timeout | undefined;
  stream.on("data", (d: Buffer) => {
    seen += d.length;
    const past = seen - captured;
    if (past <= 0) return;
    const now = Date.now();
    if (since === 0) since = now;
    // One second's worth at once, then the rate.
    const ahead = past - ((now - since) / 1000 + 1) * DISCARD_BYTES_PER_SECOND;
    if (ahead <= 0 || timer) return;
    stream.pause();
    timer = setTimeout(
      () => {
        timer = undefined;
        stream.resume();
      },
      Math.ceil((ahead / DISCARD_BYTES_PER_SECOND) * 1000),
    );
    timer.unref();
  });
  stream.once("close", () => clearTimeout(timer));
}
