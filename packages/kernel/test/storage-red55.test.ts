import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import { kernelForSuite, klass, withKernel } from "./harness.js";

describe("storage compare-and-set refusals say no more than the caller may see (red team, wt-red55)", () => {
  const s = kernelForSuite();

  it("a refused compare-and-set does not name the generation of an object its caller may write but not stat or read", async () => {
    const owner = await s.t.persona("cas-owner", [{ ops: ["storage.*"], targets: ["obj://ws1/inbox/**"] }]);
    // A drop box: it may write (and delete) there, never look.
    const dropper = await s.t.persona("cas-dropper", [
      { ops: ["storage.write", "storage.delete", "storage.upload.*"], targets: ["obj://ws1/inbox/**"] },
    ]);
    const o = await s.t.connect(owner.identity, [owner.token]);
    const d = await s.t.connect(dropper.identity, [dropper.token]);
    for (let i = 0; i < 7; i++) await o.storage.write("obj://ws1/inbox/report", `version ${i}`);
    const at = (await o.storage.stat("obj://ws1/inbox/report")).generation;
    assert.ok(at >= 7);
    const secret = new RegExp(`generation ${at}\\b`);
    const refused = async (p: Promise<unknown>) => {
      const e = await p.then(
        () => assert.fail("the compare-and-set should be refused"),
        (x: unknown) => x as Error,
      );
      assert.match(e.message, /generation conflict/);
      assert.doesNotMatch(e.message, secret, "the refusal names the generation the caller may not stat");
    };
    // "Create only if absent", a stale write, a stale delete, an upload's commit: each refused, nothing changed.
    await refused(d.storage.write("obj://ws1/inbox/report", "mine", { ifGeneration: 0 }));
    await refused(d.storage.write("obj://ws1/inbox/report", new Uint8Array(200_000), { ifGeneration: 1 }));
    await refused(d.storage.delete("obj://ws1/inbox/report", { ifGeneration: 1 }));
    const bytes = new Uint8Array(10).fill(7);
    const begun = (await d.call("storage.upload.begin", "obj://ws1/inbox/report", { size: 10 })).payload as { upload: string };
    await d.call("storage.upload.chunk", "obj://ws1/inbox/report", { upload: begun.upload, offset: 0, data: bytes });
    const sha256 = createHash("sha256").update(bytes).digest();
    await refused(
      d.call("storage.upload.commit", "obj://ws1/inbox/report", { upload: begun.upload, sha256, size: 10, ifGeneration: 0 }),
    );
    assert.equal((await o.storage.stat("obj://ws1/inbox/report")).generation, at);
    // A caller that may stat the object is still told where it is, to retry from there.
    await assert.rejects(
      o.storage.write("obj://ws1/inbox/report", "stale", { ifGeneration: 1 }),
      klass("SEMANTIC", `is at generation ${at}`),
    );
  });

  it("a workspace quota's refusal of a write over another persona's object does not tell that object's size", async () => {
    await withKernel({ workspaceStorageBytes: 1_000_000 }, async (t) => {
      const owner = await t.persona("q-owner", [{ ops: ["storage.*"], targets: ["obj://ws1/inbox/**"] }]);
      const dropper = await t.persona("q-dropper", [
        { ops: ["storage.write", "storage.upload.*"], targets: ["obj://ws1/inbox/**"] },
      ]);
      const o = await t.connect(owner.identity, [owner.token]);
      const d = await t.connect(dropper.identity, [dropper.token]);
      // Two objects whose sizes the dropper may not stat, at paths as long as each other.
      await o.storage.write("obj://ws1/inbox/r1", new Uint8Array(1_000));
      await o.storage.write("obj://ws1/inbox/r2", new Uint8Array(300_000));
      const refusal = async (target: string) => {
        const e = await d.call("storage.upload.begin", target, { size: 999_000 }).then(
          () => assert.fail("past the workspace's quota"),
          (x: unknown) => x as Error,
        );
        assert.match(e.message, /storage\.bytes exceeded for workspace ws1/);
        // Said of the target, not of what it holds: the figure would be the same for either object.
        return e.message.replaceAll(target, "<target>");
      };
      assert.equal(await refusal("obj://ws1/inbox/r1"), await refusal("obj://ws1/inbox/r2"));
      // Nothing was begun nor written.
      assert.equal((await o.storage.stat("obj://ws1/inbox/r2")).size, 300_000);

      // The same under a token's storage.bytes over a tree: a sub-persona writing over a sibling's
      // object (both under their parent's token and limit) is not told that object's size either.
      const parent = await t.persona("fam", [{ ops: ["storage.*"], targets: ["obj://ws2/**"] }], {
        limits: { "storage.bytes": 500_000 },
      });
      const sibling = await t.persona("fam/a", [{ ops: ["system.health"], targets: ["kernel://"] }]);
      const prober = await t.persona("fam/b", [{ ops: ["system.health"], targets: ["kernel://"] }]);
      const a = await t.connect(sibling.identity, [parent.token]);
      const b = await t.connect(prober.identity, [parent.token]);
      await a.storage.write("obj://ws2/s1", new Uint8Array(1_000));
      await a.storage.write("obj://ws2/s2", new Uint8Array(200_000));
      const over = async (target: string) => {
        const e = await b.call("storage.upload.begin", target, { size: 499_000 }).then(
          () => assert.fail("past the tree's storage.bytes"),
          (x: unknown) => x as Error,
        );
        assert.match(e.message, /storage\.bytes exceeded for fam \(over fam\/b\)/);
        return e.message.replaceAll(target, "<target>");
      };
      assert.equal(await over("obj://ws2/s1"), await over("obj://ws2/s2"));
    });
  });

  it("a persona's own storage.bytes refusal of a write over its sub-persona's object does not tell that object's size when it may not stat it", async () => {
    await withKernel({}, async (t) => {
      // The parent may write (a drop box over its tree's objects) but not stat; its limit is over its own tree.
      const parent = await t.persona("par", [{ ops: ["storage.write", "storage.upload.*"], targets: ["obj://ws3/**"] }], {
        limits: { "storage.bytes": 500_000 },
      });
      const child = await t.persona("par/c", [{ ops: ["system.health"], targets: ["kernel://"] }]);
      const c = await t.connect(child.identity, [parent.token]);
      await c.storage.write("obj://ws3/s1", new Uint8Array(1_000));
      await c.storage.write("obj://ws3/s2", new Uint8Array(200_000));
      const p = await t.connect(parent.identity, [parent.token]);
      const own = async (target: string) => {
        const e = await p.call("storage.upload.begin", target, { size: 499_000 }).then(
          () => assert.fail("past its storage.bytes"),
          (x: unknown) => x as Error,
        );
        assert.match(e.message, /storage\.bytes exceeded for par: \d+ used \+ \d+ > limit 500000/);
        return e.message.replaceAll(target, "<target>");
      };
      // Its usage (its tree's, which it may query) is told; what the change adds (the new cost less the replaced object's) is not.
      assert.equal(await own("obj://ws3/s1"), await own("obj://ws3/s2"));
    });
  });
});
