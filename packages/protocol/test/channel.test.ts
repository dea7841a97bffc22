import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  CodecError,
  coalesce,
  encodeMessage,
  FrameFlag,
  FrameReader,
  framePieces,
  HEADER_SIZE,
  joinChunks,
  type Message,
  socketTurnBatcher,
  TurnBatcher,
  writeMessage,
} from "../src/index.js";

/** A scheduler the test runs by hand: what the transports get from process.nextTick. */
function manualTurn(): { schedule: (fn: () => void) => void; run: () => void; queued: () => number } {
  let fns: (() => void)[] = [];
  return {
    schedule: (fn) => fns.push(fn),
    run: () => {
      const now = fns;
      fns = [];
      for (const f of now) f();
    },
    queued: () => fns.length,
  };
}

const read = (reader: FrameReader, bytes: Uint8Array) => {
  const got: Message[] = [];
  const errors: { e: CodecError; stage: string }[] = [];
  reader.push(
    bytes,
    (m) => {
      got.push(m);
      return true;
    },
    (e, stage) => errors.push({ e, stage }),
  );
  return { got, errors };
};

/** A batcher over a manual turn that records each flush's chunks, and says the transport let go of them when `released`. */
function recording(copyBelow: number, released = false) {
  const turn = manualTurn();
  const flushed: Uint8Array[][] = [];
  const b = new TurnBatcher(
    (c) => {
      flushed.push(c);
      return released;
    },
    turn.schedule,
    copyBelow,
  );
  return { turn, flushed, b };
}

describe("TurnBatcher: the writes of one turn go out together", () => {
  it("hands a turn's writes to flush once, in order, and counts them as pending until then", () => {
    const turn = manualTurn();
    const flushed: Uint8Array[][] = [];
    const b = new TurnBatcher((c) => {
      flushed.push(c);
      return false;
    }, turn.schedule);
    b.write(Buffer.from("ab"));
    b.write(Buffer.from("cde"));
    assert.equal(turn.queued(), 1, "one flush scheduled for the turn, not one per write");
    assert.equal(b.pending, 5);
    assert.equal(flushed.length, 0);
    turn.run();
    assert.deepEqual(
      flushed.map((c) => Buffer.concat(c).toString()),
      ["abcde"],
    );
    assert.equal(b.pending, 0);
    b.write(Buffer.from("f"));
    turn.run();
    assert.equal(flushed.length, 2, "the next turn is a new batch");
  });

  it("flushNow sends at once (before an end); stop drops what is queued and ignores later writes", () => {
    const turn = manualTurn();
    const flushed: string[] = [];
    const b = new TurnBatcher((c) => {
      flushed.push(Buffer.concat(c).toString());
      return false;
    }, turn.schedule);
    b.write(Buffer.from("goodbye"));
    b.flushNow();
    assert.deepEqual(flushed, ["goodbye"]);
    turn.run();
    assert.deepEqual(flushed, ["goodbye"], "the scheduled flush finds nothing left");
    b.write(Buffer.from("lost"));
    b.stop();
    b.write(Buffer.from("later"));
    turn.run();
    assert.deepEqual(flushed, ["goodbye"]);
    assert.equal(b.pending, 0);
  });

  it("with copyBelow, copies small writes at once, keeps large ones by reference, in order", () => {
    const { turn, flushed, b } = recording(8);
    const small = Buffer.from("abc");
    const large = Buffer.from("0123456789");
    b.write(small);
    small.fill(0x7a); // the caller reuses its bytes at once
    b.write(large);
    b.write(Buffer.from("de"));
    b.write(Buffer.from("f"));
    assert.equal(b.pending, 16);
    turn.run();
    const [chunks] = flushed as [Uint8Array[]];
    assert.deepEqual(
      chunks.map((c) => Buffer.from(c).toString()),
      ["abc", "0123456789", "def"],
      "small writes before and after the large one are joined around it, in order",
    );
    assert.equal(chunks[1], large, "a write at copyBelow or above is not copied");
  });

  it("with copyBelow, writes into the same buffer next turn only when flush says the transport let go of it", () => {
    const turn = manualTurn();
    const flushed: Uint8Array[] = [];
    let release = false;
    const b = new TurnBatcher(
      (c) => {
        flushed.push(c[0] as Uint8Array);
        return release;
      },
      turn.schedule,
      8,
    );
    b.write(Buffer.from("one"));
    turn.run();
    b.write(Buffer.from("two"));
    turn.run();
    assert.equal(Buffer.from(flushed[0] as Uint8Array).toString(), "one", "kept by the transport: not written over");
    const at = (u: Uint8Array | undefined) => [u?.buffer, u?.byteOffset];
    assert.notDeepEqual(at(flushed[0]), at(flushed[1]));
    release = true;
    b.write(Buffer.from("three"));
    turn.run();
    b.write(Buffer.from("four"));
    turn.run();
    assert.ok(
      flushed[2]?.buffer === flushed[3]?.buffer && flushed[2]?.byteOffset === flushed[3]?.byteOffset,
      "released: the same buffer again",
    );
    assert.equal(Buffer.from(flushed[3] as Uint8Array).toString(), "four");
  });

  it("with copyBelow, a turn of small writes past the buffer's size continues in a new buffer, nothing lost", () => {
    const { turn, flushed, b } = recording(16 * 1024);
    const parts: Buffer[] = [];
    for (let i = 0; i < 2000; i++) {
      const p = Buffer.alloc(100 + (i % 50), i % 251);
      parts.push(Buffer.from(p));
      b.write(p);
      p.fill(0);
    }
    turn.run();
    assert.deepEqual(Buffer.concat(flushed[0] as Uint8Array[]), Buffer.concat(parts));
  });

  it("with copyBelow, a buffer grown for a burst is not kept once the turns are small again", () => {
    const { turn, flushed, b } = recording(16 * 1024, true);
    for (let i = 0; i < 2000; i++) b.write(Buffer.alloc(100, 1));
    turn.run();
    const big = flushed[0]?.at(-1)?.buffer;
    assert.ok(big !== undefined && big.byteLength >= 64 * 1024, "the burst grew the buffer");
    b.write(Buffer.from("a"));
    turn.run();
    assert.equal(flushed[1]?.[0]?.buffer, big, "right after the burst, the grown buffer is written into again");
    b.write(Buffer.from("b"));
    turn.run();
    assert.notEqual(flushed[2]?.[0]?.buffer, big, "after a small turn it is let go");
    assert.deepEqual(
      flushed.slice(1).map((c) => Buffer.concat(c).toString()),
      ["a", "b"],
    );
  });

  it("afterWrites: at once when nothing is queued; else once flush's done runs (or the batcher stops); no done for a turn nobody waits on", () => {
    const turn = manualTurn();
    const dones: ((() => void) | undefined)[] = [];
    const b = new TurnBatcher((_c, _n, done) => {
      dones.push(done);
      return false;
    }, turn.schedule);
    const ran: string[] = [];
    b.afterWrites(() => ran.push("idle"));
    assert.deepEqual(ran, ["idle"], "nothing queued: at once");
    b.write(Buffer.alloc(100_000));
    b.afterWrites(() => ran.push("a"));
    b.afterWrites(() => ran.push("b"));
    assert.deepEqual(ran, ["idle"], "queued: not before the flush");
    turn.run();
    assert.equal(dones.length, 1);
    assert.deepEqual(ran, ["idle"], "handed to the transport, not yet let go of");
    dones[0]?.();
    assert.deepEqual(ran, ["idle", "a", "b"]);
    b.write(Buffer.alloc(10));
    turn.run();
    assert.equal(dones[1], undefined, "a turn nobody waits on gets no done (the fast path)");
    b.write(Buffer.alloc(100_000));
    b.afterWrites(() => ran.push("dropped"));
    b.stop();
    assert.deepEqual(ran, ["idle", "a", "b", "dropped"], "dropped with the stream: let go of");
  });

  it("socketTurnBatcher: a waited-on turn's done is the callback of its last socket write; a destroyed socket lets go at once", async () => {
    const writes: { n: number; cb?: (err?: Error | null) => void }[] = [];
    const sock = {
      destroyed: false,
      writableLength: 1,
      write: (d: Uint8Array, cb?: (err?: Error | null) => void) => writes.push({ n: d.length, ...(cb ? { cb } : {}) }),
      cork: () => {},
      uncork: () => {},
    };
    const b = socketTurnBatcher(sock);
    const ran: string[] = [];
    b.write(Buffer.alloc(100_000));
    b.write(Buffer.alloc(200_000));
    b.afterWrites(() => ran.push("turn"));
    await new Promise((r) => process.nextTick(r));
    assert.deepEqual(
      writes.map((w) => [w.n, w.cb !== undefined]),
      [
        [100_000, false],
        [200_000, true],
      ],
    );
    assert.equal(ran.length, 0, "not before the socket's callback");
    writes[1]?.cb?.();
    assert.deepEqual(ran, ["turn"]);
    sock.destroyed = true;
    b.write(Buffer.alloc(100_000));
    b.afterWrites(() => ran.push("gone"));
    await new Promise((r) => process.nextTick(r));
    assert.deepEqual(ran, ["turn", "gone"]);
  });

  it("coalesce joins a turn of small frames into one buffer and leaves a large turn's chunks as they are", () => {
    const one = [Buffer.from("x")];
    assert.equal(coalesce(one, 1), one);
    const small = [Buffer.from("ab"), new Uint8Array([99]), Buffer.from("de")];
    const joined = coalesce(small, 5);
    assert.equal(joined.length, 1);
    assert.equal(Buffer.from(joined[0] as Uint8Array).toString(), "abcde");
    const big = [Buffer.alloc(40 * 1024, 1), Buffer.alloc(40 * 1024, 2)];
    assert.equal(coalesce(big, 80 * 1024), big, "large bodies are not copied");
  });

  it("joinChunks copies only when there is more than one chunk", () => {
    const one = Buffer.from("x");
    assert.equal(joinChunks([one]), one);
    assert.equal(joinChunks([Buffer.from("a"), new Uint8Array([98])]).toString(), "ab");
  });
});

describe("FrameReader and the send path", () => {
  it("reads messages in any chunking, in order, and stops when the handler says the session ended", () => {
    const bytes = Buffer.concat([1, 2, 3].map((seq) => encodeMessage({ type: "PING", body: { seq } })));
    const reader = new FrameReader();
    const seqs: number[] = [];
    for (let i = 0; i < bytes.length; i += 7) {
      reader.push(
        bytes.subarray(i, i + 7),
        (m) => {
          if (m.type === "PING") seqs.push(m.body.seq);
          return true;
        },
        (e) => assert.fail(e),
      );
    }
    assert.deepEqual(seqs, [1, 2, 3]);
    const stopped: number[] = [];
    new FrameReader().push(
      bytes,
      (m) => {
        if (m.type === "PING") stopped.push(m.body.seq);
        return false;
      },
      (e) => assert.fail(e),
    );
    assert.deepEqual(stopped, [1], "nothing after the message that ended the session");
  });

  it("a malformed frame or body is a CodecError for onError, naming the stage; messages before it are handled", () => {
    const good = encodeMessage({ type: "PING", body: { seq: 1 } });
    const badBody = Buffer.from(encodeMessage({ type: "PING", body: { seq: 2 } }));
    badBody[HEADER_SIZE] = 0xff; // not a CBOR map any more
    const r1 = read(new FrameReader(), Buffer.concat([good, badBody]));
    assert.equal(r1.got.length, 1);
    assert.equal(r1.errors[0]?.stage, "message");
    assert.ok(r1.errors[0]?.e instanceof CodecError);
    const r2 = read(new FrameReader(), Buffer.from("not a frame header at all"));
    assert.deepEqual(
      r2.errors.map((x) => [x.stage, x.e.errorClass]),
      [["frame", "PROTOCOL"]],
    );
  });

  it("a frame flagged for shared memory on a session without it is PROTOCOL/SHM_NOT_NEGOTIATED", () => {
    const f = Buffer.from(encodeMessage({ type: "PING", body: { seq: 1 } }));
    f[4] = FrameFlag.SHM;
    const r = read(new FrameReader(), f);
    assert.equal(r.got.length, 0);
    assert.equal(r.errors[0]?.e.code, "SHM_NOT_NEGOTIATED");
  });

  it("the body limit is enforced and can be raised after the handshake", () => {
    const big: Message = { type: "GOODBYE", body: { reason: "x".repeat(100) } };
    const bytes = encodeMessage(big);
    assert.equal(read(new FrameReader(50), bytes).errors[0]?.e.code, "TOO_LARGE");
    const reader = new FrameReader(50);
    reader.setMaxBody(1000);
    assert.deepEqual(read(reader, bytes).got, [big]);
  });

  it("framePieces references large byte strings and reports the body size; writeMessage writes what a reader reads", () => {
    const data = Buffer.alloc(200 * 1024, 7);
    const msg: Message = { type: "EVENT", body: { subscription: 1, topic: "topic://t", seq: 1, data } };
    const { pieces, bodySize } = framePieces(msg, 5);
    assert.ok(
      pieces.some((p) => p.buffer === data.buffer),
      "the payload is a piece of its own, not a copy",
    );
    assert.equal(bodySize, Buffer.concat(pieces).length - HEADER_SIZE);
    const written: Uint8Array[] = [];
    writeMessage({ write: (d) => written.push(d) }, msg, 5);
    const r = read(new FrameReader(), Buffer.concat(written));
    assert.equal(r.errors.length, 0);
    assert.deepEqual(r.got[0]?.body, msg.body);
  });

  it("framePieces into the shared writer: each frame right once copied, a frame too big to be copied keeps its own buffer", () => {
    const copyBelow = 1024;
    const copied: Buffer[] = [];
    const answer = (id: number, message: string): Message => ({
      type: "RESPONSE",
      body: { version: 1, id, status: "FAILURE", error: "SEMANTIC", message },
    });
    const small1 = framePieces(answer(1, "first"), 1, copyBelow);
    copied.push(Buffer.concat(small1.pieces)); // what a copying channel does before the next frame
    const small1b = framePieces(answer(9, "second"), 1, copyBelow);
    assert.equal(small1b.pieces[0]?.buffer, small1.pieces[0]?.buffer, "small frames reuse one buffer");
    copied.push(Buffer.concat(small1b.pieces));
    const big = framePieces(answer(2, "x".repeat(5000)), 2, copyBelow);
    const small2 = framePieces(answer(3, "third"), 3, copyBelow);
    copied.push(Buffer.concat(big.pieces), Buffer.concat(small2.pieces));
    const bytes = Buffer.concat(copied);
    const r = read(new FrameReader(), bytes);
    assert.equal(r.errors.length, 0);
    assert.deepEqual(
      r.got.map((m) => (m.body as { id: number }).id),
      [1, 9, 2, 3],
    );
    assert.equal(
      (r.got[2]?.body as { message?: string } | undefined)?.message,
      "x".repeat(5000),
      "the big frame was not written over by the next",
    );
    assert.ok(big.pieces[0]?.buffer !== small2.pieces[0]?.buffer, "the big frame's buffer left the shared writer");
  });
});
