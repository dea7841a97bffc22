/**
 * A classic BPF interpreter for seccomp filters, for tests: runs the program `sandboxFilter`
 * builds on a synthetic `struct seccomp_data`, so the branches for architectures other than the
 * host's (i386, x32, arm64, arm32) are executed too. It knows only the instructions a seccomp
 * filter needs (loads of seccomp_data words by absolute offset, conditional jumps on a constant,
 * JA, RET with a constant, AND/OR with a constant) and throws on any other opcode, so a filter
 * that starts using one fails its tests loudly instead of being judged wrongly. It checks what
 * Linux's seccomp_check_filter and bpf_check_classic check (aligned in-bounds loads, jumps inside
 * the program, a return at the end) and decodes the return value as seccomp does.
 */

/** One architecture's system call as seccomp sees it. */
export type SeccompData = {
  nr: number;
  /** AUDIT_ARCH_* */
  arch: number;
  instructionPointer?: bigint;
  /** Up to six arguments (u64 each; missing ones are 0). */
  args?: (number | bigint)[];
};

/** What the filter decides, as the kernel acts on it. */
export type Verdict =
  | { action: "allow" }
  | { action: "errno"; errno: number }
  | { action: "kill_process" }
  | { action: "kill_thread" }
  | { action: "trap"; data: number }
  | { action: "trace"; data: number }
  | { action: "log" }
  | { action: "user_notif" };

const LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
/** sizeof(struct seccomp_data) */
const DATA_SIZE = 64;
/** BPF_MAXINSNS */
const MAX_INSNS = 4096;

/** `struct seccomp_data` in host byte order, the way the kernel lays it out. */
export function seccompData(d: SeccompData): Buffer {
  const b = Buffer.alloc(DATA_SIZE);
  const u32 = (v: number, at: number) => (LE ? b.writeUInt32LE(v >>> 0, at) : b.writeUInt32BE(v >>> 0, at));
  const u64 = (v: bigint, at: number) =>
    LE ? b.writeBigUInt64LE(BigInt.asUintN(64, v), at) : b.writeBigUInt64BE(BigInt.asUintN(64, v), at);
  u32(d.nr, 0);
  u32(d.arch, 4);
  u64(d.instructionPointer ?? 0n, 8);
  (d.args ?? []).forEach((a, i) => {
    if (i > 5) throw new Error("seccomp_data has six arguments");
    u64(BigInt(a), 16 + 8 * i);
  });
  return b;
}

// Opcodes (linux/filter.h, linux/bpf_common.h): the only ones this interpreter runs.
const LD_W_ABS = 0x20;
const JA = 0x05;
const JEQ_K = 0x15;
const JGT_K = 0x25;
const JGE_K = 0x35;
const JSET_K = 0x45;
const AND_K = 0x54;
const OR_K = 0x44;
const RET_K = 0x06;

type Insn = { code: number; jt: number; jf: number; k: number };

/** The program's instructions (an array of `struct sock_filter`, host byte order), checked as Linux checks them at load. */
export function decode(prog: Buffer): Insn[] {
  if (prog.length === 0 || prog.length % 8 !== 0) throw new Error(`filter of ${prog.length} bytes`);
  const n = prog.length / 8;
  if (n > MAX_INSNS) throw new Error(`filter of ${n} instructions`);
  const insns: Insn[] = [];
  for (let i = 0; i < n; i++) {
    const at = i * 8;
    const ins = {
      code: LE ? prog.readUInt16LE(at) : prog.readUInt16BE(at),
      jt: prog.readUInt8(at + 2),
      jf: prog.readUInt8(at + 3),
      k: LE ? prog.readUInt32LE(at + 4) : prog.readUInt32BE(at + 4),
    };
    switch (ins.code) {
      case LD_W_ABS:
        if (ins.k >= DATA_SIZE || ins.k % 4 !== 0) throw new Error(`insn ${i}: load at ${ins.k}`);
        break;
      case JA:
        if (i + 1 + ins.k >= n) throw new Error(`insn ${i}: jump past the end`);
        break;
      case JEQ_K:
      case JGT_K:
      case JGE_K:
      case JSET_K:
        if (i + 1 + Math.max(ins.jt, ins.jf) >= n) throw new Error(`insn ${i}: jump past the end`);
        break;
      case AND_K:
      case OR_K:
      case RET_K:
        break;
      default:
        throw new Error(`insn ${i}: opcode 0x${ins.code.toString(16)} unknown to this interpreter`);
    }
    insns.push(ins);
  }
  const last = insns[n - 1] as Insn;
  if (last.code !== RET_K) throw new Error("the filter does not end with a return");
  return insns;
}

/** The filter's return value for `data` (the accumulator at its RET). */
export function run(prog: Buffer | Insn[], data: SeccompData): number {
  const insns = Buffer.isBuffer(prog) ? decode(prog) : prog;
  const mem = seccompData(data);
  let a = 0;
  // Every jump is forward (offsets are unsigned): the program ends in at most its length steps.
  for (let pc = 0; pc < insns.length; pc++) {
    const { code, jt, jf, k } = insns[pc] as Insn;
    switch (code) {
      case LD_W_ABS:
        a = LE ? mem.readUInt32LE(k) : mem.readUInt32BE(k);
        break;
      case JA:
        pc += k;
        break;
      case JEQ_K:
        pc += a === k ? jt : jf;
        break;
      case JGT_K:
        pc += a > k ? jt : jf;
        break;
      case JGE_K:
        pc += a >= k ? jt : jf;
        break;
      case JSET_K:
        pc += (a & k) !== 0 ? jt : jf;
        break;
      case AND_K:
        a = (a & k) >>> 0;
        break;
      case OR_K:
        a = (a | k) >>> 0;
        break;
      case RET_K:
        return k;
      default:
        throw new Error(`insn ${pc}: opcode 0x${code.toString(16)} unknown to this interpreter`);
    }
  }
  throw new Error("ran off the end of the filter");
}

/** seccomp's reading of a return value (kernel/seccomp.c: the action is its top 16 bits; an unknown one kills the process). */
export function verdict(ret: number): Verdict {
  const data = ret & 0xffff;
  switch ((ret & 0xffff0000) >>> 0) {
    case 0x80000000:
      return { action: "kill_process" };
    case 0x00000000:
      return { action: "kill_thread" };
    case 0x00030000:
      return { action: "trap", data };
    case 0x00050000:
      // The kernel caps the errno at MAX_ERRNO.
      return { action: "errno", errno: Math.min(data, 4095) };
    case 0x7fc00000:
      return { action: "user_notif" };
    case 0x7ff00000:
      return { action: "trace", data };
    case 0x7ffc0000:
      return { action: "log" };
    case 0x7fff0000:
      return { action: "allow" };
    default:
      return { action: "kill_process" };
  }
}

/** The verdict of `prog` on one system call. */
export function judge(prog: Buffer | Insn[], data: SeccompData): Verdict {
  return verdict(run(prog, data));
}
