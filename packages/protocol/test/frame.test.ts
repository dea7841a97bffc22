import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { PieceWriter } from "../src/cbor/encode.js";
import {
  encodeCanonical,
  encodeFrame,
  encodeFrameParts,
  encodeFramePieces,
  encodeMessage,
  FrameDecoder,
  FrameError,
  HEADER_SIZE,
  MessageType,
  writeHeader,
} from "../src/index.js";

const ping = (seq: number, stream = 0) => encodeMessage({ type: "PING", body: { seq } }, stream);

describe("frame header", () => {
  it("lays out magic, version, type, flags, reserved, stream and length big-endian", () => {
    const f = encodeFrame({ type: MessageType.PING, stream: 0x01020304 }, { seq: 5 });
    assert.equal(f.subarray(0, HEADER_SIZE).toString("hex"), "4b500108000000000102030400000006");
  });

  it("encodes an iovec pair that references the body without copying", () => {
    const body = Buffer.from("a0", "hex");
    const [h, b] = encodeFrameParts({ type: MessageType.GOODBYE, stream: 9 }, body);
    assert.equal(b, body);
    assert.equal(h.readUInt32BE(12), 1);
    assert.equal(h.readUInt32BE(8), 9);
  });
});

describe("FrameDecoder", () => {
  it("reassembles large frames from chunks of any size, intact, with small frames around them", () => {
    const body = Buffer.alloc(3 * 1024 * 1024 + 7);
    for (let i = 0; i < body.length; i++) body[i] = (i * 31) & 0xff;
    const [h, b] = encodeFrameParts({ type: MessageType.PING, stream: 9 }, body);
    const stream = Buffer.concat([ping(1), h, b, ping(2)]);
    for (const size of [1000, 65_536, 262_145, 1_000_003]) {
      const d = new FrameDecoder(4 * 1024 * 1024);
      const frames = [];
      for (let off = 0; off < stream.length; off += size) frames.push(...d.push(stream.subarray(off, off + size)));
      assert.equal(frames.length, 3, `chunks of ${size}`);
      assert.equal(frames[1]?.stream, 9);
      assert.ok(Buffer.from(frames[1]?.body as Uint8Array).equals(body), `chunks of ${size}`);
      assert.equal(d.midFrame, false);
    }
  });

  it("encodes a frame as pieces that reference large byte strings and equal the copied encoding", () => {
    const big = Buffer.alloc(100_000, 3);
    const body = { a: 1, data: big, tail: "x", more: new Uint8Array(10) };
    const pieces = encodeFramePieces({ type: MessageType.PING, stream: 5 }, body, 65_536);
    assert.ok(pieces.includes(big), "the large byte string is referenced, not copied");
    assert.ok(Buffer.concat(pieces).equals(encodeFrame({ type: MessageType.PING, stream: 5 }, body)));
    const small = encodeFramePieces({ type: MessageType.PING }, { n: 1 }, 65_536);
    assert.equal(small.length, 1);
  });

  it("a piece writer hands its encoding out only as pieces (its buffer alone is not the encoding), knows its length and starts again after reset", () => {
    const w = new PieceWriter(64, 0, 16);
    w.write({ data: Buffer.alloc(100, 1), n: 2 });
    assert.ok(Buffer.concat(w.finishParts()).equals(encodeCanonical({ data: Buffer.alloc(100, 1), n: 2 })));
    // @ts-expect-error what its buffer holds is not the whole encoding (the byte string is referenced)
    assert.equal(w.finish, undefined);
    // @ts-expect-error nor a copy of it
    assert.equal(w.copyTo, undefined);
    assert.throws(() => w.copyWholeTo(Buffer.alloc(200), 0), /references byte strings/);
    // Its length is the whole encoding's, the referenced string included.
    assert.equal(w.length, encodeCanonical({ data: Buffer.alloc(100, 1), n: 2 }).length);
    // After reset it starts again: nothing of the first encoding is left in its pieces.
    w.reset();
    w.write({ n: 3 });
    assert.deepEqual(Buffer.concat(w.finishParts()), encodeCanonical({ n: 3 }));
    const whole = Buffer.alloc(6);
    assert.equal(w.copyWholeTo(whole, 1), 4);
    assert.deepEqual(whole.subarray(1, 5), encodeCanonical({ n: 3 }));
    assert.equal(w.length, encodeCanonical({ n: 3 }).length);
  });

  it("pushEach reads each header after the frames before it were handed over: a limit they set bounds the next, in the same chunk", () => {
    const small = ping(1);
    const big = encodeFrame({ type: MessageType.PING, stream: 0 }, { seq: 2, pad: Buffer.alloc(300) });
    // Lowered by the first frame: the second, in the same chunk, is over it.
    const d = new FrameDecoder(4096);
    const seen: number[] = [];
    assert.throws(
      () =>
        d.pushEach(Buffer.concat([small, big]), (f) => {
          seen.push(f.length);
          d.setMaxBody(100);
          return true;
        }),
      (e: unknown) => e instanceof FrameError && e.code === "TOO_LARGE",
    );
    assert.deepEqual(seen, [small.length - HEADER_SIZE]);
    // Raised by the first frame: the second passes, whole or split, as push would have refused it.
    const joined = Buffer.concat([small, big]);
    assert.throws(() => new FrameDecoder(100).push(joined), FrameError);
    for (const cut of [joined.length, small.length + 4, small.length + HEADER_SIZE + 5]) {
      const r = new FrameDecoder(100);
      const got: number[] = [];
      const each = (f: { length: number }) => {
        got.push(f.length);
        r.setMaxBody(4096);
        return true;
      };
      r.pushEach(joined.subarray(0, cut), each);
      r.pushEach(joined.subarray(cut), each);
      assert.deepEqual(got, [small.length - HEADER_SIZE, big.length - HEADER_SIZE], `cut at ${cut}`);
    }
    // false stops: the chunk's rest is dropped and nothing more is taken.
    const s = new FrameDecoder();
    let n = 0;
    s.pushEach(Buffer.concat([ping(1), ping(2), ping(3)]), () => ++n < 2);
    assert.equal(n, 2);
    assert.throws(() => s.push(ping(4)), FrameError);
    // What the handler throws is thrown as it is.
    const boom = new Error("boom");
    assert.throws(
      () =>
        new FrameDecoder().pushEach(ping(1), () => {
          throw boom;
        }),
      (e: unknown) => e === boom,
    );
  });

  it("decodes frames from 1-byte chunks", () => {
    const bytes = Buffer.concat([ping(1, 1), ping(2, 2), ping(3, 3)]);
    const d = new FrameDecoder();
    const streams: number[] = [];
    for (const b of bytes) for (const f of d.push(Buffer.from([b]))) streams.push(f.stream);
    assert.deepEqual(streams, [1, 2, 3]);
    assert.equal(d.midFrame, false);
  });

  it("decodes many frames from one chunk as views of that chunk", () => {
    const bytes = Buffer.concat([ping(1), ping(2), ping(3)]);
    const frames = new FrameDecoder().push(bytes);
    assert.equal(frames.length, 3);
    assert.equal(frames[0]?.body.buffer, bytes.buffer);
  });

  it("handles a zero-length body completed exactly at a chunk boundary", () => {
    const f = Buffer.alloc(HEADER_SIZE);
    writeHeader(f, 0, { type: MessageType.GOODBYE, flags: 0, stream: 0, length: 0 });
    const d = new FrameDecoder();
    assert.equal(d.push(f.subarray(0, 5)).length, 0);
    const out = d.push(f.subarray(5));
    assert.equal(out.length, 1);
    assert.equal(out[0]?.body.length, 0);
  });

  it("rejects a declared length over the limit as soon as the header is complete", () => {
    const h = Buffer.alloc(HEADER_SIZE);
    writeHeader(h, 0, { type: MessageType.REQUEST, flags: 0, stream: 0, length: 0xffffffff });
    const d = new FrameDecoder(1024);
    assert.throws(
      () => d.push(h),
      (e: unknown) => e instanceof FrameError && e.code === "TOO_LARGE",
    );
    // poisoned: every later push fails the same way
    assert.throws(
      () => d.push(ping(1)),
      (e: unknown) => e instanceof FrameError && e.code === "TOO_LARGE",
    );
  });

  it("does not buffer more than the bytes that actually arrived", () => {
    const h = Buffer.alloc(HEADER_SIZE);
    writeHeader(h, 0, { type: MessageType.REQUEST, flags: 0, stream: 0, length: 8 * 1024 * 1024 });
    const d = new FrameDecoder();
    d.push(h);
    d.push(Buffer.alloc(10));
    assert.equal(d.pending, HEADER_SIZE + 10);
  });

  for (const [name, mutate, code] of [
    ["bad magic", (b: Buffer) => (b[0] = 0x00), "BAD_MAGIC"],
    ["unsupported version", (b: Buffer) => (b[2] = 2), "UNSUPPORTED_VERSION"],
    ["unknown type", (b: Buffer) => (b[3] = 0x7f), "UNKNOWN_TYPE"],
    ["unknown flags", (b: Buffer) => (b[4] = 0x80), "UNKNOWN_FLAGS"],
    ["reserved byte", (b: Buffer) => (b[6] = 1), "RESERVED_NONZERO"],
  ] as const) {
    it(`rejects ${name} with PROTOCOL/${code}`, () => {
      const f = ping(1);
      mutate(f);
      assert.throws(
        () => new FrameDecoder().push(f),
        (e: unknown) => e instanceof FrameError && e.code === code && e.errorClass === "PROTOCOL",
      );
    });
  }

  it("reports a stream cut off mid-frame as TRUNCATED", () => {
    const d = new FrameDecoder();
    d.push(ping(1).subarray(0, 20));
    assert.throws(
      () => d.end(),
      (e: unknown) => e instanceof FrameError && e.code === "TRUNCATED",
    );
  });
});

describe("FrameDecoder with an allocator for large frames", () => {
  const frames = (sizes: number[]) =>
    Buffer.concat(
      sizes.map((n, i) => {
        const body = Buffer.alloc(n, (i * 37 + 11) & 0xff);
        const h = Buffer.alloc(HEADER_SIZE);
        writeHeader(h, 0, { type: MessageType.PING, flags: 0, stream: i, length: n });
        return Buffer.concat([h, body]);
      }),
    );

  it("gives the same frames as without one, in any chunking; the allocator is asked once per large frame, for its exact size", () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.integer({ min: 0, max: 300 }), fc.integer({ min: 1_100_000, max: 1_400_000 })), {
          minLength: 1,
          maxLength: 5,
        }),
        fc.array(fc.integer({ min: 1, max: 200_000 }), { minLength: 1, maxLength: 20 }),
        (sizes, cuts) => {
          const bytes = frames(sizes);
          const asked: number[] = [];
          const plain = new FrameDecoder(2_000_000);
          const pooled = new FrameDecoder(2_000_000, (n) => {
            asked.push(n);
            return Buffer.alloc(n + 10).subarray(0, n);
          });
          const got: { plain: string[]; pooled: string[] } = { plain: [], pooled: [] };
          let at = 0;
          let k = 0;
          while (at < bytes.length) {
            const n = Math.min(cuts[k++ % cuts.length] as number, bytes.length - at);
            const chunk = bytes.subarray(at, at + n);
            for (const f of plain.push(chunk)) got.plain.push(`${f.stream}:${Buffer.from(f.body).toString("base64")}`);
            for (const f of pooled.push(chunk)) got.pooled.push(`${f.stream}:${Buffer.from(f.body).toString("base64")}`);
            at += n;
          }
          assert.deepEqual(got.pooled, got.plain);
          assert.equal(got.plain.length, sizes.length);
          assert.deepEqual(
            asked,
            sizes.filter((n) => n > 256 * 1024).map((n) => n + HEADER_SIZE),
          );
        },
      ),
      { numRuns: 40 },
    );
  });

  it("a peer that declares a large body and sends less than half of it gets nothing from the allocator", () => {
    let asked = 0;
    const d = new FrameDecoder(64 * 1024 * 1024, (n) => {
      asked++;
      return Buffer.alloc(n);
    });
    const h = Buffer.alloc(HEADER_SIZE);
    writeHeader(h, 0, { type: MessageType.PING, flags: 0, stream: 1, length: 60 * 1024 * 1024 });
    d.push(h);
    const chunk = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < 29; i++) d.push(chunk);
    assert.equal(asked, 0, "under half the body received: it is held as what arrived");
    assert.ok(d.retainedBytes <= 2 * d.pending, `${d.retainedBytes} bytes held for ${d.pending} received`);
    d.push(chunk);
    assert.equal(asked, 1, "half of it came: its buffer is taken");
    assert.equal(d.pending, HEADER_SIZE + 30 * 1024 * 1024);
  });
});

describe("FrameDecoder memory for a partial large frame", () => {
  /** Frames of these body sizes, each body a pattern of its own, in one buffer. */
  const stream = (sizes: number[]) =>
    Buffer.concat(
      sizes.map((n, i) => {
        const f = Buffer.alloc(HEADER_SIZE + n);
        writeHeader(f, 0, { type: MessageType.PING, flags: 0, stream: i, length: n });
        for (let j = 0; j < n; j++) f[HEADER_SIZE + j] = (j * 7 + i * 13) & 0xff;
        return f;
      }),
    );
  const pooled = (n: number) => Buffer.alloc(n + 10).subarray(0, n);
  /** The held memory's bound: a small multiple of the bytes received, however they were chunked. */
  const checkBound = (d: FrameDecoder, what: string) => {
    const received = d.pending;
    assert.ok(
      d.retainedBytes <= 3 * received + 64 * 1024,
      `${what}: ${d.retainedBytes} bytes held for ${received} received (${d.retainedPieces} pieces)`,
    );
    assert.ok(d.retainedPieces <= 16 + received / 4096, `${what}: ${d.retainedPieces} pieces for ${received} bytes`);
  };

  it("a large frame trickled a byte per read is held in memory proportional to the bytes received, and decodes to the same frames", () => {
    // 600 KiB: kept as pieces until complete; 1.2 MiB with an allocator: taken into its buffer half-way.
    for (const [sizes, alloc] of [
      [[5, 600 * 1024, 3], undefined],
      [[600 * 1024], pooled],
      [[1_200_000, 0], pooled],
    ] as const) {
      const bytes = stream([...sizes]);
      const d = new FrameDecoder(2_000_000, alloc);
      const got: Buffer[] = [];
      for (let i = 0; i < bytes.length; i++) {
        // One fresh chunk per read, as a socket hands them over.
        for (const f of d.push(Buffer.from([bytes[i] as number]))) got.push(Buffer.from(f.body));
        if (i % 4099 === 0) checkBound(d, `byte ${i} of frames ${sizes}`);
      }
      const whole = new FrameDecoder(2_000_000).push(bytes).map((f) => Buffer.from(f.body));
      assert.deepEqual(got, whole, `frames ${sizes}`);
      assert.equal(d.midFrame, false);
      assert.equal(d.retainedPieces, 0);
    }
  });

  it("in any chunking (fresh chunks or views of one buffer), holds a small multiple of what it received and decodes the same frames", () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.integer({ min: 0, max: 2000 }), fc.integer({ min: 260_000, max: 1_300_000 })), {
          minLength: 1,
          maxLength: 4,
        }),
        fc.array(
          fc.record({
            n: fc.oneof(
              fc.integer({ min: 1, max: 64 }),
              fc.integer({ min: 1, max: 20_000 }),
              fc.integer({ min: 1, max: 200_000 }),
            ),
            fresh: fc.boolean(),
          }),
          { minLength: 1, maxLength: 30 },
        ),
        fc.boolean(),
        (sizes, cuts, withAlloc) => {
          const bytes = stream(sizes);
          const want = new FrameDecoder(2_000_000)
            .push(bytes)
            .map((f) => `${f.stream}:${Buffer.from(f.body).toString("base64")}`);
          const d = new FrameDecoder(2_000_000, withAlloc ? pooled : undefined);
          const got: string[] = [];
          let at = 0;
          let k = 0;
          while (at < bytes.length) {
            const cut = cuts[k++ % cuts.length] as { n: number; fresh: boolean };
            const view = bytes.subarray(at, Math.min(at + cut.n, bytes.length));
            for (const f of d.push(cut.fresh ? Buffer.from(view) : view))
              got.push(`${f.stream}:${Buffer.from(f.body).toString("base64")}`);
            at += view.length;
            checkBound(d, `at ${at}`);
          }
          assert.deepEqual(got, want);
          assert.equal(d.midFrame, false);
        },
      ),
      { numRuns: 30 },
    );
  });
});
