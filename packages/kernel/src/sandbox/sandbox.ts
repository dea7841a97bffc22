import { type ChildProcess, type SpawnOptions, type SpawnSyncReturns, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  chownSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  rmdirSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { delimiter, join, resolve } from "node:path";
import type { Writable } from "node:stream";
import type { ErrorClass } from "@kpip/protocol";
import type Database from "better-sqlite3";
import { ConfigError } from "../config.js";
import { MAX_ARG_BYTES, MAX_ARGV_BYTES } from "../limits.js";
import { OpError } from "../primitives/types.js";
import { leakedDescriptors } from "./descriptors.js";
import { findProgram } from "./find-program.js";
import { keepTrialPass, trialKey, trialPassed } from "./probe-cache.js";
import { removeTrees } from "./remove.js";
import {
  isOwnScratchRoot,
  lockScratchRoot,
  ownScratchRoot,
  type RootLockFile,
  scratchRootLocked,
  unlockScratchRoot,
} from "./scratch-roots.js";
import { sandboxFilter } from "./seccomp.js";
import {
  type HiddenPath,
  parseMounts,
  readMountInfo,
  type SandboxView,
  type SecretFile,
  sandboxCovers,
  sandboxView,
  singleLinks,
  within,
} from "./view.js";

/** How the kernel runs the processes it starts: in bubblewrap, or (explicitly) without a sandbox. */
export type SandboxMode = "bwrap" | "none";

/** Resource limits of one sandbox; 0 = no limit. */
export interface SandboxLimits {
  /** Processes and threads inside the sandbox (RLIMIT_NPROC, counted per sandbox: see below). */
  processes: number;
  /** Address space of each process, in bytes (RLIMIT_AS). */
  memoryBytes: number;
  /** CPU time of each process, in seconds (RLIMIT_CPU). */
  cpuSeconds: number;
  /** Largest file a process may write, in bytes (RLIMIT_FSIZE). */
  fileBytes: number;
  /**
   * Descriptors each process may hold open (RLIMIT_NOFILE, soft and hard); absent or 0: the
   * kernel's own hard limit, which a process could raise its soft one to.
   */
  openFiles?: number;
}

/** What bubblewrap can do beyond its basics: each option the kernel uses only where it exists. */
export interface BwrapFeatures {
  /** `--size` (bubblewrap ≥ 0.5): a bound on each tmpfs. */
  size: boolean;
  /** `--disable-userns` (bubblewrap ≥ 0.8): no nested user namespace (with its own unbounded mounts). */
  disableUserns: boolean;
  /** `--seccomp FD`: the filter that keeps the kernel keyring from the sandbox, and its init's parent-death signal in place (seccomp.ts). */
  seccomp: boolean;
}

export interface SandboxConfig {
  mode: SandboxMode;
  /** Extra read-only paths the programs need (an interpreter's install, a script's directory). */
  readPaths: string[];
  /** Parent of the per-process scratch directories (never inside the kernel home). */
  scratchRoot: string;
  /** The unprivileged uid/gid bubblewrap runs as when the kernel runs as root. */
  uid: number;
  /** Paths no sandbox may see even when a read path shows them (home, scratch root, socket, keys: view.ts). */
  hidden: HiddenPath[];
  /** Files that must have no other name (hard link) than their own: the home's keys and database, the TLS key, the config. */
  secrets?: SecretFile[];
  limits: SandboxLimits;
  /**
   * Size of each of the sandbox's memory file systems, /tmp and /dev/shm, in bytes (tmpfs:
   * host memory that no RLIMIT counts); 0 = the kernel's default for a tmpfs (half the RAM).
   */
  tmpBytes?: number;
  /**
   * Niceness the sandboxed program starts with (0–19, 0 = the kernel's own): it cannot lower it
   * (RLIMIT_NICE is 0), so programs that spin take the CPU from the kernel's thread last.
   */
  nice?: number;
  /**
   * The OOM killer's adjustment of the sandbox's processes (0–1000; 0 or below the kernel's own:
   * the kernel's own). Bubblewrap's processes get it before the program starts, which inherits it.
   */
  oomScoreAdj?: number;
  /**
   * Whether a sandbox may open pseudo-terminals (its own devpts, bubblewrap's /dev/pts). Every
   * devpts but the host's first draws on one pool of the host's (`kernel.pty.max` less
   * `kernel.pty.reserve`: 3,072 by default), which no RLIMIT bounds: one sandbox's processes can
   * hold it all, and then no sandbox — nor any container on the host — gets a terminal. Off
   * (absent or false): /dev/pts is an empty read-only directory.
   */
  ptys?: boolean;
  /** Told when a scratch directory could not be removed (it stays; the next start tries again). */
  removalFailed?: (paths: string[], why: string) => void;
  /**
   * Removes trees whole, as {@link removeTrees} (the default) does: resolves with why one could
   * not be removed, never rejects. Tests hold a removal open to see what waits for it.
   */
  remover?: (paths: string[]) => Promise<string | undefined>;
  /** The bubblewrap program (default: found on PATH or in the system directories). */
  program?: string;
  /**
   * The kernel named the root (not an operator's directory): the lock file it holds there while
   * the root is its own, so that a kernel starting later can tell the root of one that died
   * (scratch-roots.ts): `.lock` when its processes die with it (bubblewrap), `.live` when they
   * may outlive it (no sandbox).
   */
  lockRoot?: RootLockFile | undefined;
}

/** One process to start in a sandbox. */
export interface SandboxSpec {
  executable: string;
  args: string[];
  /** The whole environment the program gets (nothing else is inherited). */
  env: Record<string, string>;
  /** Whether the grant allows network access (otherwise: a private network namespace with no interfaces). */
  network: boolean;
  limits: SandboxLimits;
  /** Descriptors beyond 0–2 the caller hands over (as node stdio entries). */
  extra: SpawnOptions["stdio"] & unknown[];
  /**
   * Whose the scratch directory is (the starting persona's tree): its removal waits only
   * behind that owner's own, never behind another's ({@link Sandbox.remove}).
   */
  owner?: string;
  /**
   * The seccomp filter on standard input (a spawnSync's `input`, {@link Launch.input}), not on a
   * descriptor of its own: the program then starts with no standard input. For the trial run,
   * whose spawnSync can feed only standard input.
   */
  filterOnStdin?: boolean;
}

/** What to hand node's spawn, and the scratch directory to remove when the process tree has ended. */
export interface Launch {
  file: string;
  args: string[];
  options: SpawnOptions;
  scratch: string;
  /**
   * Called once the process was spawned (`child`; absent when its spawn failed): writes the
   * seccomp filter into the pipe bubblewrap reads it from, to its end. Idempotent.
   */
  spawned(child?: ChildProcess): void;
  /** With {@link SandboxSpec.filterOnStdin}: the filter, for spawnSync's `input`. */
  input?: Buffer;
  /**
   * Removes the scratch directory (its rule: it lives exactly as long as its process tree), in
   * a child process, off the event loop. Never throws, never rejects: a failure is told to
   * {@link SandboxConfig.removalFailed} and the directory is left for the next start's sweep.
   */
  cleanup(): Promise<void>;
}

/** This process's hard RLIMIT_NOFILE (from /proc/self/limits), or undefined: unlimited, or not known. */
function hardOpenFiles(): number | undefined {
  try {
    const m = /^Max open files\s+\S+\s+(\d+)\s/m.exec(readFileSync("/proc/self/limits", "utf8"));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Gives the session `pid` leads (a sandbox's bubblewrap, made a session leader by its spawn) the
 * niceness `nice` as a scheduler autogroup. With autogroups on (Linux's default where the kernel
 * runs in the root CPU cgroup, as a process started from a shell does) the scheduler shares the
 * CPU between sessions first, and by each process's niceness only within its session: every
 * sandbox, a session of its own, weighed as much as the kernel's whole session whatever its
 * processes' niceness. Best effort: no autogroups (the file is absent, or ignored), or a process
 * gone, is nothing to do; an unprivileged writer may be refused for a tenth of a second after any
 * other write on the host (EAGAIN), and tries again a few times.
 */
export function autogroupNice(pid: number, nice: number, tries = 5): void {
  try {
    writeFileSync(`/proc/${pid}/autogroup`, String(nice));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EAGAIN" && tries > 1)
      setTimeout(() => autogroupNice(pid, nice, tries - 1), 100).unref();
  }
}

/** The score to give sandboxes: `wanted` if above the kernel's own (only raising needs no privilege). */
function oomScoreAbove(wanted: number | undefined): number | undefined {
  if (!wanted) return undefined;
  let own: number;
  try {
    own = Number(readFileSync("/proc/self/oom_score_adj", "utf8"));
  } catch {
    return undefined; // not Linux, or no /proc: nothing to adjust
  }
  return wanted > own ? wanted : undefined;
}

/**
 * Gives bubblewrap (`child`) and the sandbox process it forks the OOM score `score`, then calls
 * `then` (which feeds the seccomp filter the sandbox process waits for before it starts the
 * program, which inherits the score). The sandbox process may not be forked yet, or be forked
 * with bubblewrap's score from before the write: it is looked for every millisecond until it
 * is listed (a bubblewrap that ends first, having failed, starts nothing; its pid is not read
 * again once it is reaped, when it may be another process's). Best effort: a score that cannot
 * be written (the process gone, no /proc) leaves the kernel's. A writer with CAP_SYS_RESOURCE (a
 * root kernel, outside containers that drop it) also makes it the least the process and its
 * descendants may set; without it a program may lower its own back to the kernel's.
 */
function raiseOomScore(child: ChildProcess, score: number, then: () => void): void {
  const pid = child.pid as number;
  const set = (p: number | string) => {
    try {
      if (readFileSync(`/proc/${p}/oom_score_adj`, "utf8").trim() !== String(score))
        writeFileSync(`/proc/${p}/oom_score_adj`, String(score));
    } catch {
      // gone, or not ours to write: the kernel's score stays
    }
  };
  set(pid);
  const forked = (tries: number): void => {
    if (child.exitCode !== null || child.signalCode !== null) return then();
    let children: string[];
    try {
      children = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").split(" ").filter(Boolean);
    } catch {
      return then();
    }
    for (const c of children) set(c);
    if (children.length > 0 || tries <= 1) return then();
    setTimeout(() => forked(tries - 1), 1);
  };
  forked(2000);
}

/** Most `rm` children removing scratch directories at once. */
const MAX_REMOVERS = 2;
/** The owner of the removals the kernel makes itself (a crashed run's directories, stale roots, its root at stop). */
const KERNEL_OWNER = "";

/** The process sandbox is not usable; nothing is started. */
export class SandboxUnavailableError extends OpError {
  constructor(reason: string) {
    super(
      "RESOURCE",
      `no process sandbox: ${reason}. Install bubblewrap (e.g. \`apt-get install bubblewrap\`) and allow unprivileged user namespaces, or start the kernel with --sandbox none to run processes unconfined`,
    );
  }
}

/**
 * What the sandbox would show has changed since the kernel started (the mount table, a read
 * path re-linked) so that no cover can hide the kernel's secrets: no process is started.
 */
export class SandboxViewError extends Error {
  override name = "SandboxViewError";
}

/**
 * What a persona is told of a launch that failed (agent.spawn's refusal, a command's op message):
 * a refusal written for it (an OpError) as it is, with its class; anything else — a file-system
 * error on the scratch root, a changed mount table, a secret file's new hard link — is the
 * host's failure, which the persona could not cause: INTERNAL (PROTOCOL §10.1, retryable), never
 * SEMANTIC. Its text names host paths (the scratch root, the kernel's temp directory, its home
 * and keys), which a persona must not learn: it is told only that the kernel could not prepare
 * the sandbox, and `log` gets the whole error for the operator.
 */
export function launchFailure(e: unknown, log: (err: unknown) => void): { errorClass: ErrorClass; message: string } {
  if (e instanceof OpError) return { errorClass: e.errorClass, message: e.message };
  // Within MAX_ARGV_BYTES yet too long for this host's exec (a kernel run with a small stack limit):
  // still the persona's command line, not the host's failure.
  if ((e as NodeJS.ErrnoException | undefined)?.code === "E2BIG")
    return { errorClass: "SEMANTIC", message: "its command line is longer than exec takes on this host" };
  log(e);
  if (e instanceof SandboxViewError || e instanceof ConfigError)
    return {
      errorClass: "INTERNAL",
      message:
        "what the sandbox would show changed since the kernel started: no process is started until the operator fixes it (the kernel's log says what)",
    };
  return { errorClass: "INTERNAL", message: "the kernel could not prepare its sandbox (the kernel's log says why)" };
}

/**
 * Refuses (SEMANTIC) a command line exec cannot carry: an argument with a NUL, one past
 * {@link MAX_ARG_BYTES}, or all of them past {@link MAX_ARGV_BYTES} (within exec's own bound, and
 * what the kernel keeps for an agent). Each by its place among the persona's arguments: Node's
 * refusal of a NUL named its place in bubblewrap's command line (a view of the sandbox's set-up),
 * and its spawn threw E2BIG, which the launch took for the host's failure (INTERNAL, retryable,
 * "the kernel could not prepare its sandbox", a warning in the log each time), while an agent's
 * arguments, up to exec's whole 2 MiB, were stored and listed. Agent.spawn asks before it mints.
 */
export function checkCommandLine(executable: string, args: string[]): void {
  const nul = [executable, ...args].findIndex((a) => a.includes("\0"));
  if (nul >= 0)
    throw new OpError(
      "SEMANTIC",
      nul === 0
        ? "the executable's name contains a NUL byte"
        : `argument ${nul - 1} contains a NUL byte, which no process argument can carry`,
    );
  let total = 0;
  for (const [i, a] of [executable, ...args].entries()) {
    const n = Buffer.byteLength(a, "utf8");
    if (n > MAX_ARG_BYTES)
      throw new OpError(
        "SEMANTIC",
        `${i === 0 ? "the executable's name" : `argument ${i - 1}`} is ${n} bytes: a process argument takes at most ${MAX_ARG_BYTES}`,
      );
    // As exec counts it: the bytes, the NUL, the pointer.
    total += n + 1 + 8;
  }
  if (total > MAX_ARGV_BYTES)
    throw new OpError(
      "SEMANTIC",
      `the command line takes ${total} bytes (each argument's UTF-8 bytes, its NUL and its 8-byte pointer): at most ${MAX_ARGV_BYTES}`,
    );
}

/** `text` with the scratch root's host path (and every scratch directory's under it) named instead. */
function hideScratchRoot(text: string, root: string): string {
  return text.split(root).join("<the scratch root>");
}

/** System directories bound read-only into every sandbox (those that exist here). */
const SYSTEM_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"];
/** Where the scratch directory appears inside the sandbox (also the working directory and HOME). */
export const SANDBOX_SCRATCH = "/scratch";

const SCRATCH_NAME = /^[0-9a-f]{24}$/;

/**
 * `bwrap --help`'s answers by the program file they came from (its path, device, inode, size and
 * change time): a process that starts many kernels (the tests: hundreds) ran bubblewrap once more
 * for each (~50 ms of a start on a busy machine). A replaced or changed program is asked again.
 */
const featuresByProgram = new Map<string, BwrapFeatures>();

/** Which of the options in {@link BwrapFeatures} `bwrap --help` lists. */
function bwrapFeatures(bwrap: string): BwrapFeatures {
  let key: string | undefined;
  try {
    const st = statSync(bwrap);
    key = `${bwrap}\0${st.dev}:${st.ino}:${st.size}:${st.ctimeMs}:${st.mtimeMs}`;
  } catch {
    key = undefined; // not there to stat: asked (and failing) as before
  }
  const known = key === undefined ? undefined : featuresByProgram.get(key);
  if (known) return known;
  const r = spawnSync(bwrap, ["--help"], { encoding: "utf8", timeout: 10_000 });
  const help = `${r.stdout ?? ""}${r.stderr ?? ""}`;
  const features = {
    size: /^\s*--size\b/m.test(help),
    disableUserns: /^\s*--disable-userns\b/m.test(help),
    seccomp: /^\s*--seccomp\b/m.test(help),
  };
  // Only a program that answered: a failed run (a timeout on a loaded machine) is asked again next time.
  if (key !== undefined && r.status === 0) featuresByProgram.set(key, features);
  return features;
}

/**
 * Every process the kernel starts runs through here. With mode "bwrap": bubblewrap with new
 * user, PID, IPC, UTS, cgroup and (unless granted) network namespaces; the system directories
 * read-only, one private writable scratch directory, a fresh /proc, /dev and /tmp, no view of the
 * home, the keys, the socket or other sandboxes; all capabilities dropped, its own session,
 * killed with the kernel. As root, bubblewrap itself runs as an unprivileged uid, so nothing
 * inside is root outside and RLIMIT_NPROC applies. The limits are set by prlimit inside the new
 * user namespace, where the kernel counts RLIMIT_NPROC per namespace: one sandbox's fork bomb
 * is stopped at its own bound and does not eat other sandboxes' share.
 */
export class Sandbox {
  /** Why the sandbox cannot be used, when it cannot (mode "bwrap" only). */
  readonly unavailable: string | undefined;
  /**
   * What this bubblewrap cannot bound, said at start and by status (processes still run):
   * empty when it has every option in {@link BwrapFeatures}.
   */
  readonly weakened: string[] = [];
  private features: BwrapFeatures = { size: false, disableUserns: false, seccomp: false };
  /** The seccomp filter's program (seccomp.ts), when this bubblewrap and architecture can have one. */
  private filter: Buffer | undefined;
  /** Scratch removals under way: close() waits for them. */
  private readonly removals = new Set<Promise<void>>();
  /** The owner of each removal running now: at most one each ({@link Sandbox.remove}). */
  private readonly removing = new Set<string>();
  /** Removals waiting for a remover, oldest first. */
  private readonly removersWaiting: { owner: string; go: () => void }[] = [];
  /** When each owner with removals waiting or running last got a remover (a counter): the least recent goes first. */
  private readonly lastServed = new Map<string, number>();
  private served = 0;
  private readonly bwrap: string | undefined;
  private readonly prlimit: string | undefined;
  private readonly nice: string | undefined;
  private readonly asRoot = process.getuid?.() === 0;
  /** What the sandboxes' processes get (above the kernel's own), or undefined to leave them the kernel's. */
  private readonly oomScore: number | undefined;
  /** The kernel's own hard RLIMIT_NOFILE: a sandbox's bound is never above it (prlimit could not raise it). */
  private readonly filesHard = hardOpenFiles();
  /**
   * Found once: only what the kernel inherited lacks close-on-exec (all it opens itself has it),
   * so a later scan would find nothing new, and costs a read per open descriptor.
   */
  private readonly leaked = leakedDescriptors(3);
  /** The scratch root's lock, while the root is this kernel's ({@link SandboxConfig.lockRoot}). */
  private rootLock: Database.Database | undefined;
  /** What is bound and where hidden paths are covered, by real path (view.ts). */
  private view: SandboxView = { system: [], binds: [], covers: [] };
  /** The mount table the view was computed for (launch() computes the covers again when it differs). */
  private mountInfo = "";
  /** Why the current mount table shows a hidden path no cover can hide (launches are refused), if it does. */
  private refusal: string | undefined;

  /**
   * Throws a ConfigError when a read path would show a hidden path that no cover can hide, or a
   * secret file has another name (a hard link).
   */
  constructor(readonly config: SandboxConfig) {
    this.oomScore = oomScoreAbove(config.oomScoreAdj);
    if (config.mode === "none") return;
    this.mountInfo = readMountInfo();
    this.view = sandboxView(SYSTEM_DIRS, config.readPaths, config.hidden, parseMounts(this.mountInfo));
    singleLinks(config.secrets ?? []);
    const sysPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    this.bwrap = config.program ?? findProgram("bwrap", `${process.env.PATH ?? ""}${delimiter}${sysPath}`);
    this.prlimit = findProgram("prlimit", "/usr/bin:/bin:/usr/sbin:/sbin");
    this.nice = config.nice ? findProgram("nice", "/usr/bin:/bin") : undefined;
    if (this.bwrap) {
      this.features = bwrapFeatures(this.bwrap);
      if (!this.features.size && config.tmpBytes)
        this.weakened.push(
          "bubblewrap lacks --size (needs 0.5 or later): the sandbox's /tmp and /dev/shm are not bounded by sandboxTmpBytes",
        );
      if (!this.features.disableUserns)
        this.weakened.push(
          "bubblewrap lacks --disable-userns (needs 0.8 or later): a sandboxed process can make nested user namespaces and mount unbounded tmpfs in them",
        );
      this.filter = this.features.seccomp ? sandboxFilter() : undefined;
      if (!this.filter)
        this.weakened.push(
          `no seccomp filter (${this.features.seccomp ? `no syscall table for ${process.arch}` : "bubblewrap lacks --seccomp"}): a sandboxed process shares the kernel's session keyring (its keys, and keys other sandboxes leave there), can make its sandbox's processes outlive the command and the kernel (by taking over the sandbox's init and clearing its parent-death signal), can hold host memory that sandboxMemoryBytes does not count (memfds, System V shared memory, message queues, semaphores), and can stall the kernel's event loop by handing it, over its output, a socket whose close lingers`,
        );
    }
    this.unavailable = this.probe();
  }

  get mode(): SandboxMode {
    return this.config.mode;
  }

  /**
   * PATH for a sandboxed program: the kernel's own PATH entries that the sandbox can see (system
   * directories and read paths), so programs resolve as they do for the kernel while the PATH
   * reveals nothing of where the kernel runs from (e.g. a checkout's node_modules/.bin).
   */
  programPath(kernelPath = process.env.PATH ?? ""): string {
    if (this.config.mode === "none") return kernelPath || "/usr/bin:/bin";
    const visible = [...SYSTEM_DIRS, ...this.config.readPaths.map((p) => resolve(p))];
    const dirs = kernelPath.split(delimiter).filter((d) => d.startsWith("/") && visible.some((v) => within(d, v)));
    return [...new Set(dirs)].join(delimiter) || "/usr/bin:/bin";
  }

  /** A real trial run: the sandbox is usable only if a program actually ran inside it. */
  private probe(): string | undefined {
    if (!this.bwrap) return "bubblewrap (bwrap) is not installed";
    if (!this.prlimit) return "prlimit (util-linux) is not installed";
    if (this.config.nice && !this.nice) return "nice (coreutils) is not installed";
    // The view (what is bound, what covered), not the hidden paths themselves: a kernel's home,
    // socket and keys differ from kernel to kernel but are covered only where a bind shows them.
    const { mode, readPaths, uid, limits, tmpBytes, nice, oomScoreAdj, ptys, lockRoot } = this.config;
    const key = trialKey(
      [this.bwrap, this.prlimit, this.nice],
      { mode, readPaths, uid, limits, tmpBytes, nice, oomScoreAdj, ptys, lockRoot, view: this.view, features: this.features },
      this.mountInfo,
      this.config.scratchRoot,
    );
    if (trialPassed(key)) return undefined;
    const passed = this.trialRun();
    if (passed === undefined) keepTrialPass(key);
    return passed;
  }

  /** The trial run itself: undefined when a program ran inside the sandbox, else why not. */
  private trialRun(): string | undefined {
    let launch: Launch;
    try {
      launch = this.launch({
        executable: "sh",
        args: ["-c", "test ! -e /proc/1/cwd/nonexistent && echo sandboxed"],
        env: { PATH: "/usr/bin:/bin" },
        network: false,
        limits: this.config.limits,
        extra: [],
        filterOnStdin: true,
      });
    } catch (e) {
      return `cannot prepare a sandbox: ${(e as Error).message}`;
    }
    try {
      let r: SpawnSyncReturns<string>;
      try {
        r = spawnSync(launch.file, launch.args, {
          ...launch.options,
          encoding: "utf8",
          timeout: 20_000,
          ...(launch.input ? { input: launch.input } : {}),
        });
      } finally {
        launch.spawned();
      }
      if (r.error) return `bubblewrap did not run: ${r.error.message}`;
      if (r.status !== 0 || r.stdout.trim() !== "sandboxed") {
        const why = (r.stderr || "").trim().split("\n").pop() || `exit ${r.status ?? r.signal}`;
        return `bubblewrap failed its trial run (${why}): unprivileged user namespaces may be disabled (e.g. Ubuntu's AppArmor restriction: kernel.apparmor_restrict_unprivileged_userns), or a read path or the scratch directory is not reachable by the sandbox's user`;
      }
      return undefined;
    } finally {
      // The trial run wrote nothing in it: an empty directory, removed at once.
      try {
        rmdirSync(launch.scratch);
      } catch {
        void launch.cleanup();
      }
      // A root the kernel named is kept, locked, to its stop (holdRoot): let go, its name (anyone
      // can compute it) could be taken by another local user before the first real launch.
      // Otherwise it is made again by the first real launch: a kernel that never starts a
      // process leaves nothing behind.
      if (!this.config.lockRoot) {
        this.unlockRoot();
        try {
          if (isOwnScratchRoot(this.config.scratchRoot)) rmdirSync(this.config.scratchRoot);
        } catch {
          // not empty (an operator's directory) or already gone
        }
      }
    }
  }

  /**
   * {@link unavailable} as a persona may read it (the refusal of its agent.spawn and commands,
   * system.info): the scratch root's host path, which bubblewrap's complaint may quote, is named,
   * not shown. The operator has the whole text (the log at start, the kernel.start record).
   */
  get unavailableToPersonas(): string | undefined {
    return this.unavailable === undefined ? undefined : hideScratchRoot(this.unavailable, this.config.scratchRoot);
  }

  /** Throws {@link SandboxUnavailableError} when processes may not be started. */
  check(): void {
    if (this.config.mode === "bwrap" && this.unavailableToPersonas) throw new SandboxUnavailableError(this.unavailableToPersonas);
  }

  /**
   * Removes `paths` whole in the background (remove.ts: no depth or path-length limit, off the
   * event loop); close() waits for it. Never throws, never rejects; a failure is told to
   * `removalFailed`. `owner`: whose directories they are (see {@link removerSlot}).
   */
  remove(paths: string[], owner = KERNEL_OWNER): Promise<void> {
    if (paths.length === 0) return Promise.resolve();
    const remover = this.config.remover ?? removeTrees;
    const attempt = async () => {
      try {
        return await remover(paths);
      } catch (e) {
        return e instanceof Error ? e.message : String(e);
      }
    };
    const p = this.removerSlot(owner, attempt)
      .then((why) => {
        if (why) this.config.removalFailed?.(paths, why);
      })
      .catch(() => {})
      .finally(() => this.removals.delete(p));
    this.removals.add(p);
    return p;
  }

  /**
   * Runs `f` when fewer than {@link MAX_REMOVERS} removals run and none of `owner`'s does:
   * processes that end in a burst, each leaving a large tree, get their `rm` children one after
   * another, not all at once; and since a process's slot is held until its directory is gone,
   * one persona's million-file trees take one remover at a time and never hold up another's
   * removals (nor, so, its process slots). A freed remover goes to the waiting owner served
   * least recently (never served first; oldest removal first within one owner), so an owner
   * with many removals queued takes turns with the others instead of going again.
   */
  private removerSlot<T>(owner: string, f: () => Promise<T>): Promise<T> {
    const run = async () => {
      try {
        return await f();
      } finally {
        this.removing.delete(owner);
        if (!this.removersWaiting.some((w) => w.owner === owner)) this.lastServed.delete(owner);
        this.startWaiting();
      }
    };
    if (this.removing.size < MAX_REMOVERS && !this.removing.has(owner)) {
      this.removing.add(owner);
      this.lastServed.set(owner, this.served++);
      return run();
    }
    return new Promise<void>((go) => this.removersWaiting.push({ owner, go })).then(run);
  }

  /** While a remover is free: starts the oldest waiting removal of the owner served least recently among those with none running. */
  private startWaiting(): void {
    while (this.removing.size < MAX_REMOVERS) {
      let pick = -1;
      let when = Number.POSITIVE_INFINITY;
      for (let i = 0; i < this.removersWaiting.length; i++) {
        const o = (this.removersWaiting[i] as { owner: string }).owner;
        if (this.removing.has(o)) continue;
        const t = this.lastServed.get(o) ?? -1;
        if (t < when) {
          when = t;
          pick = i;
        }
      }
      if (pick < 0) return;
      const [w] = this.removersWaiting.splice(pick, 1) as [{ owner: string; go: () => void }];
      this.removing.add(w.owner);
      this.lastServed.set(w.owner, this.served++);
      w.go();
    }
  }

  /**
   * Removes scratch directories a crashed kernel left (none of their processes can still run:
   * they died with it), in the background: whatever they hold, the start neither waits nor
   * fails. Only entries named as this class names them; the root itself stays.
   */
  sweep(): Promise<void> {
    let names: string[];
    // Never through a link or in another user's directory: the launch refuses such a root, saying why.
    if (!isOwnScratchRoot(this.config.scratchRoot)) return Promise.resolve();
    try {
      names = readdirSync(this.config.scratchRoot);
    } catch {
      return Promise.resolve();
    }
    return this.remove(names.filter((n) => SCRATCH_NAME.test(n)).map((n) => join(this.config.scratchRoot, n)));
  }

  /**
   * At kernel stop, when no process of its is left: the scratch directories, and the scratch
   * root itself when the kernel named it (never an operator's directory). Waits for every
   * removal under way (none blocks the event loop); never throws.
   */
  async close(ownRoot: boolean): Promise<void> {
    void this.sweep();
    while (this.removals.size > 0) await Promise.all([...this.removals]);
    if (ownRoot && isOwnScratchRoot(this.config.scratchRoot)) await this.remove([this.config.scratchRoot]);
    this.rootLock?.close();
    this.rootLock = undefined;
  }

  private unlockRoot(): void {
    if (this.rootLock) unlockScratchRoot(this.config.scratchRoot, this.rootLock, this.config.lockRoot);
    this.rootLock = undefined;
  }

  /**
   * Before each launch, what may have changed since start without the kernel: a mount under a
   * read path (the covers are computed again, as a start would, when the mount table's text
   * differs from the last one seen: one read of /proc/self/mountinfo and a string comparison
   * when nothing changed), and a secret file's link count (one stat each).
   */
  private recheck(): void {
    const now = readMountInfo();
    if (now !== this.mountInfo) {
      this.mountInfo = now;
      try {
        this.view = {
          ...this.view,
          covers: sandboxCovers(this.view.system, this.view.binds, this.config.hidden, parseMounts(now)),
        };
        this.refusal = undefined;
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        // Kept until the table changes again: every launch till then is refused without recomputing.
        this.refusal = e.message;
      }
    }
    if (this.refusal)
      throw new SandboxViewError(
        `the mounts changed since the kernel started: ${this.refusal}; no process is started until it is unmounted`,
      );
    singleLinks(this.config.secrets ?? []);
  }

  /**
   * A root the kernel named ({@link SandboxConfig.lockRoot}): made and locked now, held to the
   * kernel's stop, so that no other local user can take its name (anyone can compute it) while
   * the kernel runs. Throws {@link UnsafeScratchRootError} when it was taken meanwhile.
   */
  holdRoot(): void {
    const lockFile = this.config.lockRoot;
    if (!lockFile || (this.rootLock && scratchRootLocked(this.config.scratchRoot, lockFile))) return;
    this.rootLock?.close();
    this.rootLock = lockScratchRoot(this.config.scratchRoot, lockFile);
  }

  /** The command line and spawn options for one sandboxed process, with its fresh scratch directory. */
  launch(spec: SandboxSpec): Launch {
    checkCommandLine(spec.executable, spec.args);
    if (this.config.mode === "bwrap") this.recheck();
    const root = this.config.scratchRoot;
    const lockFile = this.config.lockRoot;
    if (lockFile && !(this.rootLock && scratchRootLocked(root, lockFile))) {
      // Locked before any scratch directory is made in it (again, if the root was removed meanwhile).
      this.rootLock?.close();
      this.rootLock = lockScratchRoot(root, lockFile);
    }
    if (!ownScratchRoot(root)) mkdirSync(root, { recursive: true, mode: 0o711 });
    ownScratchRoot(root);
    const st = lstatSync(root);
    const runAs = this.config.mode === "bwrap" && this.asRoot ? this.config.uid : undefined;
    // No other local user passes through: a scratch directory is its sandbox's to open (chmod 755
    // /scratch), and a program the sandbox marks set-user-id there is, on the host's disk (no
    // nosuid), the sandbox's user's — the kernel's own, unless the kernel is root — for whoever
    // reaches it. Under a root kernel the sandbox's group (bubblewrap runs as sandboxUid) passes
    // through to reach its own directory; nobody lists the root.
    if (runAs !== undefined) {
      if (st.gid !== runAs) chownSync(root, st.uid, runAs);
      if ((st.mode & 0o777) !== 0o710) chmodSync(root, 0o710);
    } else if ((st.mode & 0o777) !== 0o700) chmodSync(root, 0o700);
    const scratch = join(root, randomBytes(12).toString("hex"));
    mkdirSync(scratch, { mode: 0o700 });
    if (runAs !== undefined) chownSync(scratch, runAs, runAs);
    const owner = spec.owner ?? KERNEL_OWNER;
    const cleanup = () => this.remove([scratch], owner);
    const stdio = ["ignore", "pipe", "pipe", ...spec.extra] as unknown[];
    // The seccomp filter, read by bubblewrap to its end from a pipe of its own (node's socket
    // pair), which it closes before the program runs; the kernel writes it once spawned. No file.
    const filter = this.config.mode === "bwrap" ? this.filter : undefined;
    const onStdin = filter !== undefined && spec.filterOnStdin === true;
    const seccompFd = filter === undefined ? undefined : onStdin ? 0 : stdio.length;
    if (seccompFd !== undefined) stdio[seccompFd] = "pipe";
    let fed = false;
    const nice = this.config.mode === "bwrap" ? this.config.nice : undefined;
    const oomScore = this.config.mode === "bwrap" ? this.oomScore : undefined;
    const spawned = (child?: ChildProcess) => {
      if (fed) return;
      fed = true;
      // Before the filter: bubblewrap waits for it, so the program starts in its niced autogroup.
      if (nice && child?.pid) autogroupNice(child.pid, nice);
      const feed = () => {
        if (onStdin || seccompFd === undefined) return;
        const pipe = child?.stdio[seccompFd] as Writable | null | undefined;
        if (!pipe) return;
        // bubblewrap gone before it read (it failed): nothing to tell.
        pipe.on("error", () => {});
        // Closed once written: what the pair holds stays readable by bubblewrap, then its end.
        pipe.end(filter, () => pipe.destroy());
      };
      // Also before the filter, which bubblewrap's sandbox process waits for before it starts the program.
      if (oomScore !== undefined && child?.pid) raiseOomScore(child, oomScore, feed);
      else feed();
    };
    // Descriptors the kernel inherited without close-on-exec would pass to the child (node cannot
    // set the flag, bubblewrap does not close them): each one is replaced with /dev/null there.
    const { fds, devNull } = this.leaked;
    for (const fd of fds) {
      if (fd < stdio.length) continue;
      while (stdio.length < fd) stdio.push("ignore");
      stdio[fd] = devNull;
    }
    const options: SpawnOptions = {
      shell: false,
      detached: true,
      env: spec.env,
      stdio: stdio as SpawnOptions["stdio"],
      ...(runAs !== undefined ? { uid: runAs, gid: runAs } : {}),
    };
    if (this.config.mode === "none") {
      return {
        file: spec.executable,
        args: spec.args,
        options: { ...options, cwd: scratch },
        scratch,
        spawned: () => {},
        cleanup,
      };
    }
    const a: string[] = [
      "--unshare-user",
      "--unshare-pid",
      "--unshare-ipc",
      "--unshare-uts",
      "--unshare-cgroup-try",
      ...(spec.network ? [] : ["--unshare-net"]),
      "--uid",
      "65534",
      "--gid",
      "65534",
      "--hostname",
      "kpip-sandbox",
      "--die-with-parent",
      // No --new-session: the spawn (detached) made bubblewrap a session leader with no
      // controlling terminal, so the sandbox has none to inject input into (TIOCSTI), and its
      // processes share that session's autogroup, niced below (autogroupNice); a session of
      // their own would be a new autogroup, weighed as the kernel's whole session is.
      "--cap-drop",
      "ALL",
    ];
    for (const d of SYSTEM_DIRS) {
      let s: ReturnType<typeof lstatSync>;
      try {
        s = lstatSync(d);
      } catch {
        continue;
      }
      if (s.isSymbolicLink()) a.push("--symlink", readlinkSync(d), d);
      else if (s.isDirectory()) a.push("--ro-bind", d, d);
    }
    // Every writable file system in the sandbox but /scratch is memory (tmpfs), which no RLIMIT
    // counts: /tmp and /dev/shm are sized; /dev, the root and the covers are read-only.
    const sized = this.features.size && this.config.tmpBytes ? ["--size", String(this.config.tmpBytes)] : [];
    a.push("--proc", "/proc", "--dev", "/dev", ...sized, "--tmpfs", "/dev/shm");
    // bubblewrap's own devpts covered (its /dev/ptmx leads there): no pseudo-terminal from the host's shared pool.
    if (!this.config.ptys) a.push("--tmpfs", "/dev/pts", "--remount-ro", "/dev/pts");
    a.push("--remount-ro", "/dev");
    // The fresh /tmp first: a read path under /tmp (a checkout in /tmp) is bound on top of it, not hidden by it.
    a.push(...sized, "--tmpfs", "/tmp");
    // From the real path found at start, where it still is that: a read path made or re-linked
    // since (say, into the home) is refused, not followed to a place no cover was planned for.
    for (const b of this.view.binds) {
      let now: string;
      try {
        now = realpathSync(b.source);
      } catch {
        continue; // not there: nothing to show (as --ro-bind-try)
      }
      if (now !== b.source)
        throw new SandboxViewError(
          `sandbox read path ${b.dest} has changed since the kernel started (a symbolic link): restart the kernel`,
        );
      a.push("--ro-bind-try", b.source, b.dest);
    }
    // Each place a bound path shows a hidden one: an empty tmpfs over a directory, /dev/null over
    // a file. After every bind, so that none is mounted over a cover. Not there (yet): nothing to show.
    const readOnly: string[] = [];
    for (const c of this.view.covers) {
      let s: ReturnType<typeof lstatSync>;
      try {
        s = lstatSync(c.host);
      } catch {
        continue;
      }
      if (s.isDirectory()) {
        a.push("--tmpfs", c.dest);
        readOnly.push("--remount-ro", c.dest);
      }
      // A read-only bind is nodev (opening the node would fail); writes to /dev/null go nowhere.
      else a.push("--dev-bind", "/dev/null", c.dest);
    }
    // The covers and the root (bubblewrap's own tmpfs) read-only last: every mount point above
    // is made in them first.
    a.push("--bind", scratch, SANDBOX_SCRATCH, ...readOnly, "--remount-ro", "/", "--chdir", SANDBOX_SCRATCH);
    if (this.features.disableUserns) a.push("--disable-userns");
    if (seccompFd !== undefined) a.push("--seccomp", String(seccompFd));
    a.push("--");
    const l = spec.limits;
    a.push(this.prlimit as string);
    if (l.processes) a.push(`--nproc=${l.processes}:${l.processes}`);
    if (l.memoryBytes) a.push(`--as=${l.memoryBytes}:${l.memoryBytes}`);
    if (l.cpuSeconds) a.push(`--cpu=${l.cpuSeconds}:${l.cpuSeconds}`);
    if (l.fileBytes) a.push(`--fsize=${l.fileBytes}:${l.fileBytes}`);
    // Open files are counted against the host's one table (fs.file-max): a process that raised its
    // soft limit to the kernel's hard one (524,288 in a systemd unit) could, with a few others, fill
    // it, and then no process on the host, the kernel included, opens a file or accepts a connection.
    const files = l.openFiles && this.filesHard !== undefined ? Math.min(l.openFiles, this.filesHard) : l.openFiles;
    if (files) a.push(`--nofile=${files}:${files}`);
    // No core dump, hard limit included (the kernel's own hard limit is often unlimited, which a
    // process could raise its soft one to): 1, not 0, because a core_pattern that pipes to a
    // program (systemd-coredump, apport) ignores 0 and runs that program as root on the host for
    // each crash, outside every bound here; 1 makes Linux skip the dump whatever the pattern.
    a.push("--core=1:1");
    // No real-time scheduling and no priority above the kernel's own, whatever hard limits the
    // kernel inherited (a user in an audio or realtime group has rtprio 95): a SCHED_FIFO loop
    // would take its CPU from every process on the host, the kernel's included.
    a.push("--rtprio=0:0", "--nice=0:0");
    // Niced last, after the limits that keep it from being lowered again (nice only ever raises it).
    if (this.config.nice) a.push("--", this.nice as string, "-n", String(this.config.nice));
    a.push("--", spec.executable, ...spec.args);
    return { file: this.bwrap as string, args: a, options, scratch, spawned, cleanup, ...(onStdin ? { input: filter } : {}) };
  }

  /**
   * The tighter of the kernel's limits and a grant's (`sandbox.processes`, `sandbox.memory`,
   * `sandbox.cpu`, `sandbox.filesize`): lower-case names, the only ones a token's limits may carry.
   */
  limitsFor(grant: Record<string, number> | undefined): SandboxLimits {
    const c = this.config.limits;
    // A grant's 0 is the tightest bound there is, not "none" (prlimit's 0 would be).
    const min = (k: number, g: number | undefined) =>
      g === undefined ? k : k === 0 ? Math.max(1, g) : Math.min(k, Math.max(1, g));
    return {
      processes: min(c.processes, grant?.["sandbox.processes"]),
      memoryBytes: min(c.memoryBytes, grant?.["sandbox.memory"]),
      cpuSeconds: min(c.cpuSeconds, grant?.["sandbox.cpu"]),
      fileBytes: min(c.fileBytes, grant?.["sandbox.filesize"]),
      ...(c.openFiles ? { openFiles: c.openFiles } : {}),
    };
  }
}
