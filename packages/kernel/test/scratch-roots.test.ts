import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import fs, {
  chmodSync,
  chownSync,
  existsSync,
  lchownSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { KernelClient } from "@kpip/client";
import { ConfigError, Kernel, type KernelOptions } from "../src/index.js";
import { removeStaleRoots } from "../src/sandbox/scratch-roots.js";
import { removeHome, sandboxSkip, spawnReady, startKernel, type TestKernel, until } from "./harness.js";

const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

/** The scratch root a kernel on `home` names (sandbox/setup.ts). */
const rootOf = (home: string) =>
  join(
    tmpdir(),
    `kpip-scratch-${process.getuid?.() ?? 0}-${createHash("sha256").update(resolve(home)).digest("hex").slice(0, 12)}`,
  );
const scratchDirs = (root: string) => (existsSync(root) ? readdirSync(root).filter((n) => /^[0-9a-f]{24}$/.test(n)) : []);
const sleeper = (c: KernelClient, name: string) =>
  c.agents.spawn("sleep", name, { args: ["600"], rights: [], lifetimeMs: 600_000 });

describe("the scratch roots of kernels that ended without stopping", { skip: sandboxSkip }, () => {
  it("a SIGKILLed kernel's root is removed by the next kernel to start, never a live kernel's; the killed kernel restarts", async () => {
    const homeA = mkdtempSync(join(tmpdir(), "kpip-"));
    const kernels: TestKernel[] = [];
    const child = await spawnReady([MAIN, "kernel", "--home", homeA, "--log-level", "silent"], "is running");
    try {
      const a = await KernelClient.connect({
        socket: join(homeA, "kernel.sock"),
        identity: join(homeA, "admin.identity"),
        tokens: [readFileSync(join(homeA, "admin.token"), "utf8")],
        reconnect: false,
      });
      await sleeper(a, "a1");
      assert.equal(scratchDirs(rootOf(homeA)).length, 1, "the running agent's scratch directory");
      // A live kernel with a process of its own: its root must survive every start below.
      const live = await startKernel();
      kernels.push(live);
      await sleeper(await live.admin(), "c1");
      const liveDirs = scratchDirs(rootOf(live.home));
      assert.equal(liveDirs.length, 1);

      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGKILL");
      await exited;
      a.close().catch(() => {});
      assert.equal(scratchDirs(rootOf(homeA)).length, 1, "left behind by the kill");

      // Another home's kernel starts: the dead kernel's root goes, the live one's stays.
      kernels.push(await startKernel());
      assert.equal(existsSync(rootOf(homeA)), false, "the killed kernel's root is removed");
      assert.deepEqual(scratchDirs(rootOf(live.home)), liveDirs, "the live kernel's root and its process's directory stay");

      // The killed kernel's home starts again and runs processes as before.
      const again = await startKernel({}, homeA);
      kernels.push(again);
      await sleeper(await again.admin(), "a2");
      assert.equal(scratchDirs(rootOf(homeA)).length, 1);
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
      for (const k of kernels) await k.stop().catch(() => {});
      for (const k of kernels) removeHome(k.home);
      removeHome(homeA);
    }
    for (const k of kernels) assert.equal(existsSync(rootOf(k.home)), false, "a kernel that stops removes its root");
  });

  it("a home run without the sandbox after a killed bubblewrap run disowns the free lock it left: no other kernel takes its live root for stale", async () => {
    const homeB = mkdtempSync(join(tmpdir(), "kpip-"));
    const root = rootOf(homeB);
    // What a bubblewrap kernel of homeB SIGKILLed leaves: its root and the lock file, now free.
    mkdirSync(root, { recursive: true, mode: 0o711 });
    writeFileSync(join(root, ".lock"), "");
    const kernels: TestKernel[] = [];
    try {
      const b = await startKernel({ sandbox: "none" }, homeB);
      kernels.push(b);
      await sleeper(await b.admin(), "b1");
      const dirs = scratchDirs(root);
      assert.equal(dirs.length, 1, "the unconfined process's scratch directory");
      assert.equal(existsSync(join(root, ".lock")), false, "the free lock is gone");
      // Another kernel starts and sweeps stale roots: homeB's, in use, stays.
      kernels.push(await startKernel());
      assert.deepEqual(scratchDirs(root), dirs, "the live kernel's root and its process's directory stay");
    } finally {
      for (const k of kernels) await k.stop().catch(() => {});
      for (const k of kernels) removeHome(k.home);
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("a kernel without the sandbox holds its root's .live while it runs: killed, its root is removed by the next kernel to start once nothing else is in it, never while a process's directory is", async () => {
    const homeN = mkdtempSync(join(tmpdir(), "kpip-"));
    const root = rootOf(homeN);
    const kernels: TestKernel[] = [];
    const connect = () =>
      KernelClient.connect({
        socket: join(homeN, "kernel.sock"),
        identity: join(homeN, "admin.identity"),
        tokens: [readFileSync(join(homeN, "admin.token"), "utf8")],
        reconnect: false,
      });
    let child = await spawnReady([MAIN, "kernel", "--home", homeN, "--sandbox", "none", "--log-level", "silent"], "is running");
    let orphan: number | undefined;
    const kill = async () => {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGKILL");
      await exited;
    };
    try {
      let n = await connect();
      // Its host pid (no agent.* answer names one): it says it itself, unconfined.
      await n.agents.spawn("sh", "n1", { args: ["-c", "echo $$; exec sleep 600"], rights: [], lifetimeMs: 600_000 });
      orphan = await until(
        async () => Number(Buffer.from((await n.agents.logs("agent://sh/n1")).stdout).toString()) || undefined,
      );
      assert.ok(existsSync(join(root, ".live")), "the live kernel's lock file");
      assert.equal(existsSync(join(root, ".lock")), false);
      const dirs = scratchDirs(root);
      assert.equal(dirs.length, 1);
      // Alive: another kernel starting leaves its root.
      kernels.push(await startKernel());
      assert.deepEqual(scratchDirs(root), dirs, "a live kernel's root stays");
      // Killed: its unconfined agent lives on in its directory, which stays.
      await kill();
      n.close().catch(() => {});
      kernels.push(await startKernel());
      assert.deepEqual(scratchDirs(root), dirs, "a directory a process may still use is never removed");
      assert.ok(existsSync(join(root, ".live")));
      process.kill(orphan as number, "SIGKILL");
      orphan = undefined;

      // The same home again (its start sweeps what the killed run left), a command run and ended, then killed.
      child = await spawnReady([MAIN, "kernel", "--home", homeN, "--sandbox", "none", "--log-level", "silent"], "is running");
      n = await connect();
      await n.ops.wait(await n.compute.command("true"));
      assert.deepEqual(
        readdirSync(root).filter((f) => !f.startsWith(".live")),
        [],
        "only the lock file (and perhaps its journal) is left in the root",
      );
      await kill();
      n.close().catch(() => {});
      kernels.push(await startKernel());
      assert.equal(existsSync(root), false, "the killed kernel's root, with nothing in it, is removed");
    } finally {
      if (orphan) process.kill(orphan, "SIGKILL");
      if (child.exitCode === null) child.kill("SIGKILL");
      for (const k of kernels) await k.stop().catch(() => {});
      for (const k of kernels) removeHome(k.home);
      removeHome(homeN);
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("a scratch root name another local user took first (a link to a live kernel's root, a directory of theirs) is never listed, written or removed: the live kernel keeps its process's directory and its lock; the kernel falls back to a name no one can take first, its sandbox usable", async () => {
    // Kernel B, in a process of its own, runs an agent: its root holds the agent's directory and B's lock.
    const homeB = mkdtempSync(join(tmpdir(), "kpip-"));
    const homeA = mkdtempSync(join(tmpdir(), "kpip-"));
    const rootA = rootOf(homeA);
    const rootB = rootOf(homeB);
    const child = await spawnReady([MAIN, "kernel", "--home", homeB, "--log-level", "silent"], "is running");
    const kernels: TestKernel[] = [];
    try {
      const b = await KernelClient.connect({
        socket: join(homeB, "kernel.sock"),
        identity: join(homeB, "admin.identity"),
        tokens: [readFileSync(join(homeB, "admin.token"), "utf8")],
        reconnect: false,
      });
      await sleeper(b, "b1");
      const liveB = readdirSync(rootB).sort();
      assert.ok(liveB.includes(".lock") && scratchDirs(rootB).length === 1, "B's lock and its agent's directory");
      // Another local user computes home A's root name (uid, hash of the path) and puts a link there to B's.
      symlinkSync(rootB, rootA);
      if (process.getuid?.() === 0) lchownSync(rootA, 65534, 65534);
      // The name A falls back to: the usual one and 16 random hex digits, never the same twice.
      const fallbacks = () => readdirSync(tmpdir()).filter((n) => n.startsWith(`${basename(rootA)}-`));
      const used = new Set<string>();
      const runsAside = async (a: TestKernel, what: string) => {
        const c = await a.admin();
        const info = (await c.system.info()).sandbox as { usable: boolean; reason?: string };
        assert.equal(info.usable, true, `${what}: ${info.reason}`);
        // Its process runs in a root of its own, not in what the other user made.
        await c.ops.wait(await c.compute.command("true"));
        const [aside, ...more] = fallbacks();
        assert.deepEqual(more, [], what);
        assert.match(aside ?? "", /-[0-9a-f]{12}-[0-9a-f]{16}$/, what);
        assert.ok(!used.has(aside as string), `${what}: a name not used before`);
        used.add(aside as string);
        const st = lstatSync(join(tmpdir(), aside as string));
        assert.ok(st.isDirectory() && st.uid === process.getuid?.(), what);
        await a.stop();
        assert.deepEqual(fallbacks(), [], `${what}: the root it fell back to is removed at its stop`);
      };
      for (const sandbox of ["bwrap", "none"] as const) {
        const a = await startKernel({ sandbox }, homeA);
        kernels.push(a);
        await runsAside(a, `a link there, sandbox ${sandbox}`);
        assert.deepEqual(
          readdirSync(rootB).sort(),
          liveB,
          `B's root is as it was after A (sandbox ${sandbox}) started and stopped`,
        );
        assert.equal(lstatSync(rootA).isSymbolicLink(), true, "the link is left to its maker");
      }
      // A directory of theirs (only root can give one away): nothing is made in it, nothing of it removed.
      if (process.getuid?.() === 0) {
        rmSync(rootA);
        mkdirSync(join(rootA, "0123456789abcdef01234567"), { recursive: true, mode: 0o777 });
        chownSync(rootA, 65534, 65534);
        const a = await startKernel({}, homeA);
        kernels.push(a);
        await runsAside(a, "a directory of another user's there");
        assert.deepEqual(readdirSync(rootA), ["0123456789abcdef01234567"], "their directory as they left it");
      }
      b.close().catch(() => {});
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
      for (const k of kernels) await k.stop().catch(() => {});
      removeHome(homeA);
      removeHome(homeB);
      rmSync(rootA, { recursive: true, force: true });
      rmSync(rootB, { recursive: true, force: true });
    }
  });

  it("another local user takes the usual root name after the start looked and before the kernel held it: the kernel falls back to a name no one can take first, its sandbox usable (bubblewrap and none)", async () => {
    for (const sandbox of ["bwrap", "none"] as const) {
      const home = mkdtempSync(join(tmpdir(), "kpip-"));
      const usual = rootOf(home);
      const theirs = mkdtempSync(join(tmpdir(), "kpip-theirs-"));
      // The race, made certain: the name is taken just after the start's first look found it free.
      const lstat = fs.lstatSync;
      const patched = fs as { lstatSync: typeof lstat };
      let taken = false;
      patched.lstatSync = ((p: string, o?: Parameters<typeof lstat>[1]) => {
        const r = lstat(p, o);
        if (!taken && p === usual) {
          taken = true;
          symlinkSync(theirs, usual);
        }
        return r;
      }) as typeof lstat;
      syncBuiltinESMExports();
      let t: TestKernel | undefined;
      try {
        t = await startKernel({ sandbox }, home);
      } finally {
        patched.lstatSync = lstat;
        syncBuiltinESMExports();
      }
      try {
        assert.ok(taken, `sandbox ${sandbox}: the name was taken during the start`);
        const c = await t.admin();
        const info = (await c.system.info()).sandbox as { usable: boolean; reason?: string };
        assert.equal(info.usable, true, `sandbox ${sandbox}: ${info.reason}`);
        await c.ops.wait(await c.compute.command("true"));
        const aside = readdirSync(tmpdir()).filter((n) => n.startsWith(`${basename(usual)}-`));
        assert.equal(aside.length, 1, `sandbox ${sandbox}: one fallback root`);
        assert.match(aside[0] as string, /-[0-9a-f]{12}-[0-9a-f]{16}$/);
        assert.deepEqual(readdirSync(theirs), [], `sandbox ${sandbox}: nothing made in what the other user put there`);
        assert.equal(lstatSync(usual).isSymbolicLink(), true, "the link is left to its maker");
      } finally {
        await t.stop();
        removeHome(home);
        rmSync(usual, { force: true });
        rmSync(theirs, { recursive: true, force: true });
      }
    }
  });

  it("a kernel holds the root it named from its start to its stop, before any process runs: its name is never free for another user to take", async () => {
    for (const [sandbox, file] of [
      ["bwrap", ".lock"],
      ["none", ".live"],
    ] as const) {
      const t = await startKernel({ sandbox });
      const root = rootOf(t.home);
      try {
        // No process started: the root is there, the kernel's, with its lock file.
        const st = lstatSync(root);
        assert.ok(st.isDirectory() && st.uid === process.getuid?.(), `sandbox ${sandbox}`);
        assert.ok(readdirSync(root).includes(file), `sandbox ${sandbox}: ${readdirSync(root)}`);
        const c = await t.admin();
        await c.ops.wait(await c.compute.command("true"));
        assert.ok(readdirSync(root).includes(file), `sandbox ${sandbox}: held after a process ran`);
      } finally {
        await t.stop();
        removeHome(t.home);
      }
      assert.equal(existsSync(root), false, `sandbox ${sandbox}: removed at the stop`);
    }
  });

  it("a root without any lock file (an older kpip's) is removed only when empty and untouched for a day", () => {
    const parent = mkdtempSync(join(tmpdir(), "kpip-roots-"));
    const uid = process.getuid?.() ?? 0;
    const name = (i: number) => join(parent, `kpip-scratch-${uid}-${String(i).padStart(12, "0")}`);
    try {
      const old = Date.now() / 1000 - 2 * 86_400;
      mkdirSync(name(1));
      utimesSync(name(1), old, old);
      mkdirSync(name(2));
      mkdirSync(join(name(3), "0123456789abcdef01234567"), { recursive: true });
      utimesSync(name(3), old, old);
      // A name a kernel fell back to (the usual one taken by another user) is swept as well.
      const aside = `${name(4)}-${"ab".repeat(8)}`;
      mkdirSync(aside);
      utimesSync(aside, old, old);
      const other = `${name(5)}-${"ab".repeat(7)}`;
      mkdirSync(other);
      utimesSync(other, old, old);
      assert.equal(removeStaleRoots(parent, uid, join(parent, "own")), 2);
      assert.equal(existsSync(name(1)), false, "empty and a day old: removed");
      assert.equal(existsSync(aside), false, "a fallback root, empty and a day old: removed");
      assert.ok(existsSync(other), "a name of no kernel's: stays");
      assert.ok(existsSync(name(2)), "empty but just made (a kernel may be about to lock it): stays");
      assert.ok(existsSync(join(name(3), "0123456789abcdef01234567")), "not empty: stays, with what is in it");
    } finally {
      rmSync(parent, { recursive: true, force: true });
    }
  });
});

describe("the place of an operator's scratch root", () => {
  it("a shared directory given as sandboxScratch (sticky or writable by others, as /tmp) is refused at start and left as it was; so is a root below a directory others may change", async () => {
    const shared = mkdtempSync(join(tmpdir(), "kpip-shared-"));
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    // Refused at start with a ConfigError matching `re`; a kernel that starts is stopped, then the test fails.
    const refused = async (opts: KernelOptions, re: RegExp) => {
      const k = new Kernel({ home, logLevel: "silent", ...opts });
      let started = false;
      try {
        await k.start();
        started = true;
      } catch (e) {
        assert.ok(e instanceof ConfigError && re.test(e.message), String(e));
      }
      if (started) {
        await k.stop();
        assert.fail(`the kernel started with sandboxScratch ${String(opts.sandboxScratch)}`);
      }
    };
    try {
      // As /tmp: everyone's, sticky, with someone's file in it.
      chmodSync(shared, 0o1777);
      writeFileSync(join(shared, "someones-file"), "");
      for (const sandbox of ["bwrap", "none"] as const)
        await refused({ sandbox, sandboxScratch: shared }, /is a shared directory \(mode 1777\)/);
      assert.equal(statSync(shared).mode & 0o7777, 0o1777, "the shared directory keeps its mode");
      assert.equal(statSync(shared).uid, process.getuid?.() ?? statSync(shared).uid);
      assert.deepEqual(readdirSync(shared), ["someones-file"]);
      // Below a directory others may write without the sticky bit: they could move the root and put theirs there.
      chmodSync(shared, 0o777);
      await refused(
        { sandboxScratch: join(shared, "mine", "scratch") },
        /writable by group or others \(mode 777\) without the sticky bit/,
      );
      assert.deepEqual(readdirSync(shared), ["someones-file"], "nothing made there");
      // A directory of its own in the sticky one: the kernel starts and runs processes there.
      chmodSync(shared, 0o1777);
      const t = await startKernel({ sandbox: "none", sandboxScratch: join(shared, "kpip-scratch") }, home);
      const c = await t.admin();
      await c.ops.wait(await c.compute.command("true"));
      await t.stop();
    } finally {
      removeHome(home);
      rmSync(shared, { recursive: true, force: true });
    }
  });
});
