import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BodyPool } from "../src/session/body-pool.js";
import { removeHome, startKernel } from "./harness.js";

const MiB = 1024 * 1024;

/** Bytes that differ with `seed` at every position (a body reused without being overwritten would show it). */
function pattern(size: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(size);
  for (let i = 0; i + 4 <= size; i += 4) b.writeUInt32LE((i * 2654435761 + seed) >>> 0, i);
  return b;
}

describe("BodyPool: large bodies' memory kept for reuse", () => {
  it("a body given back is detached everywhere and its memory serves the next body of about its size", () => {
    const pool = new BodyPool(16 * MiB);
    const a = pool.take(2 * MiB + 5);
    assert.equal(a.length, 2 * MiB + 5);
    a.fill(7);
    const view = a.subarray(100, 200);
    pool.giveBack(view);
    // Every view of the slab reads as empty: a stale one can never show the next body.
    assert.equal(a.length, 0);
    assert.equal(view.length, 0);
    assert.equal(pool.keptBytes, 3 * MiB, "slabs are whole MiB");
    const b = pool.take(2 * MiB);
    assert.equal(b.length, 2 * MiB);
    assert.deepEqual({ made: pool.made, reused: pool.reused, kept: pool.keptBytes }, { made: 1, reused: 1, kept: 0 });
    // A slab more than twice a body's size is not pinned by it.
    pool.giveBack(b);
    pool.take(1 * MiB);
    assert.deepEqual({ made: pool.made, reused: pool.reused }, { made: 2, reused: 1 });
  });

  it("small bodies, a disabled pool, foreign buffers and a second give-back are left alone; the pool never keeps more than its bound", () => {
    const pool = new BodyPool(4 * MiB);
    const small = pool.take(1000);
    pool.giveBack(small);
    assert.equal(small.length, 1000, "fresh memory is not the pool's");
    const foreign = Buffer.alloc(2 * MiB);
    pool.giveBack(foreign);
    assert.equal(foreign.length, 2 * MiB);
    const x = pool.take(3 * MiB);
    const y = pool.take(3 * MiB);
    pool.giveBack(x);
    pool.giveBack(x);
    pool.giveBack(y);
    assert.equal(pool.keptBytes, 3 * MiB, "the second slab would pass the bound: dropped");
    const off = new BodyPool(0);
    const z = off.take(8 * MiB);
    off.giveBack(z);
    assert.equal(z.length, 8 * MiB);
    assert.equal(off.made, 0);
  });
});

describe("large bodies received into reused memory (real kernel)", () => {
  it("writes inline and through shared memory reuse body memory, and every object reads back as written", async () => {
    const t = await startKernel({ maxBodyBytes: 8 * MiB });
    try {
      for (const shm of [false, true]) {
        const c = await t.admin({ shm });
        const bodies = [0, 1, 2, 3, 4, 5].map((i) => pattern(2 * MiB + i * 4096, i + (shm ? 100 : 0)));
        for (const [i, b] of bodies.entries()) await c.storage.write(`obj://pool/${shm}-${i}`, b);
        // Several at once: each in its own slab while they are in flight.
        await Promise.all(bodies.map((b, i) => c.storage.write(`obj://pool/${shm}-p${i}`, b)));
        for (const [i, b] of bodies.entries()) {
          assert.ok(Buffer.from((await c.storage.read(`obj://pool/${shm}-${i}`)).data).equals(b), `${shm} ${i}`);
          assert.ok(Buffer.from((await c.storage.read(`obj://pool/${shm}-p${i}`)).data).equals(b), `${shm} p${i}`);
        }
        await c.close();
      }
      const stats = t.k.bodyPool;
      assert.ok(stats.reused >= 6, `bodies were received into kept memory: ${JSON.stringify(stats)}`);
      assert.ok(stats.keptBytes <= 128 * MiB);
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("an op that keeps its arguments never has their memory reused: what it kept is intact after later large bodies", async () => {
    const kept: Uint8Array[] = [];
    const t = await startKernel({ maxBodyBytes: 8 * MiB }, undefined, (k) =>
      k.register({
        name: "keeper",
        ops: [
          {
            op: "keeper.keep",
            description: "Keeps its payload (no releasesArgs).",
            targets: ["kernel"],
            args: { data: { type: "bytes", required: true, description: "the payload" } },
            idempotent: true,
            effects: false,
            handler: (ctx) => {
              kept.push(ctx.args.data as Uint8Array);
              return { status: "SUCCESS", payload: {} };
            },
          },
        ],
      }),
    );
    try {
      const c = await t.admin({ shm: false });
      const first = pattern(3 * MiB, 1);
      await c.call("keeper.keep", "kernel://", { data: first });
      for (let i = 0; i < 4; i++) await c.storage.write(`obj://pool/after-${i}`, pattern(3 * MiB, 50 + i));
      assert.equal(kept.length, 1);
      assert.ok(Buffer.from(kept[0] as Uint8Array).equals(first), "the kept payload is what was sent, not a later body");
      await c.close();
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
