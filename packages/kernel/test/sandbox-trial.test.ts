// The sandbox's trial run at start (Sandbox.probe): kept per process once it passed, by all it
// depends on, so a process starting many kernels runs bubblewrap once — and again whenever the
// programs, the settings or the scratch root's reachability change, and after every failure.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Sandbox, type SandboxConfig } from "../src/sandbox/sandbox.js";
import { sandboxSkip } from "./harness.js";

const bwrap = (() => {
  try {
    return execFileSync("sh", ["-c", "command -v bwrap"], { encoding: "utf8" }).trim();
  } catch {
    return "";
  }
})();

describe("the sandbox's trial run at start", { skip: sandboxSkip }, () => {
  it("runs once for kernels set up alike, again when the program, a setting or the scratch root's access changes, and after a failure", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-trial-"));
    chmodSync(dir, 0o755);
    const runs = join(dir, "runs");
    // bubblewrap runs as the sandbox's user when the kernel is root: it must be able to count
    writeFileSync(runs, "");
    chmodSync(runs, 0o666);
    // bubblewrap behind a wrapper that counts its runs (`--help` apart: asked once a program file).
    const wrapper = join(dir, "bwrap");
    const wrap = (fail: boolean) =>
      writeFileSync(
        wrapper,
        `#!/bin/sh\ncase "$1" in --help) ;; *) echo run >> ${runs}; ${fail ? "cat >/dev/null; exit 1;" : ""} ;; esac\nexec ${bwrap} "$@"\n`,
        { mode: 0o755 },
      );
    const count = () => readFileSync(runs, "utf8").split("\n").filter(Boolean).length;
    const parent = join(dir, "roots");
    mkdirSync(parent, { mode: 0o755 });
    const box = (name: string, more: Partial<SandboxConfig> = {}) =>
      new Sandbox({
        mode: "bwrap",
        readPaths: [],
        scratchRoot: join(parent, name),
        uid: 65534,
        // a kernel's own paths: different for each, covered only where a bind shows them
        hidden: [{ path: join(dir, `home-${name}`), what: "kernel home", tree: true }],
        limits: { processes: 64, memoryBytes: 0, cpuSeconds: 0, fileBytes: 0 },
        program: wrapper,
        ...more,
      });
    try {
      wrap(false);
      assert.equal(box("a").unavailable, undefined);
      assert.equal(count(), 1, "the first kernel's trial ran");
      assert.equal(box("b").unavailable, undefined);
      assert.equal(count(), 1, "a kernel set up alike (its own home and root) reuses the pass");
      assert.equal(box("c", { nice: 5 }).unavailable, undefined);
      assert.equal(count(), 2, "another setting: tried again");
      // The scratch root's parent no longer passable by the sandbox's user: tried again, and
      // (as root, whose sandbox runs as uid 65534) refused.
      chmodSync(parent, 0o700);
      const closed = box("d");
      assert.equal(count(), 3, "a parent's access changed: tried again");
      if (process.getuid?.() === 0) assert.match(String(closed.unavailable), /trial run/);
      chmodSync(parent, 0o755);
      // A failing program: unavailable, and a failure is never kept.
      wrap(true);
      assert.match(String(box("e").unavailable), /trial run/);
      assert.match(String(box("e").unavailable), /trial run/);
      const failed = count();
      wrap(false);
      assert.equal(box("f").unavailable, undefined);
      assert.equal(count(), failed + 1, "the program changed (mended): tried again");
    } finally {
      chmodSync(parent, 0o755);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
