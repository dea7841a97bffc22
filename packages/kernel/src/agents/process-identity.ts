import { readdirSync, readFileSync, readlinkSync } from "node:fs";

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
    // The leader thread's own stat, same field 22: /proc/<pid>/stat sums over every thread, its
    // cost growing with their number (a process of many threads made each read long).
    const stat = readFileSync(`${procRoot}/${pid}/task/${pid}/stat`, "utf8");
    // The command name (field 2) may hold spaces and parentheses: fields count from its last ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const start = fields[19];
    return start && /^\d+$/.test(start) ? `${scope} ${start}` : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The environment entry a spawned process (a command's, an agent's) gets, and what it starts
 * inherits: `KPIP_SPAWN=<its op's or agent token's id>`. A group whose leader is gone is told the
 * kernel's by it ({@link stillOwnGroup}).
 */
export const SPAWN_ENV = "KPIP_SPAWN";

/**
 * Whether process group `pid` is still the one whose leader was spawned with identity `procId`
 * and environment entry `KPIP_SPAWN=<spawn>`: the leader still has that identity; or the leader is
 * gone, the pid still means what it meant (same boot, same pid namespace), and a member of the
 * group carries the spawn's entry. Where the leader is gone, its pid may have been given to a
 * later process once the spawn's whole group ended, and that process may have made a group of
 * its own and left it (a daemon's double fork: setsid, fork, exit): the group's id alone does not
 * tell the two apart. A group is never part the spawn's and part another's (no pid still used as
 * a group's id is given out), so one member carrying the entry says whose the group is.
 */
export function stillOwnGroup(pid: number, procId: string, spawn: string, procRoot = "/proc"): boolean {
  const now = processIdentity(pid, procRoot);
  // A leader that ended and awaits reaping (a zombie: its kernel died, and whoever adopted it
  // has not reaped it yet — seconds under some inits) keeps its identity but runs nothing: the
  // group is the spawn's only if a live member carries its entry, as when the leader is gone.
  if (now !== undefined && !ended(pid, procRoot)) return now === procId;
  const scope = pidScope();
  if (scope === undefined || procId.slice(0, procId.lastIndexOf(" ")) !== scope) return false;
  return groupCarries(pid, `${SPAWN_ENV}=${spawn}`, procRoot);
}

/**
 * Whether process `pid` has ended and not been reaped: every thread of it in state Z (zombie) or
 * X (dead). Its main thread alone says Z once that thread called pthread_exit while others run on
 * (its `environ` then reads as gone too): such a leader is alive, and still the spawn's.
 */
function ended(pid: number, procRoot: string): boolean {
  let tids: string[];
  try {
    tids = readdirSync(`${procRoot}/${pid}/task`);
  } catch {
    return true;
  }
  for (const tid of tids) {
    try {
      const stat = readFileSync(`${procRoot}/${pid}/task/${tid}/stat`, "utf8");
      const state = stat.charAt(stat.lastIndexOf(")") + 2);
      if (state !== "Z" && state !== "X") return false;
    } catch {
      // that thread is gone
    }
  }
  return true;
}

/** Whether a process of group `pgid` has `entry` in its environment (as it was exec'd). */
function groupCarries(pgid: number, entry: string, procRoot: string): boolean {
  for (const d of groupMembers(pgid, procRoot)) {
    try {
      if (readFileSync(`${procRoot}/${d}/environ`, "latin1").split("\0").includes(entry)) return true;
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return false;
}

/**
 * One scan of the process table's groups, kept for the synchronous run of checks it was made in
 * (a start's recovery loop asks for each left op and agent): a scan per group read every
 * process's stat once per row, N rows × the host's processes.
 */
let scan: { root: string; groups: Map<number, string[]> } | undefined;

/** The processes of group `pgid` (their /proc names), from this turn's scan. */
function groupMembers(pgid: number, procRoot: string): string[] {
  if (scan?.root !== procRoot) {
    scan = { root: procRoot, groups: scanGroups(procRoot) };
    queueMicrotask(() => {
      scan = undefined;
    });
  }
  return scan.groups.get(pgid) ?? [];
}

function scanGroups(procRoot: string): Map<number, string[]> {
  const groups = new Map<number, string[]>();
  let pids: string[];
  try {
    pids = readdirSync(procRoot).filter((d) => /^\d+$/.test(d));
  } catch {
    return groups;
  }
  for (const d of pids) {
    try {
      const stat = readFileSync(`${procRoot}/${d}/stat`, "utf8");
      // Field 5 (the process group), counted from after the command name's last ")".
      const pgid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2]);
      const members = groups.get(pgid);
      if (members) members.push(d);
      else groups.set(pgid, [d]);
    } catch {
      // gone meanwhile
    }
  }
  return groups;
}
