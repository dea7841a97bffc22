/**
 * The seccomp filter every sandbox gets (bubblewrap's `--seccomp FD`): a classic BPF program
 * that fails the kernel keyring's system calls (`add_key`, `request_key`, `keyctl`) with EPERM
 * and allows everything else. The keyring is not namespaced: a process keeps its parent's
 * session keyring through fork, setuid and a new user namespace, and possesses every key in it
 * whatever its uid. A kernel run with a session keyring (a systemd service's private one, a
 * login's) would hand it to every sandbox: the keys in it read, keys added there by one sandbox
 * read by the next (another persona's), kept after its process ends, counted against the one
 * sandbox uid's key quota; and `request_key` can make the host run `/sbin/request-key` as root.
 * Docker's default profile blocks the same three calls for the same reason.
 */

/** `struct seccomp_data`: the syscall number at offset 0, the audit architecture at 4. */
const NR = 0;
const ARCH = 4;
const BPF_LD_W_ABS = 0x20;
const BPF_JEQ_K = 0x15;
const BPF_RET_K = 0x06;
const SECCOMP_RET_ALLOW = 0x7fff0000;
const SECCOMP_RET_ERRNO = 0x00050000;
const EPERM = 1;
/** x32 system calls are x86_64's with this bit set. */
const X32 = 0x40000000;

/** The keyring's system calls by audit architecture (AUDIT_ARCH_*). */
const KEYRING_CALLS: Record<string, { arch: number; calls: number[] }[]> = {
  x64: [
    // x86_64 (and its x32 ABI, same audit architecture) and i386 (int 0x80 still works on x86_64).
    { arch: 0xc000003e, calls: [248, 249, 250, X32 | 248, X32 | 249, X32 | 250] },
    { arch: 0x40000003, calls: [286, 287, 288] },
  ],
  arm64: [
    // aarch64 and 32-bit ARM (compat).
    { arch: 0xc00000b7, calls: [217, 218, 219] },
    { arch: 0x40000028, calls: [309, 310, 311] },
  ],
};

type Insn = { code: number; jt: number | string; jf: number | string; k: number };

/**
 * The filter for `arch` (node's `process.arch`) as bubblewrap reads it (an array of
 * `struct sock_filter`, host byte order), or undefined for an architecture it does not know.
 */
export function keyringFilter(arch: string = process.arch): Buffer | undefined {
  const table = KEYRING_CALLS[arch];
  if (!table) return undefined;
  const prog: (Insn | string)[] = [{ code: BPF_LD_W_ABS, jt: 0, jf: 0, k: ARCH }];
  table.forEach(({ arch: a, calls }, i) => {
    const next = `arch${i + 1}`;
    prog.push({ code: BPF_JEQ_K, jt: 0, jf: next, k: a }, { code: BPF_LD_W_ABS, jt: 0, jf: 0, k: NR });
    for (const nr of calls) prog.push({ code: BPF_JEQ_K, jt: "deny", jf: 0, k: nr });
    prog.push({ code: BPF_RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ALLOW }, next);
  });
  // Any other architecture's calls (none on these hosts) are allowed, as without a filter.
  prog.push({ code: BPF_RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ALLOW }, "deny");
  prog.push({ code: BPF_RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ERRNO | EPERM });
  // Labels to instruction indexes; jumps are relative to the next instruction.
  const at = new Map<string, number>();
  const insns: Insn[] = [];
  for (const p of prog) {
    if (typeof p === "string") at.set(p, insns.length);
    else insns.push(p);
  }
  const buf = Buffer.alloc(insns.length * 8);
  const le = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  insns.forEach((ins, i) => {
    const off = (j: number | string) => {
      if (typeof j === "number") return j;
      const d = (at.get(j) as number) - i - 1;
      if (d < 0 || d > 255) throw new Error(`seccomp jump to ${j} out of range`);
      return d;
    };
    if (le) buf.writeUInt16LE(ins.code, i * 8);
    else buf.writeUInt16BE(ins.code, i * 8);
    buf.writeUInt8(off(ins.jt), i * 8 + 2);
    buf.writeUInt8(off(ins.jf), i * 8 + 3);
    if (le) buf.writeUInt32LE(ins.k >>> 0, i * 8 + 4);
    else buf.writeUInt32BE(ins.k >>> 0, i * 8 + 4);
  });
  return buf;
}
