import { readFileSync } from "node:fs";

/** A process's resident set in MB (Linux /proc), 0 once it is gone. */
export function rssMb(pid: number | undefined): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

/** The p-th quantile (0..1) of `sorted` (ascending), nearest rank below; 0 for none. */
export function pct(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0;
}

/**
 * The environment a kernel (or a baseline server) is started with: glibc's malloc keeps up to
 * 128 MiB of freed heap instead of returning it to the OS at once. Every socket read gets a new
 * 64 KiB buffer; a 64 MiB inline body was ~1,000 of them, freed by the garbage collector in
 * batches that glibc handed back to the OS, so the next body's reads faulted its pages in anew
 * (~11,000 page faults, ~190 ms of the kernel's CPU per 64 MiB write on this VM). README
 * ("Transports") tells operators to start the kernel so.
 */
export function serverEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const tunables = env.GLIBC_TUNABLES;
  if (tunables?.includes("glibc.malloc.trim_threshold=")) return env;
  return { ...env, GLIBC_TUNABLES: `${tunables ? `${tunables}:` : ""}${KERNEL_TRIM_TUNABLE}` };
}

/** The glibc tunable {@link serverEnv} adds. */
export const KERNEL_TRIM_TUNABLE = "glibc.malloc.trim_threshold=134217728";
