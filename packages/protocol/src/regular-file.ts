import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";

/** A file that is not a regular file (a FIFO, a device, a directory) or larger than its reader takes. */
export class UnreadableFileError extends Error {
  override name = "UnreadableFileError";
  constructor(
    message: string,
    readonly code: "not-regular" | "too-large",
  ) {
    super(message);
  }
}

/**
 * Reads an open descriptor to its end, refusing more than `maxBytes` (one byte more is read: a
 * longer input is refused, never cut). For a pipe or a terminal, where no size is known up front.
 * Memory grows with what is read (from `sizeHint`, doubling), not with the bound: a large bound
 * costs nothing for a small input.
 */
export function readAtMost(fd: number, maxBytes: number, what: string, sizeHint = 64 * 1024): Buffer {
  let buf = Buffer.alloc(Math.min(maxBytes, Math.max(sizeHint, 0)) + 1);
  let got = 0;
  for (;;) {
    if (got === buf.length) {
      if (got > maxBytes) break;
      const bigger = Buffer.alloc(Math.min(maxBytes + 1, buf.length * 2));
      buf.copy(bigger, 0, 0, got);
      buf = bigger;
    }
    const n = readSync(fd, buf, got, buf.length - got, null);
    if (n === 0) break;
    got += n;
  }
  if (got > maxBytes) throw new UnreadableFileError(`${what} is over ${maxBytes} bytes`, "too-large");
  return buf.subarray(0, got);
}

/**
 * Reads a small file whole, only if it is a regular file of at most `maxBytes` (links followed).
 * For files someone else may have written (a tampered home, a token or identity file a persona
 * handed over): a FIFO would block the reader for ever (O_NONBLOCK keeps the open from waiting
 * for a writer), a device such as /dev/zero or a huge file would never end or fill memory.
 */
export function readRegularFile(path: string, maxBytes: number): Buffer {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new UnreadableFileError(`${path} is not a regular file`, "not-regular");
    if (st.size > maxBytes) throw new UnreadableFileError(`${path} is ${st.size} bytes, over ${maxBytes}`, "too-large");
    // A file that grew since the fstat is refused, not cut.
    return readAtMost(fd, maxBytes, path, st.size + 1);
  } finally {
    closeSync(fd);
  }
}
