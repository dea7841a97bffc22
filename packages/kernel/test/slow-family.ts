/** A primitive family of slow handlers for lifecycle tests: each reports what it did, so tests wait on that, not on sleeps. */
import type { PrimitiveFamily } from "../src/index.js";
import { sleep } from "./wire.js";

/** What the slow family's handlers report, so tests wait on events instead of guessing with sleeps. */
export interface Seen {
  started: number;
  aborted: number;
  finished: number;
  /** slow.stuck handlers that returned (after the kernel may have stopped). */
  stuckReturned: number;
}
export const seenNothing = (): Seen => ({ started: 0, aborted: 0, finished: 0, stuckReturned: 0 });

/**
 * slow.wait: 200 ms, reports whether its signal fired; slow.until_abort; slow.stuck: ignores its
 * signal for `stuck` ms, or until the test settles `stuck` (a test asserting an order waits on that,
 * never on a duration a busy machine may outlast).
 */
export function slowFamily(seen: Seen, stuck: number | Promise<unknown> = 5000): PrimitiveFamily {
  return {
    name: "slow",
    ops: [
      {
        op: "slow.wait",
        description: "waits 200 ms",
        targets: ["kernel"],
        args: {},
        idempotent: true,
        effects: false,
        handler: async (ctx) => {
          seen.started++;
          await sleep(200);
          seen.finished++;
          return { status: "SUCCESS", payload: { aborted: ctx.signal.aborted } };
        },
      },
      {
        op: "slow.until_abort",
        description: "waits until its signal fires",
        targets: ["kernel"],
        args: {},
        idempotent: true,
        effects: false,
        handler: (ctx) =>
          new Promise((resolve) => {
            seen.started++;
            ctx.signal.addEventListener("abort", () => {
              seen.aborted++;
              resolve({ status: "SUCCESS", payload: { aborted: true } });
            });
          }),
      },
      {
        op: "slow.stuck",
        description: "ignores its signal",
        targets: ["kernel"],
        args: {},
        idempotent: true,
        effects: false,
        handler: async () => {
          seen.started++;
          await (typeof stuck === "number" ? sleep(stuck) : stuck);
          seen.stuckReturned++;
          return { status: "SUCCESS" };
        },
      },
    ],
  };
}
