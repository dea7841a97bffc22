import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { sandboxFilter } from "../src/sandbox/seccomp.js";
import { decode, judge, type SeccompData, type Verdict } from "./classic-bpf.js";
import {
  EPERM,
  HOSTS,
  IPPROTO_TCP,
  OTHER_ARCHES,
  PR_SET_NAME,
  PR_SET_PDEATHSIG,
  SIGKILL,
  SIGTERM,
  SO_KEEPALIVE,
  SO_LINGER,
  SOL_SOCKET,
  SYS,
  X32,
} from "./seccomp-arches.js";

/*
 * The seccomp filter run by a classic BPF interpreter (classic-bpf.ts) on every architecture it
 * has a branch for: the integration tests (sandbox-hostile) execute the host's only, and a wrong
 * number or jump in another branch would silently open a hole there. System call numbers come
 * from seccomp-arches.ts, written from Linux's tables, not from the filter's source.
 */

const ALLOW: Verdict = { action: "allow" };
const DENY: Verdict = { action: "errno", errno: EPERM };
const HIGH = 1n << 32n;

for (const [host, abis] of Object.entries(HOSTS)) {
  const prog = decode(sandboxFilter(host) as Buffer);
  describe(`the seccomp filter of a ${host} host`, () => {
    for (const { name, arch, calls } of abis) {
      const call = (nr: number, ...args: (number | bigint)[]) => judge(prog, { nr, arch, args });
      describe(`${name}'s calls`, () => {
        it("the keyring's, memfd's, System V IPC's and io_uring_setup fail with EPERM whatever their arguments", () => {
          for (const [what, nr] of Object.entries(calls.denied)) {
            assert.deepEqual(call(nr), DENY, what);
            assert.deepEqual(call(nr, 1, 1, 13, 9, 0xffffffff, -1n), DENY, what);
          }
        });

        it("prctl(PR_SET_PDEATHSIG) passes with SIGKILL only; other options pass; the option's and signal's low words are judged", () => {
          assert.deepEqual(call(calls.prctl, PR_SET_PDEATHSIG, SIGKILL), ALLOW);
          assert.deepEqual(call(calls.prctl, PR_SET_PDEATHSIG, SIGTERM), DENY);
          assert.deepEqual(call(calls.prctl, PR_SET_PDEATHSIG, 0), DENY);
          // An int option with garbage above it is PR_SET_PDEATHSIG to Linux: refused the same.
          assert.deepEqual(call(calls.prctl, HIGH | 1n, 0), DENY);
          // A signal with its high word set is EINVAL in Linux itself: the filter may pass it.
          assert.deepEqual(call(calls.prctl, PR_SET_PDEATHSIG, HIGH | 9n), ALLOW);
          assert.deepEqual(call(calls.prctl, PR_SET_NAME, 0), ALLOW);
          assert.deepEqual(call(calls.prctl, 0, 0), ALLOW);
        });

        it("setsockopt(SOL_SOCKET, SO_LINGER) fails with EPERM; other options and levels pass", () => {
          for (const nr of [calls.setsockopt, ...(calls.setsockoptAlso ?? [])]) {
            assert.deepEqual(call(nr, 3, SOL_SOCKET, SO_LINGER, 0x1000, 8), DENY);
            assert.deepEqual(call(nr, 3, HIGH | 1n, HIGH | 13n, 0x1000, 8), DENY);
            assert.deepEqual(call(nr, 3, SOL_SOCKET, SO_KEEPALIVE, 0x1000, 4), ALLOW);
            assert.deepEqual(call(nr, 3, IPPROTO_TCP, SO_LINGER, 0x1000, 4), ALLOW);
          }
        });

        it("read, write, getpid and clone pass", () => {
          for (const nr of [calls.read, calls.write, calls.getpid, calls.clone]) assert.deepEqual(call(nr, 0, 0, 0), ALLOW);
        });

        if (calls.socketcall !== undefined) {
          const socketcall = calls.socketcall;
          it("socketcall's setsockopt fails with EPERM (its arguments are in memory); its other calls pass", () => {
            assert.deepEqual(call(socketcall, SYS.setsockopt, 0x1000), DENY);
            assert.deepEqual(call(socketcall, HIGH | BigInt(SYS.setsockopt), 0x1000), DENY);
            for (const sub of [SYS.socket, SYS.connect, SYS.getsockopt, SYS.sendmsg])
              assert.deepEqual(call(socketcall, sub, 0x1000), ALLOW, `socketcall ${sub}`);
          });
        }

        it("every other number up to 1023 passes: nothing else is judged", () => {
          const refused = new Set(Object.values(calls.denied));
          // The arguments that make prctl, setsockopt and socketcall refuse: they are judged apart.
          const judged = new Set([calls.prctl, calls.setsockopt, ...(calls.setsockoptAlso ?? []), calls.socketcall]);
          const sweep = [...Array(1024).keys()].map((n) => (name === "x32" ? X32 | n : n));
          for (const nr of sweep) {
            if (judged.has(nr)) continue;
            assert.deepEqual(call(nr, 14, 1, 13), refused.has(nr) ? DENY : ALLOW, `${name} ${nr}`);
          }
        });
      });
    }

    it("each system call is judged by its own architecture's number: another's passes", () => {
      const [a, b] = abis.filter((x) => x.name !== "x32") as [(typeof abis)[0], (typeof abis)[0]];
      for (const [from, to] of [
        [a, b],
        [b, a],
      ] as const) {
        const own = new Set([...Object.values(to.calls.denied), to.calls.prctl, to.calls.setsockopt, to.calls.socketcall]);
        for (const [what, nr] of Object.entries(from.calls.denied)) {
          if (own.has(nr)) continue; // the same number in both tables (io_uring_setup, memfd_secret)
          assert.deepEqual(judge(prog, { nr, arch: to.arch }), ALLOW, `${from.name}'s ${what} (${nr}) as ${to.name}'s`);
        }
      }
    });

    it("a system call of any architecture the filter does not list kills the process", () => {
      const listed = new Set(abis.map((x) => x.arch));
      const others = [
        ...Object.entries(OTHER_ARCHES),
        ...Object.entries(HOSTS).flatMap(([h, l]) => (h === host ? [] : l.map((x) => [x.name, x.arch] as const))),
      ];
      for (const [what, arch] of others) {
        if (listed.has(arch)) continue;
        for (const data of [
          { nr: 0, arch },
          { nr: 1, arch },
          { nr: 250, arch, args: [1, 1, 13] },
        ] as SeccompData[])
          assert.deepEqual(judge(prog, data), { action: "kill_process" }, `${what} ${data.nr}`);
      }
    });
  });
}

describe("the seccomp filter's hosts", () => {
  it("x86-64 and arm64 have a filter; other hosts none (the sandbox says it is weakened)", () => {
    assert.ok(sandboxFilter("x64"));
    assert.ok(sandboxFilter("arm64"));
    for (const arch of ["ia32", "arm", "riscv64", "ppc64", "s390x", "loong64"])
      assert.equal(sandboxFilter(arch), undefined, arch);
  });

  it("the interpreter refuses an instruction it does not know, and a filter that runs off its end", () => {
    const insn = (code: number, k: number, jt = 0, jf = 0) => {
      const le = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
      const b = Buffer.alloc(8);
      if (le) b.writeUInt16LE(code, 0);
      else b.writeUInt16BE(code, 0);
      b.writeUInt8(jt, 2);
      b.writeUInt8(jf, 3);
      if (le) b.writeUInt32LE(k, 4);
      else b.writeUInt32BE(k, 4);
      return b;
    };
    const ret = insn(0x06, 0x7fff0000);
    assert.throws(() => decode(Buffer.concat([insn(0x28, 0), ret])), /opcode 0x28/); // BPF_LD|BPF_H|BPF_ABS
    assert.throws(() => decode(Buffer.concat([insn(0x20, 2), ret])), /load at 2/); // unaligned
    assert.throws(() => decode(Buffer.concat([insn(0x20, 64), ret])), /load at 64/); // past seccomp_data
    assert.throws(() => decode(Buffer.concat([insn(0x15, 0, 1, 0), ret])), /past the end/);
    assert.throws(() => decode(insn(0x20, 0)), /does not end with a return/);
  });
});
