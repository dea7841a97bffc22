import type { Registry } from "prom-client";
import { BucketCounts } from "./plain-histogram.js";

interface Series {
  name: string;
  help: string;
  type: "counter" | "histogram";
  values: { metricName?: string; labels: Record<string, string | number>; value: number }[];
  aggregator: "sum";
}

/**
 * The two series every answered request updates: `kpip_requests_total{op,status,error_class}`
 * and `kpip_request_duration_seconds{op}`. prom-client's labelled `inc`/`observe` hash their
 * label object on every call (~2 % of the kernel's time at 256 requests in flight); here an
 * answer is a few Map lookups on interned strings and an array increment, and the exposition is
 * built only when /metrics is scraped, in prom-client's own format (they are registered as
 * custom metrics of the same registry). Labels are bounded: `op` is a catalogue op, "unknown"
 * or "-"; status and error class are protocol constants.
 */
export class RequestSeries {
  private readonly outcomes = new Map<string, Map<string, Map<string, { n: number }>>>();
  private readonly latencies = new Map<string, BucketCounts>();

  constructor(
    registry: Registry,
    private readonly buckets: readonly number[],
  ) {
    // The registry reads a metric through get() and reset() only; its declared parameter is
    // prom-client's whole Metric class (labels(), remove(), …), which a custom series does not
    // have: hence the two `as never`.
    registry.registerMetric(
      this.metric("kpip_requests_total", "Requests answered, by op, status and error class", "counter", () =>
        this.counterValues(),
      ) as never,
    );
    registry.registerMetric(
      this.metric("kpip_request_duration_seconds", "Time from a request's arrival to its response, by op", "histogram", () =>
        this.histogramValues(),
      ) as never,
    );
  }

  /** One answered request. */
  answered(op: string, status: string, errorClass: string | undefined, seconds: number): void {
    let byStatus = this.outcomes.get(op);
    if (!byStatus) {
      byStatus = new Map();
      this.outcomes.set(op, byStatus);
    }
    let byClass = byStatus.get(status);
    if (!byClass) {
      byClass = new Map();
      byStatus.set(status, byClass);
    }
    const cls = errorClass ?? "";
    const cell = byClass.get(cls);
    if (cell) cell.n++;
    else byClass.set(cls, { n: 1 });
    let l = this.latencies.get(op);
    if (!l) {
      l = new BucketCounts(this.buckets);
      this.latencies.set(op, l);
    }
    l.observe(seconds);
  }

  private metric(name: string, help: string, type: Series["type"], values: () => Series["values"]) {
    return {
      name,
      help,
      type,
      get: async (): Promise<Series> => ({ name, help, type, values: values(), aggregator: "sum" }),
      reset: () => {
        if (type === "counter") this.outcomes.clear();
        else this.latencies.clear();
      },
    };
  }

  private counterValues(): Series["values"] {
    const out: Series["values"] = [];
    for (const [op, byStatus] of this.outcomes)
      for (const [status, byClass] of byStatus)
        for (const [cls, cell] of byClass) out.push({ labels: { op, status, error_class: cls }, value: cell.n });
    return out;
  }

  private histogramValues(): Series["values"] {
    const out: Series["values"] = [];
    for (const [op, l] of this.latencies) l.values("kpip_request_duration_seconds", { op }, out);
    return out;
  }
}
