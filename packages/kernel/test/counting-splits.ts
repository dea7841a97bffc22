/**
 * Counts `split` calls on strings that start with `prefix` while `f` runs (the kernel runs in the
 * test's process): how often a capability check cut a target, measured without a clock.
 */
export async function countingSplits<T>(prefix: string, f: () => Promise<T>): Promise<{ value: T; splits: number }> {
  const proto = String.prototype as unknown as { split: (this: string, ...a: unknown[]) => string[] };
  const split = proto.split;
  let splits = 0;
  proto.split = function (this: string, ...a: unknown[]) {
    if (this.startsWith(prefix)) splits++;
    return split.apply(this, a);
  };
  try {
    return { value: await f(), splits };
  } finally {
    proto.split = split;
  }
}
