import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before } from "node:test";
import { fileURLToPath } from "node:url";
import { type ConnectOptions, KernelClient, loadIdentity } from "@kpip/client";
import { generateIdentity, type Identity, type Right } from "@kpip/protocol";
import { HOME_FILES, Kernel, type KernelOptions } from "../src/index.js";
import { Sandbox } from "../src/sandbox/sandbox.js";
import { SqliteStore } from "../src/store/sqlite.js";

/** The repository: test kernels let their sandboxes read it (fixtures, node_modules). */
export const REPO_ROOT = fileURLToPath(new URL("../../../../", import.meta.url));

/** What test kernels' sandboxes may read: the repository and node's own installation. */
export const SANDBOX_READ_PATHS = [REPO_ROOT, dirname(dirname(process.execPath))].join(":");

/**
 * Why tests that start processes in the sandbox cannot run here (no usable bubblewrap), or
 * false. With KPIP_REQUIRE_SANDBOX=1 (CI) it is always false: those tests run, and fail.
 */
export const sandboxSkip: string | false = (() => {
  if (process.env.KPIP_REQUIRE_SANDBOX === "1") return false;
  const why = new Sandbox({
    mode: "bwrap",
    readPaths: [],
    scratchRoot: join(tmpdir(), `kpip-probe-${process.pid}`),
    uid: 65534,
    hidden: [],
    limits: { processes: 64, memoryBytes: 0, cpuSeconds: 0, fileBytes: 0 },
  }).unavailable;
  rmSync(join(tmpdir(), `kpip-probe-${process.pid}`), { recursive: true, force: true });
  if (!why) return false;
  return `NOT RUN: needs the process sandbox (${why}); install bubblewrap, or set KPIP_REQUIRE_SANDBOX=1 to make this a failure`;
})();

/**
 * The peer key a test kernel counts this process's loopback gRPC connections under: its local
 * user's (the addon's sock_diag look-up, Linux), else the one key every loopback peer shares.
 */
export const OWN_LOOPBACK_KEY = process.platform === "linux" ? `loopback uid ${process.getuid?.()}` : "loopback";

export interface TestKernel {
  k: Kernel;
  home: string;
  adminToken: string;
  /** A client for the admin persona with its root token bound. */
  admin(opts?: Partial<ConnectOptions>): Promise<KernelClient>;
  /** Registers a persona and mints it a token. */
  persona(
    id: string,
    rights: Right[],
    extra?: { limits?: Record<string, number>; ttlMs?: number; workspaces?: string[] },
  ): Promise<{ identity: Identity; token: Uint8Array; id: string }>;
  connect(identity: Identity, tokens: (Uint8Array | string)[], opts?: Partial<ConnectOptions>): Promise<KernelClient>;
  stop(): Promise<void>;
}

/**
 * Kernels a test started and has not stopped. A test that fails before its own `stop()` would
 * leave its kernel serving, and the file's process would never exit (a hang the runner can
 * only end by timing the whole file out): every test file that imports the harness stops
 * them, and removes their homes, when it ends.
 */
const live = new Set<TestKernel>();
after(async () => {
  for (const t of [...live]) {
    await t.stop().catch(() => {});
    removeHome(t.home);
  }
});

/** Starts a real kernel on a Unix socket in a fresh temp home; `setup` runs before start (e.g. register). */
export async function startKernel(
  opts: KernelOptions = {},
  home = mkdtempSync(join(tmpdir(), "kpip-")),
  setup: (k: Kernel) => void = () => {},
): Promise<TestKernel> {
  const k = new Kernel({
    home,
    logLevel: "silent",
    sandboxReadPaths: SANDBOX_READ_PATHS,
    // An agent (a niced process) on a machine loaded many deep can take seconds from connect to
    // WELCOME: past the default 5 s it was cut, failing the test. Tests of the timeout set their own.
    handshakeTimeoutMs: 60_000,
    ...opts,
  });
  setup(k);
  await k.start();
  const adminToken = readFileSync(k.adminToken, "utf8").trim();
  const clients: KernelClient[] = [];
  const connect = async (identity: Identity, tokens: (Uint8Array | string)[], o: Partial<ConnectOptions> = {}) => {
    const c = await KernelClient.connect({ socket: k.socketPath, identity, tokens, reconnect: false, ...o });
    clients.push(c);
    return c;
  };
  let adminClient: KernelClient | undefined;
  const t: TestKernel = {
    k,
    home,
    adminToken,
    admin: async (o = {}) => {
      const c = await KernelClient.connect({
        socket: k.socketPath,
        identity: k.adminIdentity,
        tokens: [adminToken],
        reconnect: false,
        ...o,
      });
      clients.push(c);
      return c;
    },
    persona: async (id, rights, extra = {}) => {
      adminClient ??= await t.admin();
      const identity = generateIdentity(id);
      addPersonaKey(t, id, identity.publicKey);
      const m = await adminClient.tokens.mint(id, { rights, ttlMs: extra.ttlMs ?? 3_600_000, ...extra });
      return { identity, token: m.token, id: m.id };
    },
    connect,
    stop: async () => {
      live.delete(t);
      for (const c of clients) await c.close().catch(() => {});
      await k.stop();
    },
  };
  live.add(t);
  return t;
}

/** Runs `f` on a kernel started with `opts` (on `home`, else a fresh one); stops it and removes its home afterwards, pass or fail. */
export async function withKernel<T>(opts: KernelOptions, f: (t: TestKernel) => Promise<T>, home?: string): Promise<T> {
  const t = await startKernel(opts, home);
  try {
    return await f(t);
  } finally {
    await t.stop();
    removeHome(t.home);
  }
}

/**
 * A kernel for one describe block: started before its tests, stopped and its home removed
 * after. Read `k.t` inside the tests.
 */
export function suiteKernel(opts: KernelOptions = {}): { t: TestKernel } {
  const s = {} as { t: TestKernel };
  before(async () => {
    s.t = await startKernel(opts);
  });
  after(async () => {
    await s.t.stop();
    removeHome(s.t.home);
  });
  return s;
}

/** {@link suiteKernel} with an admin client (closed as the kernel stops). Read `k.t` and `k.admin` inside the tests. */
export function kernelForSuite(opts: KernelOptions = {}): { t: TestKernel; admin: KernelClient } {
  const s = suiteKernel(opts) as { t: TestKernel; admin: KernelClient };
  // Registered after suiteKernel's: runs once the kernel has started.
  before(async () => {
    s.admin = await s.t.admin();
  });
  return s;
}

/**
 * Registers `id` with `publicKey` in a kernel's home (replacing its key if it has one), as a
 * tool beside the running kernel would: through a connection of its own on the home database,
 * not through the kernel (which tests only read, via `k.inspect`). Not journalled: no audit record.
 */
export function addPersonaKey(t: { home: string }, id: string, publicKey: Uint8Array): void {
  const store = new SqliteStore(join(t.home, HOME_FILES.database));
  try {
    store.transaction(() => {
      store.removePersona(id);
      store.addPersona(id, publicKey);
    });
  } finally {
    store.close();
  }
}

/** The kernel package's process entry (src/serve.ts): a kernel in a child process. */
export const KERNEL_ENTRY = fileURLToPath(new URL("../src/serve.js", import.meta.url));

/**
 * Runs `node …args` and resolves once its stdout has shown `ready`; rejects if it exits first or
 * stays silent for `ms` (then it is killed). The caller ends the child.
 */
export async function spawnReady(args: string[], ready: string, ms = 30_000): Promise<ChildProcess> {
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"] });
  let timer: NodeJS.Timeout | undefined;
  const silent = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`child not ready after ${ms} ms`));
    }, ms);
  });
  try {
    await Promise.race([outputIncludes(child, ready), silent]);
  } finally {
    clearTimeout(timer);
  }
  return child;
}

/** Runs examples/<name>.ts (built) to its end, without blocking the event loop. */
export function runExample(name: string, killAfterMs = 60_000): Promise<ProcessRun> {
  return runProcess(process.execPath, [join(REPO_ROOT, "examples", "dist", `${name}.js`)], { killAfterMs });
}

/** The admin's client of a kernel another process runs on `home` (no reconnect). */
export function connectAdminOf(home: string): Promise<KernelClient> {
  return KernelClient.connect({
    socket: new Kernel({ home, logLevel: "silent" }).socketPath,
    identity: loadIdentity(join(home, "admin.identity")),
    tokens: [readFileSync(join(home, "admin.token"), "utf8").trim()],
    reconnect: false,
  });
}

export function removeHome(home: string): void {
  rmSync(home, { recursive: true, force: true });
}

export { klass, until } from "@kpip/protocol/testing";

/** The fixture task functions (test/fixtures/tasks.mjs), for `registerTask`. */
export const TASKS = fileURLToPath(new URL("../../test/fixtures/tasks.mjs", import.meta.url));

/**
 * `fn` on a kernel started with `opts` and the fixture tasks `tasks` (name: the export) registered;
 * it stops and its home goes after, pass or fail.
 */
export async function withTasks(
  opts: KernelOptions,
  tasks: Record<string, string>,
  fn: (t: TestKernel) => Promise<void>,
): Promise<void> {
  const t = await startKernel(opts, undefined, (k) => {
    for (const [name, exported] of Object.entries(tasks)) k.registerTask(name, { module: TASKS, export: exported });
  });
  try {
    await fn(t);
  } finally {
    await t.stop();
    removeHome(t.home);
  }
}

/** Whether a process with this pid exists (signal 0). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

import { outputIncludes, type ProcessRun, runProcess } from "@kpip/protocol/testing";

export function adminIdentity(k: Kernel): Identity {
  return loadIdentity(k.adminIdentity);
}
