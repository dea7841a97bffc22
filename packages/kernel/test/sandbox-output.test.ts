import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { describe, it, mock } from "node:test";
import { until } from "@kpip/protocol/testing";
import { DISCARD_BYTES_PER_SECOND, throttlePastCapture } from "../src/sandbox/output.js";

describe("output past the captured bytes is read at the discard rate", () => {
  it("a burst of one second's worth, then paused; silence refills the bucket only up to one second's worth", async () => {
    let now = 1_000_000;
    const clock = mock.method(Date, "now", () => now);
    try {
      const s = new PassThrough();
      s.on("data", () => {});
      throttlePastCapture(s, 100);
      s.write(Buffer.alloc(100));
      s.write(Buffer.alloc(DISCARD_BYTES_PER_SECOND));
      assert.equal(s.isPaused(), false, "the captured bytes and one second's worth past them flow");
      s.write(Buffer.alloc(1));
      assert.equal(s.isPaused(), true, "one byte more waits for the rate");
      // Resumed by the throttle's own timer (1 ms for one byte's deficit).
      await until(() => !s.isPaused(), 30_000, "the throttle to resume the stream");
      // An hour of silence: the bucket holds one second's worth again, not an hour's.
      now += 3_600_000;
      s.write(Buffer.alloc(DISCARD_BYTES_PER_SECOND));
      assert.equal(s.isPaused(), false);
      s.write(Buffer.alloc(DISCARD_BYTES_PER_SECOND));
      assert.equal(s.isPaused(), true, "an idle process buys no more than the burst");
      s.destroy();
    } finally {
      clock.mock.restore();
    }
  });
});
