import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { AnswerBudget } from "../src/pipeline/answer-budget.js";
import { OpError } from "../src/primitives/types.js";
import { withKernel } from "./harness.js";
import { RawPeer, requestFrame } from "./wire.js";

const MiB = 1024 * 1024;
const refusedResource = (e: unknown) => e instanceof OpError && e.errorClass === "RESOURCE";

describe("the budget of answers in preparation", () => {
  it("holds per session and in the kernel, always lets one answer through, and gives back on release", () => {
    const b = new AnswerBudget(10, 15);
    const a1 = b.lease("a");
    a1.hold(8);
    const a2 = b.lease("a");
    assert.throws(() => a2.hold(3), refusedResource, "8 + 3 is over the session's 10");
    a2.hold(2);
    const c = b.lease("c");
    assert.throws(() => c.hold(6), refusedResource, "10 + 6 is over the kernel's 15");
    c.hold(5);
    assert.equal(b.held, 15);
    a1.release();
    a1.release(); // once only
    assert.equal(b.held, 7);
    const big = b.lease("d");
    assert.throws(() => big.hold(100), refusedResource, "over the kernel's budget while others hold bytes");
    a2.release();
    c.release();
    assert.equal(b.held, 0);
    big.hold(100); // alone, one answer is never refused (its op's own limits bound it)
    assert.equal(b.held, 100);
    big.release();
    assert.equal(b.held, 0);
  });

  it("pipelined reads of a large object: past the session's budget they are refused RESOURCE before reading; the rest answered whole; retries succeed", async () => {
    // maxWriteBuffer 4 MiB: a session's answers in preparation may hold half of it
    await withKernel({ maxWriteBuffer: 4 * MiB }, async (t) => {
      const admin = await t.admin();
      await admin.storage.write("obj://big/blob", Buffer.alloc(MiB, 7));
      const p = await RawPeer.admin(t);
      // 24 reads of 1 MiB in one write: all decoded and run before the first is answered
      const frames = Array.from({ length: 24 }, (_, i) =>
        requestFrame(100 + i, { op: "storage.read", target: "obj://big/blob", args: {} }),
      );
      p.send(Buffer.concat(frames));
      const answers = await Promise.all(frames.map((_, i) => p.response(100 + i)));
      const ok = answers.filter((r) => r.status === "SUCCESS");
      const refused = answers.filter((r) => r.status === "FAILURE");
      assert.ok(ok.length >= 1, "some reads are answered");
      assert.ok(refused.length >= 1, "reads past the budget are refused");
      for (const r of ok) assert.equal((r.payload as { data: Uint8Array }).data.length, MiB);
      for (const r of refused) {
        assert.equal(r.error, "RESOURCE");
        assert.match(r.message ?? "", /answers in preparation/);
      }
      // once the answers are out, a retry is served
      p.send(requestFrame(200, { op: "storage.read", target: "obj://big/blob", args: {} }));
      assert.equal((await p.response(200)).status, "SUCCESS");
      assert.equal(p.closed, false);
      p.close();
    });
  });
});
