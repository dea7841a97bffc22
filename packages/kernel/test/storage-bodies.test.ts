import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BlobStore } from "../src/store/blobs.js";
import { klass, until, withKernel } from "./harness.js";
import { pattern } from "./storage-files.js";

/* Object bodies in the file store: what a write does before its commit, and a body damaged on disk. */

/** Counts the file store's puts (a body written and synced); `gate`, when set, holds each put until it resolves. */
function watchPuts(): { n: number; gate?: Promise<void>; restore(): void } {
  const put = BlobStore.prototype.put;
  const seen: { n: number; gate?: Promise<void>; restore(): void } = {
    n: 0,
    restore: () => {
      BlobStore.prototype.put = put;
    },
  };
  BlobStore.prototype.put = async function (this: BlobStore, data: Uint8Array) {
    seen.n++;
    if (seen.gate) await seen.gate;
    return put.call(this, data);
  };
  return seen;
}

describe("storage bodies", () => {
  it("a write at a stale ifGeneration is refused before its body is written and synced; the commit still checks it", async () => {
    const puts = watchPuts();
    try {
      await withKernel({ objectInlineBytes: 4096 }, async (t) => {
        const p = await t.persona("p", [{ ops: ["storage.*"], targets: ["obj://ws/**"] }]);
        const c = await t.connect(p.identity, [p.token]);
        await c.storage.write("obj://ws/a", pattern(100_000, 1));
        assert.equal(puts.n, 1, "a body of this size goes to the file store");
        // Each refused write had its body written to the file store and synced first, then removed.
        await assert.rejects(
          c.storage.write("obj://ws/a", pattern(100_000, 2), { ifGeneration: 0 }),
          klass("SEMANTIC", "generation conflict: obj://ws/a is at generation 1"),
        );
        await assert.rejects(
          c.storage.write("obj://ws/a", pattern(100_000, 3), { ifGeneration: 5 }),
          klass("SEMANTIC", "generation conflict"),
        );
        await assert.rejects(
          c.storage.write("obj://ws/absent", pattern(100_000, 4), { ifGeneration: 1 }),
          klass("SEMANTIC", "generation conflict: obj://ws/absent is at generation 0"),
        );
        assert.equal(puts.n, 1, "no refused write's body was written");
        // The conflict comes before a limit, as at the commit (and an upload's).
        await c.storage.write("obj://ws/a", pattern(100_000, 5), { ifGeneration: 1 });
        assert.equal(puts.n, 2);
        // A write that changes the object while the body is stored: the commit's own check refuses it.
        let open = () => {};
        puts.gate = new Promise<void>((r) => {
          open = r;
        });
        const racing = c.storage.write("obj://ws/a", pattern(100_000, 6), { ifGeneration: 2 });
        await until(() => puts.n === 3, 30_000, "the conditional write is storing its body");
        puts.gate = undefined;
        const admin = await t.admin();
        await admin.storage.write("obj://ws/a", "small");
        open();
        await assert.rejects(racing, klass("SEMANTIC", "generation conflict: obj://ws/a is at generation 3"));
        assert.equal(Buffer.from((await c.storage.read("obj://ws/a")).data).toString(), "small");
      });
    } finally {
      puts.restore();
    }
  });
});
