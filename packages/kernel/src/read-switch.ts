import type { Readable } from "node:stream";

/** A stream's libuv handle, as net.Socket keeps it: whether it reads from the OS, and the switches. */
type ReadHandle = { reading?: boolean; readStop?: () => number; readStart?: () => number };
const handleOf = (stream: Readable) => (stream as { _handle?: ReadHandle | null })._handle;

/**
 * Stops `stream`'s reads from the OS, not only its 'data' events: a paused socket goes on reading
 * into its buffer up to its highWaterMark (16 KiB: 16,384 reads of a byte each). As net.Socket's
 * own pause does for a socket made with `onread`, and its reading does when its buffer is full.
 */
export function stopReading(stream: Readable): void {
  const h = handleOf(stream);
  if (h?.reading && typeof h.readStop === "function") {
    h.reading = false;
    h.readStop();
  }
}

/**
 * Starts them again ({@link stopReading}), before the stream is resumed: a resume asks for a
 * read only when none is pending, and one asked for just before the stop would never come.
 */
export function startReading(stream: Readable): void {
  const h = handleOf(stream);
  if (h && h.reading === false && typeof h.readStart === "function" && !stream.destroyed) {
    h.reading = true;
    h.readStart();
  }
}
