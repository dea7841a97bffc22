// What a sandboxed process leaves behind and what it can fill: its scratch directory, however
// deep or large, goes without stopping the kernel (nor its next start); its memory file systems
// (/tmp, /dev/shm) are bounded, the rest of its tmpfs is read-only, no nested user namespace.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { Sandbox } from "../src/sandbox/sandbox.js";
import { kernelForSuite, removeHome, sandboxSkip, until, withKernel } from "./harness.js";

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
  it("are removed in a child process, off the kernel's event loop: cleanup returns with the tree there, gone when it settles; a chain deeper than PATH_MAX too", async () => {
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
      const done = launch.cleanup();
      assert.ok(existsSync(join(launch.scratch, "f0")), "nothing was removed on the caller's turn of the event loop");
      await done;
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
