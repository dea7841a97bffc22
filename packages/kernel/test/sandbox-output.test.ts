import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { describe, it, mock } from "node:test";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { until } from "@kpip/protocol/testing";
import { DISCARD_BYTES_PER_SECOND, OutputCapture, throttlePastCapture } from "../src/sandbox/output.js";

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

describe("what a process wrote, captured", () => {
  it("bytes read one at a time are kept in one buffer, not as the chunks read: the heap grows by about what is kept", () => {
    // The reads a kernel makes of a stream are throttled (READS_PER_SECOND): a process cannot make
    // enough of them in a test's time to show this through the sandbox, so the capture is fed here.
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as () => void;
    const heap = () => {
      gc();
      return process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
    };
    const n = 200_000;
    const before = heap();
    const c = new OutputCapture(n);
    for (let i = 0; i < n; i++) c.push(Buffer.from([0x78]));
    const grown = heap() - before;
    // Kept as chunks: ~180 bytes of heap a byte (36 MB here); kept in one buffer: at most twice what it holds.
    assert.ok(grown < 4 * 1024 * 1024, `the heap grew ${grown} bytes for ${n} bytes captured`);
    assert.equal(c.size, n);
    assert.ok(c.bytes().equals(Buffer.alloc(n, 0x78)));
  });
});
