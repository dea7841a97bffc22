import type { Registry } from "prom-client";

export type SeriesValues = { metricName?: string; labels: Record<string, string | number>; value: number }[];

/**
 * One histogram's counts: a count per bucket (not cumulative), their sum and count. An observation
 * is a bucket search and an increment; the series in prom-client's exposition format is built only
 * when /metrics is scraped (PlainHistogram, and RequestSeries' latency per op).
 */
export class BucketCounts {
  private readonly counts: Float64Array;
  private sum = 0;
  private count = 0;

  constructor(private readonly buckets: readonly number[]) {
    this.counts = new Float64Array(buckets.length + 1);
  }

  observe(value: number): void {
    let i = 0;
    while (i < this.buckets.length && value > (this.buckets[i] as number)) i++;
    this.counts[i] = (this.counts[i] as number) + 1;
    this.sum += value;
    this.count++;
  }

  reset(): void {
    this.counts.fill(0);
    this.sum = 0;
    this.count = 0;
  }

  /** Appends the `_bucket` (cumulative), `_sum` and `_count` series of `name` with `labels` to `out`. */
  values(name: string, labels: Record<string, string | number>, out: SeriesValues = []): SeriesValues {
    let cumulative = 0;
    for (let i = 0; i <= this.buckets.length; i++) {
      cumulative += this.counts[i] as number;
      const le = i < this.buckets.length ? (this.buckets[i] as number) : "+Inf";
      out.push({ metricName: `${name}_bucket`, labels: { le, ...labels }, value: cumulative });
    }
    out.push({ metricName: `${name}_sum`, labels, value: this.sum });
    out.push({ metricName: `${name}_count`, labels, value: this.count });
    return out;
  }
}

/**
 * An unlabelled histogram in prom-client's exposition format, for a value observed once per audit
 * commit: at one request in flight a commit is a request, and prom-client's `observe` (its label
 * hashing, exemplar check, bucket object) cost ~1 µs a commit for the two audit histograms, on the
 * kernel's thread before the answer. Registered as a custom metric, as RequestSeries.
 */
export class PlainHistogram {
  private readonly counts: BucketCounts;

  constructor(registry: Registry, name: string, help: string, buckets: readonly number[]) {
    const counts = new BucketCounts(buckets);
    this.counts = counts;
    registry.registerMetric({
      name,
      help,
      type: "histogram",
      get: async () => ({ name, help, type: "histogram", values: counts.values(name, {}), aggregator: "sum" }),
      reset: () => counts.reset(),
    } as never);
  }

  observe(value: number): void {
    this.counts.observe(value);
  }
}
