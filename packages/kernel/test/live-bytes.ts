import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

/**
 * The heap and ArrayBuffer memory still in use after full collections (the kernel runs in the
 * test's process). Not the RSS: that is the heap's high-water mark, set by how far garbage piled
 * up before a collection caught it — further on a busy machine, bound or no bound.
 */
export function liveBytes(): number {
  gc();
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}
