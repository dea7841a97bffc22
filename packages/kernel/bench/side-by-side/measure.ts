/** How `npm run bench` measures: latency percentiles, throughput at a window, CPU per request. */
import { readFileSync } from "node:fs";
import net from "node:net";
import hdr from "hdr-histogram-js";

export type Call = () => Promise<unknown>;

export async function latency(call: Call, n: number): Promise<{ p50: number; p99: number; p999: number }> {
  for (let i = 0; i < Math.min(1000, n / 5); i++) await call();
  const h = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 });
  for (let i = 0; i < n; i++) {
    const t = process.hrtime.bigint();
    await call();
    h.recordValue(Math.max(1, Number(process.hrtime.bigint() - t) / 1000));
  }
  const r = { p50: h.getValueAtPercentile(50), p99: h.getValueAtPercentile(99), p999: h.getValueAtPercentile(99.9) };
  h.destroy();
  return r;
}

/** Requests per second with `window` calls in flight on each connection, for `seconds`. */
export async function throughput(calls: Call[], window: number, seconds: number): Promise<number> {
  let done = 0;
  let stop = false;
  const warm = Date.now() + 200;
  let counting = false;
  let started = 0n;
  const worker = async (call: Call) => {
    while (!stop) {
      await call();
      if (counting) done++;
      else if (Date.now() >= warm) {
        counting = true;
        started = process.hrtime.bigint();
      }
    }
  };
  const all = calls.flatMap((c) => Array.from({ length: window }, () => worker(c)));
  await new Promise((r) => setTimeout(r, 200 + seconds * 1000));
  stop = true;
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  await Promise.all(all);
  return done / secs;
}

/** Baseline A's client: length-prefixed frames, corked batched writes, one waiter per frame. */
export class RawConn {
  private readonly waiting: (() => void)[] = [];
  private buf = Buffer.alloc(0);
  private corked = false;
  private constructor(private readonly sock: net.Socket) {
    sock.on("data", (d) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      let off = 0;
      while (this.buf.length - off >= 4) {
        const len = this.buf.readUInt32BE(off);
        if (this.buf.length - off < 4 + len) break;
        off += 4 + len;
        this.waiting.shift()?.();
      }
      this.buf = this.buf.subarray(off);
    });
  }
  static open(path: string): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = net.connect(path);
      s.setNoDelay(true);
      s.once("connect", () => resolve(new RawConn(s)));
      s.once("error", reject);
    });
  }
  /** Frames sent on this connection. */
  sent = 0;
  call(frame: Buffer): Promise<void> {
    this.sent++;
    if (!this.corked) {
      this.corked = true;
      this.sock.cork();
      process.nextTick(() => {
        this.corked = false;
        this.sock.uncork();
      });
    }
    this.sock.write(frame);
    return new Promise((r) => this.waiting.push(r));
  }
  close(): void {
    this.sock.destroy();
  }
}

/** Clock ticks per second of /proc/<pid>/stat's utime and stime (USER_HZ: 100 on Linux). */
const USER_HZ = 100;

/** CPU time (user + system) a process has used so far, in microseconds, from /proc. */
export function processCpuUs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // The command name (field 2) may hold spaces and parentheses: count fields after its last ")".
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1e6) / USER_HZ;
}

/** Runs `work` and reports the CPU a process (by pid, or this one) spent per unit of what it returns. */
export async function cpuPerUnit(
  pid: number | "self",
  work: () => Promise<number>,
): Promise<{ units: number; usPerUnit: number }> {
  const cpu = () => (pid === "self" ? (({ user, system }) => user + system)(process.cpuUsage()) : processCpuUs(pid));
  const before = cpu();
  const units = await work();
  return { units, usPerUnit: units > 0 ? (cpu() - before) / units : 0 };
}
