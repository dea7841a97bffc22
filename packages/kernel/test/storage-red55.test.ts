import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import { kernelForSuite, klass } from "./harness.js";

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
});
