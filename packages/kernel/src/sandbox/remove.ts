import { spawn } from "node:child_process";
import { delimiter } from "node:path";
import { findProgram } from "./find-program.js";

/**
 * Removing what a sandboxed process left in its scratch directory: anything it could make.
 * Node's rmSync (and rm) recurse on the kernel's stack and build full paths: a directory chain
 * a few thousand levels deep throws RangeError or ENAMETOOLONG, and a million files stall the
 * event loop for seconds. Here coreutils' `rm` does it in a child process: fts walks with
 * openat (no PATH_MAX, no recursion limit), off the event loop, and never on another file
 * system (`--one-file-system`). A directory the process made unreadable to the kernel's user
 * (mode 000: only a kernel that is not root is kept out) is opened with `chmod -R u+rwX` and
 * removed again.
 */

const SYSTEM_BIN = ["/usr/bin", "/bin"];

const systemProgram = (name: string) => findProgram(name, SYSTEM_BIN.join(delimiter));

const RM = systemProgram("rm");
const CHMOD = systemProgram("chmod");

/** Runs `file args…`; resolves with undefined on exit 0, else with the end of its stderr. Never rejects. */
function run(file: string, args: string[]): Promise<string | undefined> {
  return new Promise((resolve) => {
    let tail = "";
    let child: ReturnType<typeof spawn>;
    try {
      child = spawn(file, args, { stdio: ["ignore", "ignore", "pipe"], env: { PATH: SYSTEM_BIN.join(":"), LC_ALL: "C" } });
    } catch (e) {
      resolve((e as Error).message);
      return;
    }
    // Only the last lines: a tree of a million entries it cannot remove says so a million times.
    child.stderr?.on("data", (d: Buffer) => {
      tail = `${tail}${d.toString()}`.slice(-500);
    });
    child.once("error", (e) => resolve(e.message));
    child.once("close", (code, signal) =>
      resolve(code === 0 ? undefined : tail.trim().split("\n").pop() || `${file} ended with ${code ?? signal}`),
    );
  });
}

/**
 * Removes each of `paths` whole (absent ones are no error). Resolves with why one could not be
 * removed, or undefined; never rejects, never blocks the event loop.
 */
export async function removeTrees(paths: string[]): Promise<string | undefined> {
  if (paths.length === 0) return undefined;
  if (!RM) return "no rm program in /usr/bin or /bin";
  // Many paths in a few commands (each argument list well below the kernel's bound).
  let failed: string | undefined;
  for (let i = 0; i < paths.length; i += 256) {
    const chunk = paths.slice(i, i + 256);
    const rm = ["-rf", "--one-file-system", "--", ...chunk];
    let why = await run(RM, rm);
    if (why && CHMOD) {
      await run(CHMOD, ["-R", "u+rwX", "--", ...chunk]);
      why = await run(RM, rm);
    }
    failed ??= why;
  }
  return failed;
}
