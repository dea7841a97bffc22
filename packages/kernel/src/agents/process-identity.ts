import { readFileSync } from "node:fs";

/** This boot's id (Linux): a pid names the same process only within one boot. */
const bootId = (() => {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return undefined;
  }
})();

/** This boot's id, or undefined without /proc. */
export const currentBootId = (): string | undefined => bootId;

/**
 * What tells a process apart from a later one given the same pid: this boot's id and the
 * process's start time (clock ticks after boot, field 22 of /proc/<pid>/stat), as
 * "<boot id> <start time>". Undefined when the process is gone or there is no /proc: then
 * nothing can be said about a pid, and a kernel must not signal it on a guess.
 */
export function processIdentity(pid: number, procRoot = "/proc"): string | undefined {
  if (bootId === undefined || !Number.isSafeInteger(pid) || pid <= 0) return undefined;
  try {
    const stat = readFileSync(`${procRoot}/${pid}/stat`, "utf8");
    // The command name (field 2) may hold spaces and parentheses: fields count from its last ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const start = fields[19];
    return start && /^\d+$/.test(start) ? `${bootId} ${start}` : undefined;
  } catch {
    return undefined;
  }
}
