/**
 * The kernel's side of a load run's latency: what the kernel itself saw, to set beside what the
 * generators measured (the difference is the sockets, the client library and the generators'
 * loops). Two sources: the kernel's Prometheus series over the run (request duration from
 * arrival to response, by bucket; its GC pauses by kind; its event-loop delay), and, after it
 * stopped, every load request's audit record (`durationUs`: arrival to the record's creation,
 * exact, but without the wait for the commit).
 */
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { openAuditReader } from "../src/audit/reader.js";
import { HOME_FILES } from "../src/home.js";
import type { ProbeOutput, ProbeRequest } from "./load-probe.js";
import { pct } from "./proc.js";

/** A loopback port free now, for the kernel's --metrics-listen. */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const a = srv.address();
  await new Promise((r) => srv.close(r));
  if (typeof a !== "object" || !a) throw new Error("no port");
  return a.port;
}

/** A scrape of /metrics: each sample's value by its name and labels as written. */
export type Scrape = Map<string, number>;

export async function scrape(url: string): Promise<Scrape> {
  const text = await (await fetch(url)).text();
  const out: Scrape = new Map();
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || !line) continue;
    const at = line.lastIndexOf(" ");
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

/** A histogram's cumulative bucket counts (by upper bound, ascending) over the samples matching `where`, end minus start. */
function buckets(start: Scrape, end: Scrape, name: string, where: (labels: string) => boolean): [number, number][] {
  const byLe = new Map<number, number>();
  const re = new RegExp(`^${name}_bucket\\{(.*)\\}$`);
  for (const [k, v] of end) {
    const m = re.exec(k);
    if (!m || !where(m[1] as string)) continue;
    const le = /le="([^"]+)"/.exec(m[1] as string)?.[1] as string;
    const bound = le === "+Inf" ? Number.POSITIVE_INFINITY : Number(le);
    byLe.set(bound, (byLe.get(bound) ?? 0) + v - (start.get(k) ?? 0));
  }
  return [...byLe].sort((a, b) => a[0] - b[0]);
}

/** The p-quantile of a bucketed histogram, linear within its bucket (an estimate, as Prometheus makes it). */
function quantile(b: [number, number][], p: number): number {
  const total = b.at(-1)?.[1] ?? 0;
  const want = p * total;
  let lo = 0;
  let below = 0;
  for (const [le, n] of b) {
    if (n >= want && n > below) return le === Number.POSITIVE_INFINITY ? lo : lo + ((le - lo) * (want - below)) / (n - below);
    lo = le;
    below = n;
  }
  return lo;
}

/** Share of a bucketed histogram's samples above `bound` (a bucket bound). */
function over(b: [number, number][], bound: number): number {
  const total = b.at(-1)?.[1] ?? 0;
  const at = b.find(([le]) => le === bound)?.[1] ?? total;
  return total ? (total - at) / total : 0;
}

/** What the kernel's series say of the run between two scrapes. */
export function kernelSeries(start: Scrape, end: Scrape) {
  const req = buckets(start, end, "kpip_request_duration_seconds", (l) => !l.includes('op="-"'));
  const sum = (name: string, kind: string) =>
    (end.get(`${name}{kind="${kind}"}`) ?? 0) - (start.get(`${name}{kind="${kind}"}`) ?? 0);
  const gc: Record<string, { count: number; totalMs: number; over10ms: number }> = {};
  for (const kind of ["major", "minor", "incremental", "weakcb"]) {
    const b = buckets(start, end, "kpip_process_nodejs_gc_duration_seconds", (l) => l.includes(`kind="${kind}"`));
    const count = b.at(-1)?.[1] ?? 0;
    if (count === 0) continue;
    gc[kind] = {
      count,
      totalMs: Math.round(sum("kpip_process_nodejs_gc_duration_seconds_sum", kind) * 1000),
      over10ms: Math.round(over(b, 0.01) * count),
    };
  }
  // The series' samples are whole timer intervals: less the 10 ms interval, what is left is the delay.
  const commits = buckets(start, end, "kpip_audit_commit_seconds", () => true);
  const ms = (k: string) => +Math.max(0, (end.get(k) ?? 0) * 1000 - 10).toFixed(2);
  return {
    requests: req.at(-1)?.[1] ?? 0,
    // Arrival to response, including the commit wait; estimated within the series' buckets (…1, 3, 10, 30 ms).
    p50_us: Math.round(quantile(req, 0.5) * 1e6),
    p99_us: Math.round(quantile(req, 0.99) * 1e6),
    p999_us: Math.round(quantile(req, 0.999) * 1e6),
    over3msShare: +over(req, 0.003).toFixed(5),
    over10msShare: +over(req, 0.01).toFixed(5),
    // The audit commits (one transaction a batch) the answers waited for.
    auditCommits: {
      count: commits.at(-1)?.[1] ?? 0,
      over3ms: Math.round(over(commits, 0.003) * (commits.at(-1)?.[1] ?? 0)),
      over10ms: Math.round(over(commits, 0.01) * (commits.at(-1)?.[1] ?? 0)),
    },
    // PASSIVE checkpoints the kernel ran on its own thread because the WAL outgrew the worker's (store/checkpointer.ts).
    walTopUps: {
      count: (end.get("kpip_wal_topups_total") ?? 0) - (start.get("kpip_wal_topups_total") ?? 0),
      totalMs: Math.round(
        ((end.get("kpip_wal_topup_seconds_total") ?? 0) - (start.get("kpip_wal_topup_seconds_total") ?? 0)) * 1000,
      ),
    },
    gc,
    // prom-client resets its loop-delay histogram at each scrape, so these cover the run (sampled every 10 ms).
    loopDelayMs: {
      p50: ms("kpip_process_nodejs_eventloop_lag_p50_seconds"),
      p99: ms("kpip_process_nodejs_eventloop_lag_p99_seconds"),
      max: ms("kpip_process_nodejs_eventloop_lag_max_seconds"),
    },
  };
}

/**
 * The exact `durationUs` percentiles of the load personas' request records from `fromSeq` on, read
 * after the kernel stopped: over all of them and by op (which op's time in the kernel makes the tail).
 */
export function auditDurations(home: string, fromSeq: number, personaPrefix: string) {
  const reader = openAuditReader(join(home, HOME_FILES.database));
  const d: number[] = [];
  const byOp = new Map<string, number[]>();
  try {
    for (const r of reader.records({ from: fromSeq })) {
      if ((r.phase === "complete" || r.phase === "outcome") && r.durationUs !== null && r.persona.startsWith(personaPrefix)) {
        d.push(r.durationUs);
        const op = r.op ?? "-";
        const a = byOp.get(op) ?? [];
        if (a.length === 0) byOp.set(op, a);
        a.push(r.durationUs);
      }
    }
  } finally {
    reader.close();
  }
  const stats = (a: number[]) => {
    a.sort((x, y) => x - y);
    return { records: a.length, p50_us: pct(a, 0.5), p99_us: pct(a, 0.99), p999_us: pct(a, 0.999), max_us: a.at(-1) ?? 0 };
  };
  return { ...stats(d), byOp: Object.fromEntries([...byOp].map(([op, a]) => [op, stats(a)])) };
}

/**
 * The `--kernel-probe` file (bench/load-probe.ts), summed up: every request from `loadStart` (epoch
 * ms) on, its arrival-to-answer time in the kernel and the part of it that was the kernel's own
 * (less the time its thread waited for a CPU), over the whole run and over the first
 * `firstSeconds` from its first request (the connect storm and the warm-up) apart from the rest.
 */
export function loadProbeSummary(file: string, loadStart: number, firstSeconds = 5) {
  const d = JSON.parse(readFileSync(file, "utf8")) as ProbeOutput;
  const from = loadStart - d.timeOrigin;
  const reqs = d.requests.filter((r) => r[0] >= from);
  const stats = (rs: ProbeRequest[]) => {
    const ms = (a: number[], p: number) => +(pct(a, p) / 1000).toFixed(2);
    const sorted = (f: (r: ProbeRequest) => number) => rs.map(f).sort((x, y) => x - y);
    const wall = sorted((r) => r[1]);
    const own = sorted((r) => r[1] - r[3]);
    const asleep = sorted((r) => Math.max(0, r[1] - r[2] - r[3]));
    return {
      requests: rs.length,
      wallMs: { p50: ms(wall, 0.5), p99: ms(wall, 0.99), p999: ms(wall, 0.999), max: ms(wall, 1) },
      ownMs: { p50: ms(own, 0.5), p99: ms(own, 0.99), p999: ms(own, 0.999), max: ms(own, 1) },
      asleepMs: { p99: ms(asleep, 0.99), p999: ms(asleep, 0.999), max: ms(asleep, 1) },
      ownOver10ms: own.filter((x) => x > 10_000).length,
      ownOver20ms: own.filter((x) => x > 20_000).length,
    };
  };
  // From the first load request on: on a busy machine the connect storm alone can outlast the window.
  const cut = (reqs[0]?.[0] ?? from) + firstSeconds * 1000;
  const gcs = d.gcs.filter((g) => g[0] >= from);
  const minor = gcs.filter((g) => g[2] === 1).map((g) => g[1]);
  minor.sort((x, y) => x - y);
  return {
    all: stats(reqs),
    first: { seconds: firstSeconds, ...stats(reqs.filter((r) => r[0] < cut)) },
    rest: stats(reqs.filter((r) => r[0] >= cut)),
    gc: {
      minor: minor.length,
      minorP99Ms: +pct(minor, 0.99).toFixed(2),
      minorMaxMs: +(minor.at(-1) ?? 0).toFixed(2),
      other: gcs.filter((g) => g[2] !== 1).length,
      otherMaxMs: +Math.max(0, ...gcs.filter((g) => g[2] !== 1).map((g) => g[1])).toFixed(2),
    },
  };
}
