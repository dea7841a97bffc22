import { readFileSync, statSync } from "node:fs";
import { dirname, resolve } from "node:path";

/**
 * Trial runs that passed in this process, by everything a run depends on ({@link trialKey}).
 * A process that starts many kernels (the tests: hundreds a file, an embedder's restarts) ran
 * bubblewrap once more for each (~300 ms of a start on a busy machine). Only passes are kept: a
 * pass that no longer holds costs nothing but a later launch's refusal (bubblewrap never runs a
 * program unsandboxed), while a failure is asked again at the next start.
 */
const passed = new Set<string>();

/**
 * A file's identity and access as a key part: its device, inode, mode and owner, and for a
 * program its size and times too (a directory's change with every entry made in it, as /tmp's
 * does, says nothing of who may pass it); "-" and the error code if it cannot be read.
 */
function fileIdentity(path: string, contents: boolean): string {
  try {
    const st = statSync(path);
    const access = `${st.dev}:${st.ino}:${st.mode}:${st.uid}:${st.gid}`;
    return contents ? `${access}:${st.size}:${st.ctimeMs}:${st.mtimeMs}` : access;
  } catch (e) {
    return `-${(e as NodeJS.ErrnoException).code ?? ""}`;
  }
}

/** The host's switches for unprivileged user namespaces (what bubblewrap needs): a change makes a trial again. */
const USERNS_SWITCHES = [
  "/proc/sys/kernel/unprivileged_userns_clone",
  "/proc/sys/user/max_user_namespaces",
  "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
];

function switches(): string {
  return USERNS_SWITCHES.map((f) => {
    try {
      return readFileSync(f, "utf8").trim();
    } catch {
      return "-";
    }
  }).join(",");
}

/**
 * What a trial run's outcome depends on: the programs it runs (path and file identity), the
 * sandbox's settings, the mount table, the host's user-namespace switches, and the scratch root with each directory above it (their
 * modes and owners decide whether the sandbox's user reaches it; the root's own name does not
 * when it does not exist yet, so kernels with roots side by side share one trial).
 */
export function trialKey(programs: (string | undefined)[], settings: unknown, mountInfo: string, scratchRoot: string): string {
  const parts = programs.map((p) => (p === undefined ? "-" : `${p}=${fileIdentity(p, true)}`));
  let dir = resolve(scratchRoot);
  const root = fileIdentity(dir, false);
  parts.push(root.startsWith("-") ? "root:absent" : `root:${dir}=${root}`);
  for (let up = dirname(dir); up !== dir; dir = up, up = dirname(dir)) parts.push(`${up}=${fileIdentity(up, false)}`);
  parts.push(JSON.stringify(settings), mountInfo, switches());
  return parts.join("\n");
}

/** Whether a trial run with this key passed before in this process. */
export function trialPassed(key: string): boolean {
  return passed.has(key);
}

/** Keeps a passed trial run's key (bounded: a process that keeps changing its setup asks again). */
export function keepTrialPass(key: string): void {
  if (passed.size >= 64) passed.clear();
  passed.add(key);
}
