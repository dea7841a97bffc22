import assert from "node:assert/strict";
import { truncateSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { klass, startKernel, type TestKernel, until, withKernel } from "./harness.js";
import { pattern, sha, watchPuts } from "./storage-files.js";

/* Object bodies in the file store: what a write does before its commit, and a body damaged on disk. */

/** The file of the body of `data` in `home`'s file store. */
const bodyFile = (home: string, data: Uint8Array) => {
  const hex = sha(data).toString("hex");
  return join(home, "objects", "sha256", hex.slice(0, 2), hex.slice(2));
};
const damagedRecords = (t: TestKernel) =>
  t.k.inspect
    .queryAudit({ op: "storage.damaged", limit: 1000 })
    .map((r) => ({ target: r.target, d: JSON.parse(r.detail ?? "null") as Record<string, unknown> }));

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

  it("a body missing or cut on disk is reported at start and at a read: INTERNAL naming the damage, on the record once", async () => {
    const cut = pattern(100_000, 1);
    const gone = pattern(100_000, 2);
    const whole = pattern(100_000, 3);
    const later = pattern(100_000, 4);
    const first = await startKernel({ objectInlineBytes: 4096 });
    const home = first.home;
    const c0 = await first.admin();
    for (const [path, data] of [
      ["cut", cut],
      ["gone", gone],
      ["whole", whole],
      ["later", later],
      ["also-cut", cut],
    ] as const)
      await c0.storage.write(`obj://ws/${path}`, data);
    await first.stop();
    truncateSync(bodyFile(home, cut), 10);
    unlinkSync(bodyFile(home, gone));
    await withKernel(
      { objectInlineBytes: 4096 },
      async (t) => {
        // The start's sweep found both (a stat of each body, and a count of the bodies rows name).
        const atStart = (await until(() => (damagedRecords(t).length === 2 ? damagedRecords(t) : undefined))).sort((a, b) =>
          String(a.d.body).localeCompare(String(b.d.body)),
        );
        const want = [
          { d: { body: sha(cut).toString("hex"), size: 100_000, found: 10, objects: 2 } },
          { d: { body: sha(gone).toString("hex"), size: 100_000, found: null, objects: 1 } },
        ].sort((a, b) => a.d.body.localeCompare(b.d.body));
        assert.deepEqual(
          atStart.map((r) => ({ d: r.d })),
          want,
        );
        const c = await t.admin();
        // Once the store's body is damaged its bytes are lost: said so, never an unexplained INTERNAL.
        await assert.rejects(
          c.storage.read("obj://ws/cut"),
          klass("INTERNAL", "the stored body of obj://ws/cut is damaged (10 bytes on disk, not 100000)"),
        );
        await assert.rejects(
          c.storage.read("obj://ws/gone"),
          klass("INTERNAL", "the stored body of obj://ws/gone is damaged (missing)"),
        );
        assert.ok(Buffer.from((await c.storage.read("obj://ws/whole")).data).equals(whole));
        // Damaged while the kernel runs (longer now: bytes of another body): found at the read, recorded once.
        writeFileSync(bodyFile(home, later), Buffer.concat([later, Buffer.from("more")]));
        for (let i = 0; i < 3; i++)
          await assert.rejects(c.storage.readRange("obj://ws/later", 0, 10), klass("INTERNAL", "obj://ws/later is damaged"));
        const ofLater = () => damagedRecords(t).filter((r) => r.d.body === sha(later).toString("hex"));
        const found = await until(() => (ofLater().length ? ofLater() : undefined), 30_000, "the read's damage on the record");
        assert.deepEqual(found, [
          { target: "obj://ws/later", d: { body: sha(later).toString("hex"), size: 100_000, found: 100_004, objects: 1 } },
        ]);
        assert.equal(damagedRecords(t).length, 3, "each damaged body once, however often it is read");
      },
      home,
    );
  });
});
