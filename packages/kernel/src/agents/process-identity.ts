import { readFileSync, readlinkSync } from "node:fs";

/** This boot's id (Linux): a pid names the same process only within one boot. */
const bootId = (() => {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return undefined;
  }
})();

/**
 * The pid namespace the kernel's pids are in: a container restarted under the same boot starts
 * a new one, and the pids of the old one mean nothing in it.
 */
const pidNamespace = (() => {
  try {
    return /^pid:\[(\d+)\]$/.exec(readlinkSync("/proc/self/ns/pid"))?.[1];
  } catch {
    return undefined;
  }
})();

/** Where pids mean what they meant at spawn: "<boot id> <pid namespace>", or undefined without /proc. */
export const pidScope = (): string | undefined =>
  bootId !== undefined && pidNamespace !== undefined ? `${bootId} ${pidNamespace}` : undefined;

/**
 * What tells a process apart from a later one given the same pid: where its pid means it
 * ({@link pidScope}) and the process's start time (clock ticks after boot, field 22 of
 * /proc/<pid>/stat), as "<boot id> <pid namespace> <start time>". Undefined when the process is
 * gone or there is no /proc: then nothing can be said about a pid, and a kernel must not signal
 * it on a guess.
 */
export function processIdentity(pid: number, procRoot = "/proc"): string | undefined {
  const scope = pidScope();
  if (scope === undefined || !Number.isSafeInteger(pid) || pid <= 0) return undefined;
  try {
    const stat = readFileSync(`${procRoot}/${pid}/stat`, "utf8");
    // The command name (field 2) may hold spaces and parentheses: fields count from its last ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const start = fields[19];
    return start && /^\d+$/.test(start) ? `${scope} ${start}` : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether process group `pid` is still the one whose leader was spawned with identity `procId`:
 * the leader still has it, or the leader is gone and the pid still means what it meant (same
 * boot, same pid namespace) — then only what is left of that group can carry its id, since
 * Linux gives no new process a pid still used as a group's id.
 */
export function stillOwnGroup(pid: number, procId: string): boolean {
  const now = processIdentity(pid);
  if (now !== undefined) return now === procId;
  const scope = pidScope();
  return scope !== undefined && procId.slice(0, procId.lastIndexOf(" ")) === scope;
}
