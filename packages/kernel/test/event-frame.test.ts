// An EVENT frame is built around the event's data encoded once per emit (events/bus.ts
// eventFramePieces): its bytes must be exactly those the message encoder makes of the whole body.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type CborValue, encodeCanonical, encodeMessage } from "@kpip/protocol";
import { eventFramePieces } from "../src/events/bus.js";

describe("eventFramePieces", () => {
  it("is byte for byte the encoded EVENT message, for every head size of seq, gap and subscription, with and without data", () => {
    const ns = [0, 1, 23, 24, 255, 256, 65_535, 65_536, 2 ** 32 - 1, 2 ** 32, Number.MAX_SAFE_INTEGER];
    const datas: (CborValue | undefined)[] = [undefined, null, { a: 1, bb: [true, "x"] }, new Uint8Array(300).fill(1), "é€😀"];
    for (const topic of ["topic://a", "obj://ws1/é/x", `topic://${"t".repeat(300)}`])
      for (const data of datas)
        for (const n of ns)
          for (const gap of [undefined, 1, n || 1]) {
            const body: { subscription: number; topic: string; seq: number; data?: CborValue; gap?: number } = {
              subscription: n || 1,
              topic,
              seq: n,
            };
            if (data !== undefined) body.data = data;
            if (gap !== undefined) body.gap = gap;
            const shared = Buffer.concat([
              ...(data !== undefined ? [encodeCanonical("data"), encodeCanonical(data)] : []),
              encodeCanonical("topic"),
              encodeCanonical(topic),
            ]);
            const frame = Buffer.concat(eventFramePieces(n || 1, n, gap, data !== undefined, shared));
            assert.deepEqual(frame, encodeMessage({ type: "EVENT", body }, n || 1), JSON.stringify({ n, gap, topic }));
          }
  });
});
