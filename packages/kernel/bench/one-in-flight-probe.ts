/**
 * `bench/ab/one-in-flight.ts`'s preload (`--import`) for a bench kernel: per request, the session's
 * socket read, `Pipeline.handle`, the audit append (`store.appendAudit`, the segment write) and the
 * answer's socket `write` (stamped after it returns), each with the process's CPU (getrusage: exact,
 * all threads) and the thread's runnable-but-waiting time (`run_delay` of /proc/thread-self/schedstat,
 * exact when the running thread reads it; its on-CPU field is brought up to date only at scheduler
 * ticks, so it is not used). Also every timer and immediate callback the kernel's modules schedule
 * (the globals wrapped: start, end, name), every index step, every GC. Instruments the classes of
 * the checkout named by $KPIP_P99_DIST (its packages/kernel/dist), so a checkout without this file is
 * measured the same way. JSON to $KPIP_P99_OUT at exit; main thread only (workers inherit --import).
 */
import { closeSync, openSync, readSync, writeFileSync } from "node:fs";
import net from "node:net";
import { PerformanceObserver, performance } from "node:perf_hooks";
import { promisify } from "node:util";
import { setFlagsFromString } from "node:v8";
import { isMainThread } from "node:worker_threads";

/** [read, cpu ns, wait ns, handle, append start, append end, answer written, cpu ns, wait ns] (times: performance.now() ms). */
export type ProbeRecord = [number, number, number, number, number, number, number, number, number];
export interface OneInFlightProbe {
  /** process.hrtime ns = performance.now() ms × 1e6 + offsetNs (both CLOCK_MONOTONIC). */
  offsetNs: number;
  requests: ProbeRecord[];
  /** [start, end, name] of each timer or immediate callback, and of each index step ("X:indexAudit"). */
  timers: [number, number, string][];
  /** [start, duration ms, kind] of each GC (perf_hooks: 1 minor, 2 major, 4 incremental, 8 weak callbacks). */
  gcs: [number, number, number][];
  /** When each commit that carried a signed checkpoint was appended (round twenty-six). */
  checkpoints?: number[];
  /** When the housekeeping tick sent a ready session its heartbeat PING (round twenty-eight). */
  pings?: number[];
}

type Fn = (...a: unknown[]) => unknown;
type Proto = Record<string, Fn>;

/** The tightest of 2,000 bracketed reads of both clocks. */
function calibrate(): number {
  let best = Number.POSITIVE_INFINITY;
  let offset = 0;
  for (let i = 0; i < 2000; i++) {
    const a = process.hrtime.bigint();
    const p = performance.now();
    const b = process.hrtime.bigint();
    if (Number(b - a) < best) {
      best = Number(b - a);
      offset = (Number(a) + Number(b)) / 2 - p * 1e6;
    }
  }
  return offset;
}

async function install(dist: string, out: string): Promise<void> {
  // A V8 flag for this kernel only (an A/B of a flag without a rebuild).
  if (process.env.KPIP_P99_V8) setFlagsFromString(process.env.KPIP_P99_V8);
  const { Pipeline } = (await import(`${dist}/src/pipeline/pipeline.js`)) as { Pipeline: { prototype: Proto } };
  const { Session } = (await import(`${dist}/src/session/session.js`)) as { Session: { prototype: Proto } };
  const { SqliteStore } = (await import(`${dist}/src/store/sqlite.js`)) as { SqliteStore: { prototype: Proto } };
  const fd = openSync("/proc/thread-self/schedstat", "r");
  const buf = Buffer.alloc(128);
  const sched = (): [number, number] => {
    const s = buf.toString("latin1", 0, readSync(fd, buf, 0, 128, 0));
    const a = s.indexOf(" ");
    const u = process.cpuUsage();
    return [(u.user + u.system) * 1000, Number(s.slice(a + 1, s.indexOf(" ", a + 1)))];
  };
  const result: OneInFlightProbe = { offsetNs: calibrate(), requests: [], timers: [], gcs: [], checkpoints: [], pings: [] };
  // A read is kept on its session until its request reaches the pipeline (an idle connection's ping is no request).
  const reads = new WeakMap<object, ProbeRecord>();
  let handled: ProbeRecord | undefined;
  let answered: ProbeRecord | undefined;
  const wrap = (proto: Proto, name: string, around: (self: object, args: unknown[], call: () => unknown) => unknown) => {
    const orig = proto[name] as Fn;
    proto[name] = function (this: object, ...args: unknown[]) {
      return around(this, args, () => orig.apply(this, args));
    };
  };
  wrap(Session.prototype, "onData", (self, _args, call) => {
    const [c, w] = sched();
    reads.set(self, [performance.now(), c, w, 0, 0, 0, 0, 0, 0]);
    return call();
  });
  wrap(Session.prototype, "tick", (self, _args, call) => {
    if ((self as { state?: string }).state === "ready") result.pings?.push(performance.now());
    return call();
  });
  wrap(Pipeline.prototype, "handle", (_self, args, call) => {
    const r = reads.get(args[0] as object);
    if (r) {
      reads.delete(args[0] as object);
      r[3] = performance.now();
      handled = r;
    }
    return call();
  });
  wrap(SqliteStore.prototype, "appendAudit", (_self, args, call) => {
    const t0 = performance.now();
    if ((args[3] as unknown[] | undefined)?.length) result.checkpoints?.push(t0);
    try {
      return call();
    } finally {
      if (handled) {
        handled[4] = t0;
        handled[5] = performance.now();
      }
    }
  });
  wrap(SqliteStore.prototype, "indexAudit", (_self, _args, call) => {
    const t0 = performance.now();
    try {
      return call();
    } finally {
      result.timers.push([t0, performance.now(), "X:indexAudit"]);
    }
  });
  wrap(Session.prototype, "answered", (_self, _args, call) => {
    if (handled) {
      answered = handled;
      handled = undefined;
    }
    return call();
  });
  wrap(net.Socket.prototype as unknown as Proto, "write", (_self, _args, call) => {
    const r = answered;
    answered = undefined;
    const x = call();
    if (r) {
      r[6] = performance.now();
      [r[7], r[8]] = sched();
      result.requests.push(r);
    }
    return x;
  });
  const timed = <T extends Fn>(orig: T, kind: string) => {
    const wrapped = (fn: unknown, ...rest: unknown[]) => {
      if (typeof fn !== "function") return orig(fn, ...rest);
      const name = `${kind}:${fn.name || String(fn).replace(/\s+/g, " ").slice(0, 60)}`;
      return orig(
        function (this: unknown, ...b: unknown[]) {
          const t0 = performance.now();
          try {
            return fn.apply(this, b);
          } finally {
            result.timers.push([t0, performance.now(), name]);
          }
        },
        ...rest,
      );
    };
    // util.promisify(setTimeout) and the like keep working.
    Object.defineProperty(wrapped, promisify.custom, { value: (orig as unknown as Record<symbol, unknown>)[promisify.custom] });
    return wrapped;
  };
  const g = globalThis as unknown as Record<string, Fn>;
  for (const [name, kind] of [
    ["setTimeout", "T"],
    ["setInterval", "I"],
    ["setImmediate", "M"],
  ] as const)
    g[name] = timed(g[name] as Fn, kind);
  new PerformanceObserver((l) => {
    for (const e of l.getEntries())
      result.gcs.push([e.startTime, e.duration, (e as { detail?: { kind?: number } }).detail?.kind ?? 0]);
  }).observe({ entryTypes: ["gc"] });
  process.once("exit", () => {
    writeFileSync(out, JSON.stringify(result));
    closeSync(fd);
  });
}

const dist = process.env.KPIP_P99_DIST;
const out = process.env.KPIP_P99_OUT;
if (isMainThread && dist && out) await install(dist, out);
