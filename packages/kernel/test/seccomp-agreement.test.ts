import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Sandbox } from "../src/sandbox/sandbox.js";
import { sandboxFilter } from "../src/sandbox/seccomp.js";
import { judge } from "./classic-bpf.js";
import { sandboxSkip } from "./harness.js";
import {
  AUDIT_ARCH,
  type Calls,
  HOSTS,
  IPPROTO_TCP,
  PR_SET_PDEATHSIG,
  SIGKILL,
  SIGTERM,
  SO_KEEPALIVE,
  SO_LINGER,
  SOL_SOCKET,
} from "./seccomp-arches.js";

/*
 * The interpreter (classic-bpf.ts) held to the real kernel: the host's own system calls, and
 * x32's on x86-64 (seccomp judges a call before Linux looks its number up, so x32's are judged
 * even where Linux has no x32), made by perl under the real filter in a real sandbox. Each call
 * fails with EPERM there exactly when the interpreter says the filter refuses it. Arguments are
 * numbers only (no pointers): an allowed call fails otherwise (EBADF, EFAULT, EINVAL, ENOSYS).
 */

const PERL = "/usr/bin/perl";
const NATIVE: Record<string, number> = { x64: AUDIT_ARCH.x86_64, arm64: AUDIT_ARCH.aarch64 };
const native = NATIVE[process.arch];
const skip =
  sandboxSkip ||
  (!native ? `NOT RUN: no native ABI for ${process.arch}` : !existsSync(PERL) ? "NOT RUN: needs /usr/bin/perl" : false);
const HIGH = 2 ** 32;

/** The calls to make, each `[nr, ...args]`. */
function cases(c: Calls): number[][] {
  return [
    ...Object.values(c.denied).map((nr) => [nr, 0, 0, 0, 0]),
    [c.prctl, PR_SET_PDEATHSIG, SIGKILL],
    [c.prctl, PR_SET_PDEATHSIG, SIGTERM],
    [c.prctl, PR_SET_PDEATHSIG, 0],
    [c.prctl, HIGH + PR_SET_PDEATHSIG, 0],
    [c.prctl, PR_SET_PDEATHSIG, HIGH + SIGKILL],
    ...[c.setsockopt, ...(c.setsockoptAlso ?? [])].flatMap((nr) => [
      [nr, -1, SOL_SOCKET, SO_LINGER, 0, 0],
      [nr, -1, HIGH + SOL_SOCKET, SO_LINGER, 0, 0],
      [nr, -1, SOL_SOCKET, SO_KEEPALIVE, 0, 0],
      [nr, -1, IPPROTO_TCP, SO_LINGER, 0, 0],
    ]),
    [c.read, -1, 0, 0],
    [c.write, -1, 0, 0],
    [c.getpid],
  ];
}

describe("the seccomp filter's interpreter against the real kernel", { skip }, () => {
  it("each native (and x32) call fails with EPERM under the real filter exactly when the interpreter says it is refused", async () => {
    const prog = sandboxFilter() as Buffer;
    const abis = (HOSTS[process.arch] ?? []).filter((a) => a.arch === native);
    const calls = abis.flatMap((a) => cases(a.calls).map((args) => ({ abi: a.name, args })));
    const root = mkdtempSync(join(tmpdir(), "kpip-seccomp-"));
    chmodSync(root, 0o711);
    const scratchRoot = join(root, "r");
    mkdirSync(scratchRoot, { recursive: true, mode: 0o711 });
    const box = new Sandbox({
      mode: "bwrap",
      readPaths: [],
      scratchRoot,
      uid: 65534,
      hidden: [],
      limits: { processes: 0, memoryBytes: 0, cpuSeconds: 0, fileBytes: 0 },
    });
    try {
      // One line a call: "ok", or the errno it failed with.
      const script = `for (@ARGV) { my @a = map { $_ + 0 } split /,/; $! = 0; my $r = syscall($a[0], @a[1 .. $#a]); print $r == -1 ? ($! + 0) : "ok", "\\n" }`;
      const launch = box.launch({
        executable: PERL,
        args: ["-e", script, ...calls.map((c) => c.args.join(","))],
        env: { PATH: "/usr/bin:/bin" },
        network: false,
        limits: box.config.limits,
        extra: [],
      });
      const child = spawn(launch.file, launch.args, launch.options);
      launch.spawned(child);
      let out = "";
      child.stdout?.on("data", (d: Buffer) => {
        out += d;
      });
      const code = await new Promise<number | null>((r) => child.once("close", r));
      await launch.cleanup();
      assert.equal(code, 0, out);
      const lines = out.trim().split("\n");
      assert.equal(lines.length, calls.length, out);
      calls.forEach(({ abi, args }, i) => {
        const [nr = 0, ...rest] = args;
        const v = judge(prog, { nr, arch: native as number, args: rest.map((a) => BigInt.asUintN(64, BigInt(a))) });
        const refused = v.action === "errno" && v.errno === 1;
        assert.equal(
          lines[i] === "1",
          refused,
          `${abi} syscall(${args.join(", ")}): kernel ${lines[i]}, interpreter ${JSON.stringify(v)}`,
        );
      });
    } finally {
      await box.close(false);
      rmSync(root, { recursive: true, force: true });
    }
  });
});
