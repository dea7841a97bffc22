import type { ChildProcess } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";

/**
 * The pids of `pid`'s descendants down to `depth` generations, children first (Linux /proc; none
 * elsewhere or once gone).
 */
export function descendants(pid: number, depth = Number.POSITIVE_INFINITY): number[] {
  const out: number[] = [];
  const walk = (p: number, level: number) => {
    if (level > depth) return;
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
        walk(k, level + 1);
      }
    }
  };
  walk(pid, 1);
  return out;
}

/**
 * Kills a sandbox: the process group of the bubblewrap process the kernel started, and every
 * process below it. The group alone is not enough: the sandboxed program may have left it (a
 * session of its own: setsid), and killed while bubblewrap is still setting up, it could miss the
 * death signal bubblewrap arranges for it. Killing the sandbox's PID-namespace init ends every
 * process in the namespace, so under bubblewrap (`namespaced`) only its children and theirs (the
 * namespace's init, the program) are looked for: the whole tree, read from /proc on the event
 * loop, was ~9 ms per sandbox of 240 processes (a persona's cancels of many such sandboxes held
 * the loop for tens of ms). Without a namespace the whole tree is killed, as found.
 */
export function killSandbox(pid: number | undefined, namespaced = false): void {
  if (!pid) return;
  const below = descendants(pid, namespaced ? 2 : Number.POSITIVE_INFINITY);
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

/**
 * Whether `child` has exited (Node reaped it: `exit` was emitted) though its pipes may still be
 * read: a kill then would tell an end that already happened as a kill, and signal a pid the
 * system may have given to another process since.
 */
export function exitedBefore(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** How long a started process's pipes are still read once it has exited (what it wrote last). */
export const PIPE_GRACE_MS = 1_000;

/**
 * Once `child` has exited, its pipes are read for at most `graceMs` more, then closed (the
 * child's `close` follows). Without the sandbox a process that escaped the child's group
 * (`setsid`) and kept a pipe would otherwise keep its op or agent running past its end (its
 * deadline too: the kill cannot find it), its slots held and its scratch directory in place
 * until the kernel stops. Under bubblewrap every process dies with the sandbox, so its pipes
 * close with it and this never fires.
 */
export function closePipesAfterExit(child: ChildProcess, graceMs = PIPE_GRACE_MS): void {
  child.once("exit", () => {
    // Closed from the check phase: what the pipes hold is read in the poll phase before it, even
    // when the loop was held for longer than the grace.
    const t = setTimeout(() => {
      setImmediate(() => {
        for (const s of child.stdio) s?.destroy();
      });
    }, graceMs);
    t.unref();
    child.once("close", () => clearTimeout(t));
  });
}
