/**
 * `@kpip/protocol/testing`: the waits, predicates and child-process runs every package's tests
 * share (one definition, re-exported by each test harness). Not used by any runtime code.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { Worker } from "node:worker_threads";
import { KpipError } from "./errors.js";

/** Polls until `f` returns a truthy value (or throws after `ms`: generous, since it ends as soon as `f` holds and machines get busy). */
export async function until<T>(f: () => T | Promise<T>, ms = 30_000, what = "condition"): Promise<NonNullable<T>> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v as NonNullable<T>;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** An `assert.rejects` predicate: a {@link KpipError} of class `cls` (whose message contains `text`, or matches it). */
export const klass =
  (cls: string, text?: string | RegExp) =>
  (e: unknown): boolean =>
    e instanceof KpipError &&
    e.errorClass === cls &&
    (text === undefined || (typeof text === "string" ? e.message.includes(text) : text.test(e.message)));

/** Resolves once `child`'s stdout has carried `text`; rejects if the child exits first. */
export function outputIncludes(child: ChildProcess, text: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let out = "";
    const onData = (d: Buffer | string) => {
      out += d;
      if (!out.includes(text)) return;
      child.stdout?.off("data", onData);
      resolve();
    };
    child.stdout?.on("data", onData);
    child.once("exit", (code, signal) => reject(new Error(`exited before it said "${text}" (${signal ?? code}): ${out}`)));
  });
}

export interface ProcessRun {
  /** The exit code; -1 when it was killed. */
  code: number | null;
  out: string;
  err: string;
}

/**
 * Runs a command to its end without blocking the event loop, collecting its output; `onLine`
 * sees stdout's lines as they come. A hung child is SIGKILLed after `killAfterMs` (and says so
 * in `err`), so it fails its test instead of hanging the run, and is never left behind.
 */
export function runProcess(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; killAfterMs?: number; onLine?: (line: string) => void } = {},
): Promise<ProcessRun> {
  const killAfterMs = opts.killAfterMs ?? 300_000;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    let partial = "";
    child.stdout.on("data", (d) => {
      out += d;
      if (!opts.onLine) return;
      const lines = (partial + d).split("\n");
      partial = lines.pop() ?? "";
      lines.forEach(opts.onLine);
    });
    child.stderr.on("data", (d) => {
      err += d;
    });
    let hung = false;
    const timer = setTimeout(() => {
      hung = true;
      child.kill("SIGKILL");
    }, killAfterMs);
    child.once("error", reject);
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      const why = hung ? `killed after ${killAfterMs / 1000} s` : "ended by signal";
      resolve({ code: signal ? -1 : code, out, err: signal ? `${err}\n[${why}: ${signal}]` : err });
    });
  });
}

/**
 * Command lines run in a worker thread of this process, by the `dispatch(argv)` (resolving to the
 * exit code) of the module at `moduleUrl`: its modules load once, where a process per command line
 * loads them every time (~0.4 s of CPU for the kpip CLI). For tests of many short command lines
 * (usage errors, refusals); what needs a process of its own (signals, exit, a hang guard, the
 * installed entry) is still spawned. The worker's stdout and stderr are collected, never this
 * process's (the test runner reports on this one's stdout); `env` is the worker's process.env.
 * Runs queue in order; the worker keeps this process alive only while one is pending.
 */
export class CommandWorker {
  private readonly worker: Worker;
  private readonly pending = new Map<number, { resolve: (r: ProcessRun) => void; reject: (e: Error) => void }>();
  private next = 1;
  private failed: Error | undefined;

  constructor(moduleUrl: string, env: NodeJS.ProcessEnv = process.env) {
    this.worker = new Worker(new URL("./testing-worker.js", import.meta.url), { workerData: { module: moduleUrl }, env });
    this.worker.unref();
    this.worker.on("message", (m: { id: number } & ProcessRun) => {
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (this.pending.size === 0) this.worker.unref();
      p?.resolve({ code: m.code, out: m.out, err: m.err });
    });
    const fail = (e: Error) => {
      this.failed = e;
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    };
    this.worker.on("error", fail);
    this.worker.on("exit", (code) => fail(new Error(`the command worker exited (${code})`)));
  }

  /** Runs `argv` to its end: its exit code and what it wrote. */
  run(argv: string[]): Promise<ProcessRun> {
    if (this.failed) return Promise.reject(this.failed);
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.ref();
      this.worker.postMessage({ id, argv });
    });
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}

/**
 * The Python the Python client's tests run: ≥ 3.11 with `cryptography`, $KPIP_PYTHON, else the
 * first of python3 and /usr/bin/python3 that imports it. Without one those tests say `why`;
 * `required` (CI=true or KPIP_REQUIRE_PYTHON=1) makes that a failure.
 */
export function findPython(): { path?: string; why: string; required: boolean } {
  const required = process.env.CI === "true" || process.env.KPIP_REQUIRE_PYTHON === "1";
  const candidates = process.env.KPIP_PYTHON ? [process.env.KPIP_PYTHON] : ["python3", "/usr/bin/python3"];
  const tried: string[] = [];
  for (const py of candidates) {
    const r = spawnSync(py, ["-c", "import sys, cryptography; assert sys.version_info >= (3, 11), sys.version"], {
      encoding: "utf8",
    });
    if (r.status === 0) return { path: py, why: "", required };
    tried.push(`${py}: ${r.error ? r.error.message : (r.stderr.trim().split("\n").pop() ?? `exit ${r.status}`)}`);
  }
  return {
    why: `no Python >= 3.11 with cryptography (tried ${tried.join("; ")}); install python3 python3-cryptography`,
    required,
  };
}

/** Structural form for comparisons: prototypes and stray buffer properties do not matter, contents and key sets do. */
export function structural(v: unknown): unknown {
  if (v instanceof Uint8Array) return `bytes:${Buffer.from(v).toString("hex")}`;
  if (typeof v === "bigint") return `bigint:${v}`;
  if (Array.isArray(v)) return v.map(structural);
  if (v !== null && typeof v === "object") {
    return Object.fromEntries(
      Object.keys(v)
        .sort()
        .map((k) => [k, structural((v as Record<string, unknown>)[k])]),
    );
  }
  return v;
}

/**
 * Runs `fn` while the file system refuses (EIO) to move or remove the file at `path`: node:fs's
 * `renameSync` from it and `unlinkSync` of it throw, in this process (named imports of node:fs
 * included, kept in step by syncBuiltinESMExports). Restored after, however `fn` ends.
 */
export async function whileStuck<T>(path: string, fn: () => Promise<T>): Promise<T> {
  const real = { rename: fs.renameSync, unlink: fs.unlinkSync };
  const eio = (op: string) => Object.assign(new Error(`EIO: i/o error, ${op}`), { code: "EIO" });
  fs.renameSync = (from, to) => {
    if (String(from) === path) throw eio("rename");
    real.rename(from, to);
  };
  fs.unlinkSync = (p) => {
    if (String(p) === path) throw eio("unlink");
    real.unlink(p);
  };
  syncBuiltinESMExports();
  try {
    return await fn();
  } finally {
    fs.renameSync = real.rename;
    fs.unlinkSync = real.unlink;
    syncBuiltinESMExports();
  }
}

/**
 * Runs `fn` while the file system refuses (`code`: ENOSPC, EIO, …) to create files in the
 * directory `dir`: node:fs's `openSync` of a path in it throws, in this process (named imports of
 * node:fs included, kept in step by syncBuiltinESMExports). Restored after, however `fn` ends.
 */
export async function whileRefused<T>(dir: string, code: string, fn: () => Promise<T>): Promise<T> {
  const real = fs.openSync;
  const prefix = dir.endsWith("/") ? dir : `${dir}/`;
  fs.openSync = ((p: fs.PathLike, ...rest: unknown[]) => {
    if (String(p).startsWith(prefix)) throw Object.assign(new Error(`${code}: refused, open '${String(p)}'`), { code });
    return (real as (...a: unknown[]) => number)(p, ...rest);
  }) as typeof fs.openSync;
  syncBuiltinESMExports();
  try {
    return await fn();
  } finally {
    fs.openSync = real;
    syncBuiltinESMExports();
  }
}
