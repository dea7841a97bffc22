/**
 * `@kpip/protocol/testing`: the waits and predicates every package's tests share (one
 * definition, re-exported by each test harness). Not used by any runtime code.
 */
import { KpipError } from "./errors.js";

/** Polls until `f` returns a truthy value (or throws after `ms`: generous, since it ends as soon as `f` holds and machines get busy). */
export async function until<T>(f: () => T | Promise<T>, ms = 30_000, what = "condition"): Promise<NonNullable<T>> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v as NonNullable<T>;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** An `assert.rejects` predicate: a {@link KpipError} of class `cls` (whose message contains `text`, or matches it). */
export const klass =
  (cls: string, text?: string | RegExp) =>
  (e: unknown): boolean =>
    e instanceof KpipError &&
    e.errorClass === cls &&
    (text === undefined || (typeof text === "string" ? e.message.includes(text) : text.test(e.message)));
