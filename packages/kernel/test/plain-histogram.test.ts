import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Histogram, Registry } from "prom-client";
import { PlainHistogram } from "../src/metrics/plain-histogram.js";

describe("PlainHistogram", () => {
  it("exposes exactly what prom-client's Histogram exposes for the same observations, and resets", async () => {
    const buckets = [0.0001, 0.0003, 0.001, 0.003, 0.01];
    const mine = new Registry();
    const theirs = new Registry();
    const a = new PlainHistogram(mine, "kpip_x_seconds", "x help", buckets);
    const b = new Histogram({ name: "kpip_x_seconds", help: "x help", buckets, registers: [theirs] });
    for (const v of [0, 0.0001, 0.00010001, 0.0005, 0.003, 0.2, 7, 0.00002]) {
      a.observe(v);
      b.observe(v);
    }
    assert.equal(await mine.metrics(), await theirs.metrics());
    mine.resetMetrics();
    theirs.resetMetrics();
    a.observe(0.002);
    b.observe(0.002);
    assert.equal(await mine.metrics(), await theirs.metrics());
  });
});
