/**
 * The system calls the sandbox's seccomp filter judges, by audit architecture, written down
 * here independently of sandbox/seccomp.ts so a wrong number there fails a test. Sources:
 * x86_64 and x32 from arch/x86/entry/syscalls/syscall_64.tbl (asm/unistd_64.h, unistd_x32.h),
 * i386 from syscall_32.tbl (asm/unistd_32.h), arm64 from include/uapi/asm-generic/unistd.h,
 * 32-bit ARM from arch/arm/tools/syscall.tbl (arm64's compat table, arch/arm64/tools/syscall_32.tbl,
 * is the same for these; it reserves 447 without memfd_secret and has no socketcall or ipc).
 */

/** __X32_SYSCALL_BIT */
export const X32 = 0x40000000;

export const AUDIT_ARCH = {
  x86_64: 0xc000003e,
  i386: 0x40000003,
  aarch64: 0xc00000b7,
  arm: 0x40000028,
} as const;

/** Architectures no filter lists (what a kernel could report elsewhere: big-endian ARM, other CPUs). */
export const OTHER_ARCHES: Record<string, number> = {
  aarch64be: 0x800000b7,
  armeb: 0x00000028,
  ppc64le: 0xc0000015,
  riscv64: 0xc00000f3,
  s390x: 0x80000016,
  none: 0,
};

export type Calls = {
  read: number;
  write: number;
  getpid: number;
  clone: number;
  prctl: number;
  setsockopt: number;
  /** Numbers the filter also judges as setsockopt, though Linux answers ENOSYS to them in this ABI. */
  setsockoptAlso?: number[];
  /** Refused whatever their arguments. */
  denied: Record<string, number>;
  socketcall?: number;
};

// io_uring_setup is 425 in every table (the numbers were unified from 403 on).
const IO_URING_SETUP = 425;

export const X86_64: Calls = {
  read: 0,
  write: 1,
  getpid: 39,
  clone: 56,
  prctl: 157,
  setsockopt: 54,
  denied: {
    add_key: 248,
    request_key: 249,
    keyctl: 250,
    memfd_create: 319,
    memfd_secret: 447,
    shmget: 29,
    msgget: 68,
    semget: 64,
    io_uring_setup: IO_URING_SETUP,
  },
};

/** x32: x86_64's numbers with the x32 bit, except the calls with x32 entries of their own (512–547). */
export const X32_CALLS: Calls = {
  read: X32 | 0,
  write: X32 | 1,
  getpid: X32 | 39,
  clone: X32 | 56,
  prctl: X32 | 157,
  setsockopt: X32 | 541,
  // x86_64's own number is for 64-bit callers only ("64" in syscall_64.tbl).
  setsockoptAlso: [X32 | 54],
  denied: Object.fromEntries(Object.entries(X86_64.denied).map(([k, n]) => [k, X32 | n])),
};

export const I386: Calls = {
  read: 3,
  write: 4,
  getpid: 20,
  clone: 120,
  prctl: 172,
  setsockopt: 366,
  socketcall: 102,
  denied: {
    add_key: 286,
    request_key: 287,
    keyctl: 288,
    memfd_create: 356,
    memfd_secret: 447,
    shmget: 395,
    msgget: 399,
    semget: 393,
    ipc: 117,
    io_uring_setup: IO_URING_SETUP,
  },
};

export const AARCH64: Calls = {
  read: 63,
  write: 64,
  getpid: 172,
  clone: 220,
  prctl: 167,
  setsockopt: 208,
  denied: {
    add_key: 217,
    request_key: 218,
    keyctl: 219,
    memfd_create: 279,
    memfd_secret: 447,
    shmget: 194,
    msgget: 186,
    semget: 190,
    io_uring_setup: IO_URING_SETUP,
  },
};

export const ARM: Calls = {
  read: 3,
  write: 4,
  getpid: 20,
  clone: 120,
  prctl: 172,
  setsockopt: 294,
  denied: {
    add_key: 309,
    request_key: 310,
    keyctl: 311,
    memfd_create: 385,
    shmget: 307,
    msgget: 303,
    semget: 299,
    io_uring_setup: IO_URING_SETUP,
  },
};

/** Each host architecture's filter (node's process.arch) and the ABIs a process there can call in. */
export const HOSTS: Record<string, { name: string; arch: number; calls: Calls }[]> = {
  x64: [
    { name: "x86_64", arch: AUDIT_ARCH.x86_64, calls: X86_64 },
    { name: "x32", arch: AUDIT_ARCH.x86_64, calls: X32_CALLS },
    { name: "i386", arch: AUDIT_ARCH.i386, calls: I386 },
  ],
  arm64: [
    { name: "aarch64", arch: AUDIT_ARCH.aarch64, calls: AARCH64 },
    { name: "arm", arch: AUDIT_ARCH.arm, calls: ARM },
  ],
};

export const PR_SET_PDEATHSIG = 1;
export const PR_SET_NAME = 15;
export const SOL_SOCKET = 1;
export const IPPROTO_TCP = 6;
export const SO_KEEPALIVE = 9;
export const SO_LINGER = 13;
/** socketcall(2)'s call numbers (linux/net.h). */
export const SYS = { socket: 1, connect: 3, setsockopt: 14, getsockopt: 15, sendmsg: 16 } as const;
export const SIGKILL = 9;
export const SIGTERM = 15;
export const EPERM = 1;
