// What a sandboxed process leaves behind and what it can fill: its scratch directory, however
// deep or large, goes without stopping the kernel (nor its next start); its memory file systems
// (/tmp, /dev/shm) are bounded, the rest of its tmpfs is read-only, no nested user namespace.
import assert from "node:assert/strict";
import childProcess, { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { getPriority, tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { pino } from "pino";
import { removeTrees } from "../src/sandbox/remove.js";
import { Sandbox } from "../src/sandbox/sandbox.js";
import { kernelForSuite, klass, removeHome, sandboxSkip, startKernel, until, withKernel } from "./harness.js";

/** A directory chain longer than PATH_MAX (4096): 2,100 levels of `d/`, as `mkdir -p` builds it. */
const DEEP = "d/".repeat(2100);

/** Makes `DEEP` under `dir` as a process would (node's own mkdir cannot: ENAMETOOLONG). */
function makeDeep(dir: string): void {
  const r = spawnSync("mkdir", ["-p", DEEP], { cwd: dir });
  assert.equal(r.status, 0, String(r.stderr));
}

/** Removes a tree this test made, deep or not (rm -rf, not node's recursive rm). */
function removeTree(dir: string): void {
  spawnSync("rm", ["-rf", "--", dir]);
}

async function sh(c: KernelClient, script: string): Promise<string> {
  const d = await c.call("compute.submit", "op://command/sh", { args: ["-c", `${script}; exit 0`] });
  const r = (await c.ops.wait((d.payload as { op: string }).op)) as { stdout: Uint8Array; stderr: Uint8Array };
  return `${Buffer.from(r.stdout).toString()}${Buffer.from(r.stderr).toString()}`;
}

describe("scratch directories, whatever their process left", () => {
  it("are removed by rm in a child process, off the kernel's event loop: gone when cleanup settles; a chain deeper than PATH_MAX too", async () => {
    const root = mkdtempSync(join(tmpdir(), "kpip-scratch-test-"));
    const failed: string[] = [];
    try {
      const box = new Sandbox({
        mode: "none",
        readPaths: [],
        scratchRoot: join(root, "r"),
        uid: 65534,
        hidden: [],
        limits: { processes: 0, memoryBytes: 0, cpuSeconds: 0, fileBytes: 0 },
        removalFailed: (_, why) => failed.push(why),
      });
      const launch = box.launch({ executable: "true", args: [], env: {}, network: false, limits: box.config.limits, extra: [] });
      makeDeep(launch.scratch);
      for (let i = 0; i < 2000; i++) writeFileSync(join(launch.scratch, `f${i}`), "");
      // Which programs the removal starts (remove.ts imports spawn: its live binding follows the module's).
      const started: string[] = [];
      const spawn = childProcess.spawn;
      childProcess.spawn = ((...a: Parameters<typeof spawn>) => {
        started.push(String(a[0]));
        return spawn(...a);
      }) as typeof spawn;
      syncBuiltinESMExports();
      try {
        await launch.cleanup();
      } finally {
        childProcess.spawn = spawn;
        syncBuiltinESMExports();
      }
      // Not "the tree is still there when cleanup returns": rm runs beside this process from its spawn on.
      assert.ok(
        started.some((f) => /\/rm$/.test(f)),
        `the removal runs as rm in a child process, off the event loop (started: ${started.join(", ")})`,
      );
      assert.equal(existsSync(launch.scratch), false, "the whole tree is gone");
      assert.deepEqual(failed, []);
      await box.close(false);
    } finally {
      removeTree(root);
    }
  });

  it("a crashed run left a chain deeper than PATH_MAX in the scratch root: the next kernel starts, serves, and removes it", async () => {
    const scratch = mkdtempSync(join(tmpdir(), "kpip-scratch-test-"));
    const left = join(scratch, "0123456789abcdef01234567");
    try {
      mkdirSync(left);
      makeDeep(left);
      await withKernel({ sandbox: "none", sandboxScratch: scratch }, async (t) => {
        const c = await t.admin();
        assert.equal(((await c.call("system.health", "kernel://")).payload as { status: string }).status, "ok");
        await until(() => !existsSync(left), 30_000, "the crashed run's scratch directory is removed");
      });
    } finally {
      removeTree(scratch);
    }
  });

  it("one owner's removals take one remover at a time: another owner's, and the kernel's, start at once instead of waiting behind them", async () => {
    const { box, started, end } = heldRemovals();
    const all = [
      box.remove(["a1"], "alice"),
      box.remove(["a2"], "alice"),
      box.remove(["a3"], "alice"),
      box.remove(["b1"], "bob"),
      box.remove(["k1"]),
    ];
    await until(() => started.length === 2, 30_000, "two removals to start");
    assert.deepEqual(started, ["a1", "b1"], "bob's removal does not wait behind alice's second");
    end("b1");
    await until(() => started.length === 3, 30_000, "the freed remover to be taken");
    assert.deepEqual(started, ["a1", "b1", "k1"], "alice's next waits for her first, the kernel's goes first");
    end("a1");
    await until(() => started.length === 4, 30_000, "alice's second");
    end("k1");
    end("a2");
    await until(() => started.length === 5, 30_000, "alice's third");
    assert.deepEqual(started, ["a1", "b1", "k1", "a2", "a3"]);
    end("a3");
    await Promise.all(all);
    await box.close(false);
  });
  it("a freed remover goes to the owner served least recently: an owner with many removals queued takes turns, never goes again while another waits", async () => {
    const { box, started, end } = heldRemovals();
    // Carol's removal holds one remover throughout; alice queues five, bob one after them.
    const all = [box.remove(["c1"], "carol"), ...[1, 2, 3, 4, 5].map((n) => box.remove([`a${n}`], "alice"))];
    await until(() => started.length === 2, 30_000, "two removals to start");
    all.push(box.remove(["b1"], "bob"));
    end("a1");
    await until(() => started.length === 3, 30_000, "the freed remover to be taken");
    assert.deepEqual(started, ["c1", "a1", "b1"], "bob's goes before alice's second");
    end("b1");
    await until(() => started.length === 4, 30_000, "alice's second");
    for (const n of [2, 3, 4]) {
      end(`a${n}`);
      await until(() => started.length === 3 + n, 30_000, `alice's removal ${n + 1}`);
    }
    assert.deepEqual(started, ["c1", "a1", "b1", "a2", "a3", "a4", "a5"]);
    end("a5");
    end("c1");
    await Promise.all(all);
    await box.close(false);
  });
});

/**
 * A sandbox without bubblewrap whose removals remove nothing: each runs until the test ends it
 * (`end(path)`); `started` lists them in the order they got a remover.
 */
function heldRemovals() {
  const started: string[] = [];
  const finish = new Map<string, () => void>();
  const box = new Sandbox({
    mode: "none",
    readPaths: [],
    scratchRoot: join(tmpdir(), `kpip-no-root-${process.pid}`),
    uid: 65534,
    hidden: [],
    limits: { processes: 0, memoryBytes: 0, cpuSeconds: 0, fileBytes: 0 },
    remover: (paths) =>
      new Promise((r) => {
        started.push(paths[0] as string);
        finish.set(paths[0] as string, () => r(undefined));
      }),
  });
  return { box, started, end: (p: string) => (finish.get(p) as () => void)() };
}

/** The file a test's process leaves in its scratch directory to have that directory's removal held. */
const MARK = "held-removal";
/** A command line leaving a large tree (and {@link MARK}) in /scratch. */
const LARGE = `touch ${MARK} && mkdir many && cd many && seq -f f%g 20000 | xargs touch && echo made`;

/**
 * A scratch remover (KernelOptions.scratchRemover) that holds the first removal of each tree
 * holding {@link MARK} until the test releases it, then removes it as the kernel does, or
 * fails (`outcome`); everything else it removes at once. `withHeld` releases what is still
 * held when its test ends, pass or fail: the kernel's stop waits for every removal.
 */
function heldRemover(outcome: "remove" | "fail" = "remove") {
  const held: { paths: string[]; release: () => void }[] = [];
  const seen = new Set<string>();
  // Once the test is over nothing more is held: a removal that begins after a failed assertion
  // would otherwise wait for ever, and the kernel's stop (which waits for removals) with it.
  let holding = true;
  const remover = async (paths: string[]): Promise<string | undefined> => {
    const marked = paths.filter((p) => existsSync(join(p, MARK)) && !seen.has(p));
    if (marked.length === 0 || !holding) return removeTrees(paths);
    for (const p of marked) seen.add(p);
    await new Promise<void>((release) => held.push({ paths, release }));
    return outcome === "fail" ? "injected failure" : removeTrees(paths);
  };
  const withHeld = async (f: () => Promise<void>) => {
    try {
      await f();
    } finally {
      holding = false;
      for (const h of held) h.release();
    }
  };
  return { remover, held, withHeld };
}

describe("a process's slot, held until its scratch directory is gone", { skip: sandboxSkip }, () => {
  it("a command that left a large tree keeps its process slot until the tree's removal settles: others are refused till then, admitted after; stop waits for none", async () => {
    const r = heldRemover();
    await withKernel({ maxProcesses: 1, scratchRemover: r.remover }, (t) =>
      r.withHeld(async () => {
        const c = await t.admin();
        // Its result comes while the removal is held: the op is not held up, only the slot.
        assert.match(await sh(c, LARGE), /made/);
        await until(() => r.held.length === 1, 300_000, "the tree's removal to begin");
        const tree = r.held[0]?.paths[0] as string;
        assert.equal(existsSync(join(tree, "many", "f20000")), true);
        assert.equal(t.k.status().processes, 1, "the ended command still holds its slot");
        // The refusal says the place is an ended process's, freed once its directory is gone.
        const pending =
          "already runs 1 processes (agents and commands) (1 of them ended, their scratch directories being removed";
        await assert.rejects(c.compute.command("true"), klass("RESOURCE", pending));
        await assert.rejects(
          c.agents.spawn("true", "a", { args: [], rights: [], lifetimeMs: 60_000 }),
          klass("RESOURCE", "already runs 1 processes"),
        );
        r.held[0]?.release();
        await until(() => t.k.status().processes === 0, 30_000, "the slot to be freed");
        assert.equal(existsSync(tree), false);
        assert.match(await sh(c, "echo again"), /again/);
        // Stopping while a removal is held: the stop waits for the removal, never for a slot.
        assert.match(await sh(c, LARGE), /made/);
        await until(() => r.held.length === 2, 300_000, "the second tree's removal to begin");
        const stopped = t.k.stop();
        r.held[1]?.release();
        await stopped;
        assert.equal(existsSync(r.held[1]?.paths[0] as string), false);
      }),
    );
  });

  it("an agent likewise, its maxAgents place too; its id started again meanwhile is another place, released apart", async () => {
    const r = heldRemover();
    await withKernel({ maxProcesses: 2, maxAgents: 2, scratchRemover: r.remover }, (t) =>
      r.withHeld(async () => {
        const c = await t.admin();
        await c.agents.spawn("sh", "big", { args: ["-c", LARGE], rights: [], lifetimeMs: 60_000 });
        await until(() => r.held.length === 1, 300_000, "the agent's tree's removal to begin");
        assert.equal((await c.agents.status("agent://sh/big")).state, "exited");
        assert.equal(t.k.status().processes, 1);
        // The same id again: admitted (one place of two is free), and counted apart from the first.
        await c.agents.spawn("sh", "big", { args: ["-c", "exec sleep 300"], rights: [], lifetimeMs: 60_000 });
        assert.equal(t.k.status().processes, 2);
        await assert.rejects(c.compute.command("true"), klass("RESOURCE", "already runs 2 processes"));
        await assert.rejects(
          c.agents.spawn("sh", "other", { args: ["-c", "true"], rights: [], lifetimeMs: 60_000 }),
          klass("RESOURCE", "already runs 2 agents (1 ended"),
        );
        r.held[0]?.release();
        await until(() => t.k.status().processes === 1, 30_000, "the first agent's places to be freed");
        assert.equal(existsSync(r.held[0]?.paths[0] as string), false);
        // The running one keeps its place: a command fits beside it, a second beside both does not.
        const d = await c.compute.command("sleep", ["300"]);
        await assert.rejects(c.compute.command("true"), klass("RESOURCE", "already runs 2 processes"));
        await c.ops.cancel(d);
        await c.agents.kill("agent://sh/big");
        await until(() => t.k.status().processes === 0, 30_000, "every place to be freed");
      }),
    );
  });

  it("a removal that fails frees the slot all the same, and is logged; the directory is left for the next start", async () => {
    const r = heldRemover("fail");
    const lines: { msg: string; err?: string; paths?: string[] }[] = [];
    const logger = pino({ level: "info" }, { write: (l: string) => lines.push(JSON.parse(l)) });
    await withKernel({ maxProcesses: 1, scratchRemover: r.remover, logger }, (t) =>
      r.withHeld(async () => {
        const c = await t.admin();
        assert.match(await sh(c, LARGE), /made/);
        await until(() => r.held.length === 1, 300_000, "the tree's removal to begin");
        assert.equal(t.k.status().processes, 1);
        r.held[0]?.release();
        await until(() => t.k.status().processes === 0, 30_000, "the slot to be freed");
        const tree = r.held[0]?.paths[0] as string;
        assert.ok(
          lines.some(
            (l) => /cannot remove scratch directories/.test(l.msg) && l.err === "injected failure" && l.paths?.[0] === tree,
          ),
          JSON.stringify(lines.filter((l) => /scratch/.test(l.msg))),
        );
        assert.equal(existsSync(tree), true);
        assert.match(await sh(c, "echo again"), /again/);
      }),
    );
  });
});

describe("a sandboxed process leaving a chain deeper than PATH_MAX in /scratch", { skip: sandboxSkip }, () => {
  const s = kernelForSuite();
  const root = () => join(s.t.k.inspect.getAgent("admin/sh/probe")?.cwd ?? "", "..");

  it("a command: its result comes, the kernel keeps serving, the directory goes", async () => {
    // An agent first, only to learn the scratch root's path (its record's cwd).
    await s.admin.agents.spawn("sh", "probe", { args: ["-c", "true"], rights: [], lifetimeMs: 60_000 });
    await until(async () => (await s.admin.agents.status("agent://sh/probe")).state === "exited");
    await until(() => readdirSync(root()).every((n) => n.startsWith(".")), 30_000, "the probe's scratch goes");
    const out = await sh(s.admin, `mkdir -p '${DEEP}' && echo made`);
    assert.match(out, /made/);
    assert.equal(((await s.admin.call("system.health", "kernel://")).payload as { status: string }).status, "ok");
    await until(() => readdirSync(root()).every((n) => n.startsWith(".")), 30_000, "the command's scratch goes");
  });

  it("an agent: its end is recorded, its authority ends, the kernel keeps serving, the directory goes", async () => {
    const ag = await s.admin.agents.spawn("sh", "deep", {
      args: ["-c", `mkdir -p '${DEEP}' && echo made`],
      rights: [],
      lifetimeMs: 60_000,
    });
    await until(async () => (await s.admin.agents.status("agent://sh/deep")).state === "exited", 30_000, "exited");
    const rec = s.t.k.inspect.getAgent("admin/sh/deep");
    assert.ok(rec);
    assert.match(Buffer.from((await s.admin.agents.logs("agent://sh/deep")).stdout).toString(), /made/);
    const ended = s.t.k.inspect.queryAudit({ op: "agent.exited", limit: 20 });
    assert.ok(
      ended.some((r) => r.target === ag.agent),
      JSON.stringify(ended),
    );
    assert.ok(s.t.k.inspect.getToken(rec.tokenId)?.revokedAt, "the agent's token is revoked");
    await until(() => !existsSync(rec.cwd), 30_000, "the agent's scratch goes");
    assert.equal(((await s.admin.call("system.health", "kernel://")).payload as { status: string }).status, "ok");
  });
});

describe("the sandbox's memory file systems", { skip: sandboxSkip }, () => {
  const s = kernelForSuite({ sandboxTmpBytes: 4 * 1024 * 1024 });

  it("/tmp and /dev/shm are bounded by sandboxTmpBytes: a write past it fails with ENOSPC (below the file size limit)", async () => {
    const out = await sh(
      s.admin,
      "head -c 8388608 /dev/zero > /tmp/big 2>&1 || echo TMP-FULL; head -c 8388608 /dev/zero > /dev/shm/big 2>&1 || echo SHM-FULL; " +
        "head -c 1048576 /dev/zero > /tmp/small && echo TMP-OK; ls -l /tmp/big /dev/shm/big",
    );
    assert.match(out, /TMP-FULL/);
    assert.match(out, /SHM-FULL/);
    assert.match(out, /No space left on device/);
    assert.doesNotMatch(out, / 8388608 /, out);
  });

  it("the root, /dev and the covers are read-only: no unbounded tmpfs to write to", async () => {
    const out = await sh(
      s.admin,
      "echo x > /x 2>&1 || echo ROOT-RO; echo x > /dev/x 2>&1 || echo DEV-RO; mkdir /y 2>&1 || echo MKDIR-RO",
    );
    assert.match(out, /ROOT-RO/);
    assert.match(out, /DEV-RO/);
    assert.match(out, /MKDIR-RO/);
  });

  it("no nested user namespace: unshare -U fails inside", async () => {
    const out = await sh(
      s.admin,
      "unshare -U true 2>&1 && echo NESTED || echo REFUSED; unshare -Urm true 2>&1 && echo NESTED || echo REFUSED",
    );
    assert.doesNotMatch(out, /NESTED/, out);
    assert.match(out, /REFUSED\n.*REFUSED/s);
  });
});

describe("the sandbox's CPU priority", { skip: sandboxSkip }, () => {
  const s = kernelForSuite({ sandboxNice: 7 });

  it("a sandboxed program runs sandboxNice nicer than the kernel and cannot lower it: programs that spin yield the CPU to the kernel's thread", async () => {
    const want = Math.min(19, getPriority() + 7);
    const out = await sh(s.admin, "nice; nice -n -5 nice 2>&1; sh -c 'nice'");
    assert.deepEqual(
      out.split("\n").filter((l) => /^-?\d+$/.test(l)),
      [String(want), String(want), String(want)],
      out,
    );
    assert.match(out, /cannot set niceness/, out);
  });

  it("a sandbox's session is niced as a scheduler autogroup too: with autogroups on, a sandbox weighs sandboxNice against the kernel's session, not as much as it", {
    skip: existsSync("/proc/self/autogroup") ? false : "NOT RUN: this host's Linux has no scheduler autogroups",
  }, async () => {
    // "/autogroup-<id> nice <n>": the kernel's own (this process's) and the sandbox's, seen from inside.
    const group = (line: string) => /^\/autogroup-(\d+) nice (-?\d+)$/.exec(line.trim())?.slice(1);
    const kernel = group(readFileSync("/proc/self/autogroup", "utf8"));
    const out = await sh(s.admin, "cat /proc/self/autogroup; sh -c 'cat /proc/self/autogroup'");
    const seen = out
      .split("\n")
      .filter((l) => l.startsWith("/autogroup-"))
      .map(group);
    assert.equal(seen.length, 2, out);
    for (const g of seen) {
      // A session of its own (the sandbox's, not the kernel's: its nice is not the kernel's to share) ...
      assert.notEqual(g?.[0], kernel?.[0], out);
      // ... weighed as sandboxNice, as its processes are within it.
      assert.equal(g?.[1], "7", out);
    }
  });

  it("sandboxNice past 19 (no lower priority exists) or negative is a ConfigError: the kernel does not start", async () => {
    await assert.rejects(startKernel({ sandboxNice: 20 }), /sandboxNice must be at most 19/);
    await assert.rejects(startKernel({ sandboxNice: -1 }), /sandboxNice/);
  });
});

describe("a sandboxed process under memory pressure", { skip: sandboxSkip }, () => {
  const s = kernelForSuite({ sandboxOomScoreAdj: 700 });

  it("every sandboxed process has sandboxOomScoreAdj as its OOM score, its sandbox's init and children too: the host's OOM killer takes them before the kernel", async () => {
    // never below the kernel's own (this process's, wherever the tests run)
    const want = String(Math.max(700, Number(readFileSync("/proc/self/oom_score_adj", "utf8"))));
    const out = await sh(
      s.admin,
      "cat /proc/self/oom_score_adj /proc/1/oom_score_adj; sh -c 'cat /proc/self/oom_score_adj'; (echo 0 > /proc/self/oom_score_adj) 2>/dev/null && echo LOWERED || echo KEPT",
    );
    const lines = out.trim().split("\n");
    assert.deepEqual(lines.slice(0, 3), [want, want, want], out);
    // With CAP_SYS_RESOURCE (bit 24; a root kernel outside containers that drop it) the kernel's
    // write is also the least the sandbox may set; without it a program may go back to the kernel's.
    const capEff = BigInt(`0x${/^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1] ?? "0"}`);
    assert.equal(lines[3], (capEff >> 24n) & 1n ? "KEPT" : "LOWERED", out);
  });

  it("sandboxOomScoreAdj past 1000 (Linux's largest) is a ConfigError: the kernel does not start", async () => {
    await assert.rejects(startKernel({ sandboxOomScoreAdj: 1001 }), /sandboxOomScoreAdj must be at most 1000/);
  });
});

describe("a sandboxed process's open files", { skip: sandboxSkip }, () => {
  const s = kernelForSuite({ sandboxFiles: 64 });

  it("are bounded by sandboxFiles, soft and hard: a process cannot raise it toward the kernel's own hard limit and fill the host's file table", async () => {
    const out = await sh(
      s.admin,
      'ulimit -Sn; ulimit -Hn; (ulimit -n 65) 2>/dev/null && echo raised || echo refused; node -e \'const fs=require("fs");let n=0;try{for(;;){fs.openSync("/dev/null","r");n++}}catch(e){console.log(e.code)}\'',
    );
    assert.deepEqual(out.trim().split("\n"), ["64", "64", "refused", "EMFILE"], out);
  });
});

describe("a bubblewrap without --size and --disable-userns", { skip: sandboxSkip }, () => {
  it("the kernel starts and runs processes, and says what is not bounded: system.info and status", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-oldbwrap-"));
    const real = spawnSync("sh", ["-c", "command -v bwrap"], { encoding: "utf8" }).stdout.trim();
    const wrapper = join(dir, "bwrap");
    // An older bubblewrap: its help lists neither option, and it refuses both.
    writeFileSync(
      wrapper,
      `#!/bin/sh\nif [ "$1" = --help ]; then ${real} --help | grep -v -e --size -e --disable-userns; exit 0; fi\n` +
        `for a in "$@"; do case "$a" in --size|--disable-userns) echo "bwrap: Unknown option $a" >&2; exit 1;; esac; done\nexec ${real} "$@"\n`,
    );
    chmodSync(wrapper, 0o755);
    chmodSync(dir, 0o755);
    try {
      await withKernel({ bwrapPath: wrapper }, async (t) => {
        const c = await t.admin();
        const info = (await c.call("system.info", "kernel://")).payload as {
          sandbox: { usable: boolean; weakened?: string };
        };
        assert.equal(info.sandbox.usable, true);
        assert.match(info.sandbox.weakened ?? "", /--size.*sandboxTmpBytes.*--disable-userns/s);
        assert.match((t.k.status().sandbox as { weakened?: string }).weakened ?? "", /--disable-userns/);
        assert.match(await sh(c, "echo ran"), /ran/);
      });
    } finally {
      removeHome(dir);
    }
  });
});
