/**
 * `npm run load -- --kernel-probe`: a preload (`--import`) for the kernel process that times every
 * request from its arrival (Pipeline.handle) to its answer exactly, and splits that time by what the
 * kernel's thread did meanwhile, from /proc/thread-self/schedstat read at both ends: on a CPU, waiting
 * for one (runnable, not running: the machine's contention, not the kernel's), or asleep (blocked in
 * a syscall such as an fsync, or waiting for V8's GC helper threads). "Own" time is the arrival to
 * the answer less the wait for a CPU: the part of the latency a busy machine does not explain. Also
 * every GC (perf_hooks). Written as JSON to $KPIP_LOAD_PROBE_OUT when the kernel exits; load.ts
 * reads it (loadProbeSummary). Costs two `pread`s of a /proc file a request (a few µs).
 */
import { closeSync, openSync, readSync, writeFileSync } from "node:fs";
import { PerformanceObserver, performance } from "node:perf_hooks";
import { Pipeline } from "../src/pipeline/pipeline.js";

/** One request: arrival (ms since the kernel's start), wall, on-CPU and runnable-waiting µs. */
export type ProbeRequest = [number, number, number, number];
export interface ProbeOutput {
  /** performance.timeOrigin of the kernel process (epoch ms): where the times above count from. */
  timeOrigin: number;
  requests: ProbeRequest[];
  /** Each GC: start (ms), duration (ms), kind (perf_hooks: 1 minor, 2 major, 4 incremental, 8 weak callbacks). */
  gcs: [number, number, number][];
}

const out = process.env.KPIP_LOAD_PROBE_OUT;
if (out) {
  const fd = openSync("/proc/thread-self/schedstat", "r");
  const buf = Buffer.alloc(128);
  const sched = (): [number, number] => {
    const s = buf.toString("latin1", 0, readSync(fd, buf, 0, 128, 0));
    const a = s.indexOf(" ");
    return [Number(s.slice(0, a)), Number(s.slice(a + 1, s.indexOf(" ", a + 1)))];
  };
  const requests: ProbeRequest[] = [];
  const gcs: ProbeOutput["gcs"] = [];
  const handle = Pipeline.prototype.handle;
  Pipeline.prototype.handle = function (this: Pipeline, ...args: Parameters<Pipeline["handle"]>) {
    const t0 = performance.now();
    const [c0, w0] = sched();
    const p = handle.apply(this, args);
    p.then(
      () => {
        const t1 = performance.now();
        const [c1, w1] = sched();
        requests.push([t0, (t1 - t0) * 1000, (c1 - c0) / 1000, (w1 - w0) / 1000]);
      },
      () => {},
    );
    return p;
  };
  new PerformanceObserver((l) => {
    for (const e of l.getEntries()) gcs.push([e.startTime, e.duration, (e as { detail?: { kind?: number } }).detail?.kind ?? 0]);
  }).observe({ entryTypes: ["gc"] });
  process.once("exit", () => {
    writeFileSync(out, JSON.stringify({ timeOrigin: performance.timeOrigin, requests, gcs } satisfies ProbeOutput));
    closeSync(fd);
  });
}
