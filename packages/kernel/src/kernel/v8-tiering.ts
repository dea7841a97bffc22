import { setFlagsFromString } from "node:v8";

/**
 * V8's interrupt budget for the kernel's process (bytes of bytecode a function runs between its
 * tiering checks; V8's default in Node 20 is 66 KiB: `node --v8-options` says 67584). A request's path is many small functions each
 * run once a request, so with the default they reach optimized code only after a few thousand
 * requests: at one request in flight, 1 in 10 or more of the requests 1,000–2,000 after a start
 * spent over 200 µs on the kernel's thread (interpreted and baseline code), against ~1 in 200 later,
 * which put the first seconds' share into the p99 (BENCHMARKS.md, round twenty-four). Half of
 * it has the path checked, and optimized, about twice as soon; the checks cost only while the
 * code is not yet optimized.
 */
export const KERNEL_INTERRUPT_BUDGET = 32 * 1024;

/** The V8 flag {@link tuneTiering} sets, or none when the process was started with its own `--interrupt-budget`. */
export function tieringFlag(execArgv: readonly string[], nodeOptions: string): string | undefined {
  // The flag itself, not its longer cousins (--interrupt-budget-for-feedback-allocation, …).
  if ([...execArgv, nodeOptions].some((a) => /--interrupt[-_]budget(?![-_\w])/.test(a))) return undefined;
  return `--interrupt-budget=${KERNEL_INTERRUPT_BUDGET}`;
}

let tuned = false;

/**
 * Sets {@link tieringFlag} once per process, before the kernel's first request (an operator's own
 * `--interrupt-budget` stands). Process-wide: an embedder's kernel shares its process's V8.
 */
export function tuneTiering(): void {
  if (tuned) return;
  tuned = true;
  const flag = tieringFlag(process.execArgv, process.env.NODE_OPTIONS ?? "");
  if (flag) setFlagsFromString(flag);
}
