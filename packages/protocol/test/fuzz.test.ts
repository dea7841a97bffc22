import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decodeAll, fuzz, prng } from "../fuzz/engine.js";

describe("decoder fuzzing (short run; npm run fuzz:decoder for long ones)", () => {
  it("finds no crash, untyped exception, slow input or round-trip mismatch in 20,000 mutations", () => {
    const r = fuzz({ iterations: 20_000, seed: 42 });
    assert.deepEqual(
      r.findings.map((f) => `${f.signature}: ${f.message}`),
      [],
    );
  });

  it("reports an input that stays slow in CPU time (the slowness oracle can fail)", () => {
    const r = fuzz({
      iterations: 1,
      seed: 7,
      target: () => {
        const until = process.cpuUsage().user + 110_000;
        while (process.cpuUsage().user < until) {
          // burn 110 ms of CPU, as a quadratic decoder would
        }
      },
    });
    assert.deepEqual(
      r.findings.map((f) => f.kind),
      ["slow"],
    );
  });

  it("reports an untyped exception from the target (the oracle can fail)", () => {
    const r = fuzz({
      iterations: 50,
      seed: 1,
      target: (input) => {
        if (input.length > 0) throw new TypeError("bug");
      },
    });
    assert.equal(r.findings.length, 1);
    assert.equal(r.findings[0]?.kind, "exception");
  });

  it("is deterministic for a seed", () => {
    const a = prng(7);
    const b = prng(7);
    for (let i = 0; i < 100; i++) assert.equal(a(), b());
  });

  it("accepts every seed unmutated (the harness itself is sound)", () => {
    assert.doesNotThrow(() => decodeAll(new Uint8Array(0), prng(1)));
  });
});
