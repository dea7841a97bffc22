/**
 * The seccomp filter every sandbox gets (bubblewrap's `--seccomp FD`): a classic BPF program
 * that allows everything but three things, each failed with EPERM.
 *
 * The kernel keyring's system calls (`add_key`, `request_key`, `keyctl`). The keyring is not
 * namespaced: a process keeps its parent's session keyring through fork, setuid and a new user
 * namespace, and possesses every key in it whatever its uid. A kernel run with a session
 * keyring (a systemd service's private one, a login's) would hand it to every sandbox: the keys
 * in it read, keys added there by one sandbox read by the next (another persona's), kept after
 * its process ends, counted against the one sandbox uid's key quota; and `request_key` can make
 * the host run `/sbin/request-key` as root. Docker's default profile blocks the same three calls
 * for the same reason.
 *
 * A parent-death signal other than SIGKILL (`prctl(PR_SET_PDEATHSIG, sig)`, clearing it with 0
 * included). Nothing in a sandbox outlives it only because its PID namespace's init, bubblewrap's
 * pid 1, dies with bubblewrap's monitor (the process the kernel started, and waits for) by the
 * SIGKILL parent-death signal `--die-with-parent` gives it. That init runs as the sandbox's uid,
 * so the sandboxed program can ptrace it (or write its memory through /proc/1/mem) and make it
 * run any system call; bubblewrap applies this filter to it as well, so the call it could use to
 * drop that signal fails there too. Without this, a program cleared pid 1's signal, then wrote an
 * exit status into pid 1's eventfd: the monitor reported the command ended, the kernel freed its
 * places and considered its sandbox gone, and the namespace ran on, unbounded and unaccounted,
 * past the kernel's own stop.
 *
 * Memory that no bound of the sandbox counts: anonymous files (`memfd_create`, `memfd_secret`)
 * and System V IPC (`shmget`, `msgget`, `semget`, and 32-bit x86's `ipc` that multiplexes them).
 * A memfd is written with write(2), never mapped, so RLIMIT_AS does not see it, and it lies on
 * no sized tmpfs (`sandboxTmpBytes` bounds /tmp and /dev/shm): one process under a 256 MiB
 * address space held 532 MiB of the host's memory in eight memfds, and could hold its open-file
 * bound of them, each up to RLIMIT_FSIZE. A System V segment is written through a mapping it can
 * drop at once, and stays until the sandbox's IPC namespace ends (466 MiB the same way); each
 * namespace starts with Linux's defaults, ~500 MiB of message queues and gigabytes of semaphore
 * sets in the kernel's own memory. Under memory pressure the OOM killer, which counts only what a
 * process maps, then takes other sandboxes' processes first. POSIX shared memory (`shm_open`, a
 * file in the sized /dev/shm) stays.
 *
 * A socket whose close waits (`setsockopt(SOL_SOCKET, SO_LINGER)` with a time) and the io_uring
 * calls that could set that option beyond this filter (`IORING_OP_URING_CMD`'s setsockopt, Linux
 * 6.7 and later). A program's stdout and stderr, and an agent's connection, are Unix sockets the
 * kernel reads; a descriptor sent over one (SCM_RIGHTS) is dropped by that read, its last
 * reference closed in the kernel's own thread. A TCP socket (on the sandbox's loopback) with unsent
 * data its peer never reads and a linger of an hour, so handed over, held the kernel's event loop
 * in that close for the hour: no request, no deadline, no kill ran. Closing the linger off
 * (`l_onoff` 0) is refused too: the filter cannot read the value. i386's `socketcall`, which
 * passes its arguments in memory, is refused for setsockopt.
 */

/** `struct seccomp_data`: the syscall number at offset 0, the audit architecture at 4, the arguments (u64 each) from 16. */
const NR = 0;
const ARCH = 4;
const ARGS = 16;
const BPF_LD_W_ABS = 0x20;
const BPF_JEQ_K = 0x15;
const BPF_RET_K = 0x06;
const SECCOMP_RET_ALLOW = 0x7fff0000;
/** Before Linux 4.14 (no KILL_PROCESS), an unknown action: the thread is killed. */
const SECCOMP_RET_KILL_PROCESS = 0x80000000;
const SECCOMP_RET_ERRNO = 0x00050000;
const EPERM = 1;
const PR_SET_PDEATHSIG = 1;
const SIGKILL = 9;
const SOL_SOCKET = 1;
const SO_LINGER = 13;
/** socketcall(2)'s call number for setsockopt (i386). */
const SYS_SETSOCKOPT = 14;
/** io_uring_setup, the same number everywhere (asm-generic): without a ring nothing else of io_uring is reachable. */
const IO_URING_SETUP = 425;
/** x32 system calls are x86_64's with this bit set. */
const X32 = 0x40000000;

/**
 * The calls the filter looks at, by audit architecture (AUDIT_ARCH_*): those it refuses (the
 * keyring's; memfd_create, memfd_secret; shmget, msgget, semget, and i386's ipc; io_uring_setup),
 * prctl, setsockopt (refused for SO_LINGER) and i386's socketcall (refused for setsockopt).
 */
const CALLS: Record<string, { arch: number; denied: number[]; prctl: number[]; sockopt: number[]; socketcall?: number }[]> = {
  x64: [
    // x86_64 (and its x32 ABI, same audit architecture, whose setsockopt is 541) and i386
    // (int 0x80 still works on x86_64).
    {
      arch: 0xc000003e,
      denied: [248, 249, 250, 319, 447, 29, 68, 64, IO_URING_SETUP].flatMap((n) => [n, X32 | n]),
      prctl: [157, X32 | 157],
      sockopt: [54, X32 | 54, X32 | 541],
    },
    {
      arch: 0x40000003,
      denied: [286, 287, 288, 356, 447, 395, 399, 393, 117, IO_URING_SETUP],
      prctl: [172],
      sockopt: [366],
      socketcall: 102,
    },
  ],
  arm64: [
    // aarch64 and 32-bit ARM (compat).
    { arch: 0xc00000b7, denied: [217, 218, 219, 279, 447, 194, 186, 190, IO_URING_SETUP], prctl: [167], sockopt: [208] },
    { arch: 0x40000028, denied: [309, 310, 311, 385, 307, 303, 299, IO_URING_SETUP], prctl: [172], sockopt: [294] },
  ],
};

type Insn = { code: number; jt: number | string; jf: number | string; k: number };

/**
 * The filter for `arch` (node's `process.arch`) as bubblewrap reads it (an array of
 * `struct sock_filter`, host byte order), or undefined for an architecture it does not know.
 */
export function sandboxFilter(arch: string = process.arch): Buffer | undefined {
  const table = CALLS[arch];
  if (!table) return undefined;
  const le = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  /** The low 32 bits of argument `i` (what an `int` parameter is, and all a signal number can be). */
  const lowWord = (i: number) => ARGS + 8 * i + (le ? 0 : 4);
  const prog: (Insn | string)[] = [{ code: BPF_LD_W_ABS, jt: 0, jf: 0, k: ARCH }];
  table.forEach(({ arch: a, denied, prctl, sockopt, socketcall }, i) => {
    const next = `arch${i + 1}`;
    prog.push({ code: BPF_JEQ_K, jt: 0, jf: next, k: a }, { code: BPF_LD_W_ABS, jt: 0, jf: 0, k: NR });
    for (const nr of denied) prog.push({ code: BPF_JEQ_K, jt: "deny", jf: 0, k: nr });
    for (const nr of prctl) prog.push({ code: BPF_JEQ_K, jt: "prctl", jf: 0, k: nr });
    for (const nr of sockopt) prog.push({ code: BPF_JEQ_K, jt: "sockopt", jf: 0, k: nr });
    if (socketcall !== undefined) prog.push({ code: BPF_JEQ_K, jt: "socketcall", jf: 0, k: socketcall });
    prog.push({ code: BPF_RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ALLOW }, next);
  });
  // Any other architecture's calls kill the process. Linux reports none on these hosts (x86_64
  // or i386 on x86-64; aarch64 or arm on arm64, big-endian too), but a call it did report would
  // be judged by none of the numbers above: the filter fails closed, not open.
  prog.push({ code: BPF_RET_K, jt: 0, jf: 0, k: SECCOMP_RET_KILL_PROCESS });
  // prctl: the option is an int (its low word, whatever the high one holds); PR_SET_PDEATHSIG
  // passes with SIGKILL only (a signal number with its high word set is refused by Linux itself).
  prog.push(
    "prctl",
    { code: BPF_LD_W_ABS, jt: 0, jf: 0, k: lowWord(0) },
    { code: BPF_JEQ_K, jt: 0, jf: "allow", k: PR_SET_PDEATHSIG },
    { code: BPF_LD_W_ABS, jt: 0, jf: 0, k: lowWord(1) },
    { code: BPF_JEQ_K, jt: "allow", jf: "deny", k: SIGKILL },
    // setsockopt(fd, level, optname, …): SOL_SOCKET's SO_LINGER refused (both ints: their low words).
    "sockopt",
    { code: BPF_LD_W_ABS, jt: 0, jf: 0, k: lowWord(1) },
    { code: BPF_JEQ_K, jt: 0, jf: "allow", k: SOL_SOCKET },
    { code: BPF_LD_W_ABS, jt: 0, jf: 0, k: lowWord(2) },
    { code: BPF_JEQ_K, jt: "deny", jf: "allow", k: SO_LINGER },
    // socketcall(call, args): its arguments are in memory, out of the filter's sight; setsockopt refused whole.
    "socketcall",
    { code: BPF_LD_W_ABS, jt: 0, jf: 0, k: lowWord(0) },
    { code: BPF_JEQ_K, jt: "deny", jf: "allow", k: SYS_SETSOCKOPT },
    "allow",
    { code: BPF_RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ALLOW },
    "deny",
    { code: BPF_RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ERRNO | EPERM },
  );
  // Labels to instruction indexes; jumps are relative to the next instruction.
  const at = new Map<string, number>();
  const insns: Insn[] = [];
  for (const p of prog) {
    if (typeof p === "string") at.set(p, insns.length);
    else insns.push(p);
  }
  const buf = Buffer.alloc(insns.length * 8);
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
