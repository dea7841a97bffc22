// No imports of ours on purpose: both entry points (main.ts and the bundled kpip.ts) use it.

/** The documented exit code for a failure answered by the kernel or a failed check. */
const FAILED = 1;

/**
 * Sets the exit code from a command's result. A reader that goes away (`kpip audit tail | head -1`)
 * is not an error of ours: EPIPE ends the process quietly; anything thrown is an internal error.
 */
export function exitWith(result: Promise<number>): void {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "EPIPE") process.exit(process.exitCode ?? 0);
      throw e;
    });
  }
  result.then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      process.stderr.write(`kpip: internal error: ${(e as Error).stack ?? e}\n`);
      process.exitCode = FAILED;
    },
  );
}
