import { readdirSync, readFileSync } from "node:fs";

/** The pids of `pid`'s descendants, children first (Linux /proc; none elsewhere or once gone). */
function descendants(pid: number): number[] {
  const out: number[] = [];
  const walk = (p: number) => {
    let tasks: string[];
    try {
      tasks = readdirSync(`/proc/${p}/task`);
    } catch {
      return;
    }
    for (const t of tasks) {
      let kids: string;
      try {
        kids = readFileSync(`/proc/${p}/task/${t}/children`, "utf8");
      } catch {
        continue;
      }
      for (const k of kids.split(" ").filter(Boolean).map(Number)) {
        out.push(k);
        walk(k);
      }
    }
  };
  walk(pid);
  return out;
}

/**
 * Kills a sandbox: the process group of the bubblewrap process the kernel started, and every
 * process below it. The group alone is not enough: the sandboxed program runs in a session of
 * its own (--new-session), and killed while bubblewrap is still setting up, it could miss the
 * death signal bubblewrap arranges for it. Killing the sandbox's PID-namespace init ends every
 * process in the namespace.
 */
export function killSandbox(pid: number | undefined): void {
  if (!pid) return;
  const below = descendants(pid);
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  for (const p of below) {
    try {
      process.kill(p, "SIGKILL");
    } catch {
      // already gone
    }
  }
}
