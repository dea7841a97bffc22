import { openSync, readdirSync, readFileSync } from "node:fs";

const O_CLOEXEC = 0o2000000;
let devNull: number | undefined;

/**
 * The descriptors of this process that a child would inherit although node did not hand them
 * over: open without close-on-exec (everything node and libuv open has it; these came from
 * whoever started the kernel). Linux only (/proc/self/fdinfo); elsewhere none are reported.
 * `from`: descriptors below it are the child's stdio and are set explicitly.
 */
export function leakedDescriptors(from: number): { fds: number[]; devNull: number } {
  devNull ??= openSync("/dev/null", "r");
  const fds: number[] = [];
  let names: string[];
  try {
    names = readdirSync("/proc/self/fd");
  } catch {
    return { fds, devNull };
  }
  for (const n of names) {
    const fd = Number(n);
    if (!Number.isInteger(fd) || fd < Math.max(3, from) || fd === devNull) continue;
    try {
      const m = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"));
      if (m && (Number.parseInt(m[1] as string, 8) & O_CLOEXEC) === 0) fds.push(fd);
    } catch {
      // closed meanwhile (it was the readdir's own descriptor, or another thread's)
    }
  }
  return { fds: fds.sort((a, b) => a - b), devNull };
}
