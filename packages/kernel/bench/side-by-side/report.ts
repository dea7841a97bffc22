/** The bench's output: measurements as they are taken (JSON Lines or progress), then the table and the targets. */

export interface Measurement {
  name: string;
  unit: string;
  value: number;
  baseline?: string;
  ratio?: number;
}

/** A target as a check on one figure: its value, or its ratio to its baseline. */
type Target = [what: string, name: string, of: "value" | "ratio", cmp: "<=" | ">=", bound: number];

/** Issues #8, #17 and #22's targets. */
const TARGETS: Target[] = [
  ["kpip.uds p50 ≤ 1.5× raw", "kpip.uds.p50_us", "ratio", "<=", 1.5],
  ["kpip.uds p99 ≤ 2× raw", "kpip.uds.p99_us", "ratio", "<=", 2],
  ["kpip.uds 256 in flight ≥ 150,000 req/s", "kpip.uds.rps_256", "value", ">=", 150_000],
  ["kpip.uds 256 in flight ≥ 30× grpc", "kpip.uds.rps_256", "ratio", ">=", 30],
  ["kpip.grpc ≥ 1.5× grpc baseline", "kpip.grpc.rps_256", "ratio", ">=", 1.5],
  ["64 MiB shm ≥ 2× inline", "kpip.bulk64m.shm_gbps", "ratio", ">=", 2],
  ["64 MiB shm ≥ 4 GB/s", "kpip.bulk64m.shm_gbps", "value", ">=", 4],
  ["64 MiB storage.write inline ≥ 1 GB/s", "kpip.store64m.uds_gbps", "value", ">=", 1],
  ["64 MiB storage.write via shm ≥ 2 GB/s", "kpip.store64m.shm_gbps", "value", ">=", 2],
  ["1 GiB object ≥ 1 GB/s", "kpip.bulk1g.gbps", "value", ">=", 1],
  ["1 GiB object: kernel RSS ≤ 200 MB", "kpip.bulk1g.rss_mb", "value", "<=", 200],
  ["setup p50 ≤ 2 ms", "kpip.setup.p50_ms", "value", "<=", 2],
  ["kpip call ≤ 1.5× node start-up", "kpip.cli.call_ms", "ratio", "<=", 1.5],
  ["1,000 idle sessions ≤ 200 MB", "kpip.idle1000.rss_mb", "value", "<=", 200],
  ["10,000 idle sessions ≤ 400 MB (#22)", "kpip.idle10000.rss_mb", "value", "<=", 400],
  ["generator, 256 in flight ≥ 100,000 req/s with full audit (#22)", "kpip.uds.gen.rps_256", "value", ">=", 100_000],
  ["kernel CPU ≤ 10 µs per audited request (#22)", "kpip.kernel.cpu_us_per_req", "value", "<=", 10],
  ["client CPU ≤ 8 µs per request (#22)", "kpip.client.cpu_us_per_req", "value", "<=", 8],
  ["audit verify ≥ 300,000 records/s", "kpip.audit.verify_rps", "value", ">=", 300_000],
];

export class Report {
  readonly results = new Map<string, Measurement>();
  private step = 0;

  constructor(
    private readonly json: boolean,
    private readonly steps: number,
  ) {}

  /** Records a measurement (with its ratio to `baseline`, if that was measured); JSON Lines print it now. */
  put(name: string, unit: string, value: number, baseline?: string): void {
    const m: Measurement = { name, unit, value: Math.round(value * 1000) / 1000 };
    const b = baseline ? this.results.get(baseline) : undefined;
    if (baseline && b && b.value > 0) {
      m.baseline = baseline;
      m.ratio = Math.round((value / b.value) * 1000) / 1000;
    }
    this.results.set(name, m);
    if (this.json) process.stdout.write(`${JSON.stringify(m)}\n`);
  }

  /** A progress line on stderr (not with --json). */
  progress(what: string): void {
    this.step++;
    if (!this.json) process.stderr.write(`\r\x1b[K[${this.step}/${this.steps}] ${what}…`);
  }

  /** Each target: met, missed, or undefined when this run did not measure it. */
  targets(): [string, boolean | undefined][] {
    const out: [string, boolean | undefined][] = TARGETS.map(([what, name, of, cmp, bound]) => {
      const x = this.results.get(name)?.[of];
      return [what, x === undefined ? undefined : cmp === "<=" ? x <= bound : x >= bound];
    });
    const auditKey = [...this.results.keys()].find((k) => /^kpip\.audit\d+[km]\.p50_us$/.test(k));
    const ratio = auditKey ? this.results.get(auditKey)?.ratio : undefined;
    out.push([`p50 at ${auditKey?.slice(10, -7) ?? "?"} records within 10%`, ratio === undefined ? undefined : ratio <= 1.1]);
    return out;
  }

  /** The table of every measurement with its ratio, then the targets (not with --json). */
  print(quick: boolean): void {
    if (this.json) return;
    process.stderr.write("\r\x1b[K");
    const fmt = (x: number) => (x >= 1000 ? Math.round(x).toLocaleString("en-US") : String(Math.round(x * 100) / 100));
    console.log(`kpip bench${quick ? " --quick" : ""} — ${new Date().toISOString()}\n`);
    console.log(`${"measurement".padEnd(30)} ${"value".padStart(14)}  unit       ${"× baseline".padStart(10)}  baseline`);
    for (const m of this.results.values()) {
      console.log(
        `${m.name.padEnd(30)} ${fmt(m.value).padStart(14)}  ${m.unit.padEnd(10)} ${(m.ratio === undefined ? "" : `${m.ratio}×`).padStart(10)}  ${m.baseline ?? ""}`,
      );
    }
    console.log("\ntargets (issues #8, #17, #22):");
    for (const [what, ok] of this.targets()) console.log(`  ${ok === undefined ? "n/a " : ok ? "met " : "MISS"}  ${what}`);
  }
}
