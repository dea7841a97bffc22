import type { Registry } from "prom-client";

/**
 * An unlabelled histogram in prom-client's exposition format, for a value observed once per audit
 * commit: at one request in flight a commit is a request, and prom-client's `observe` (its label
 * hashing, exemplar check, bucket object) cost ~1 µs a commit for the two audit histograms, on the
 * kernel's thread before the answer. Here an observation is a bucket search and an increment; the
 * series is built only when /metrics is scraped (registered as a custom metric, as RequestSeries).
 */
export class PlainHistogram {
  private readonly counts: Float64Array;
  private sum = 0;
  private count = 0;

  constructor(
    registry: Registry,
    private readonly name: string,
    help: string,
    private readonly buckets: readonly number[],
  ) {
    this.counts = new Float64Array(buckets.length + 1);
    registry.registerMetric({
      name,
      help,
      type: "histogram",
      get: async () => ({ name, help, type: "histogram", values: this.values(), aggregator: "sum" }),
      reset: () => {
        this.counts.fill(0);
        this.sum = 0;
        this.count = 0;
      },
    } as never);
  }

  observe(value: number): void {
    let i = 0;
    while (i < this.buckets.length && value > (this.buckets[i] as number)) i++;
    this.counts[i] = (this.counts[i] as number) + 1;
    this.sum += value;
    this.count++;
  }

  private values(): { metricName: string; labels: Record<string, string | number>; value: number }[] {
    const out = [];
    let cumulative = 0;
    for (let i = 0; i <= this.buckets.length; i++) {
      cumulative += this.counts[i] as number;
      out.push({
        metricName: `${this.name}_bucket`,
        labels: { le: i < this.buckets.length ? (this.buckets[i] as number) : "+Inf" },
        value: cumulative,
      });
    }
    out.push({ metricName: `${this.name}_sum`, labels: {}, value: this.sum });
    out.push({ metricName: `${this.name}_count`, labels: {}, value: this.count });
    return out;
  }
}
