import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { withKernel } from "./harness.js";

describe("subscription ids", () => {
  it("count per session: a persona's ids tell nothing of how many subscriptions and watches other personas made meanwhile", async () => {
    await withKernel({}, async (t) => {
      const spy = await t.persona("id-spy", [{ ops: ["event.*"], targets: ["topic://spy/**"] }]);
      const other = await t.persona("id-other", [
        { ops: ["event.*"], targets: ["topic://other/**"] },
        { ops: ["storage.*"], targets: ["obj://ws1/**"] },
      ]);
      const a = await t.connect(spy.identity, [spy.token]);
      const b = await t.connect(other.identity, [other.token]);
      const id = async (c: typeof a, op: string, target: string) =>
        ((await c.call(op, target)).payload as { subscription: number }).subscription;
      const first = await id(a, "event.subscribe", "topic://spy/a");
      // Another persona subscribes and watches (an MCP host opening files, say) between the spy's two subscriptions.
      const others = [
        await id(b, "event.subscribe", "topic://other/x"),
        await id(b, "event.subscribe", "topic://other/y"),
        await id(b, "storage.watch", "obj://ws1/notes/**"),
      ];
      const second = await id(a, "event.subscribe", "topic://spy/b");
      assert.equal(second, first + 1, "the spy's next id is its own next one, whatever others did");
      assert.deepEqual(others, [1, 2, 3], "each session counts from 1");
      // Never reused on the session: a late EVENT of an ended subscription cannot pass for a new one's.
      await a.call("event.unsubscribe", "topic://spy/b", { subscription: second });
      assert.equal(await id(a, "event.subscribe", "topic://spy/b"), second + 1);
      // Events still go where they belong: each subscription gets its own topic's.
      const got = await a.subscribe("topic://spy/c");
      const it = got[Symbol.asyncIterator]();
      const mine = await b.subscribe("topic://other/z");
      const theirs = mine[Symbol.asyncIterator]();
      await a.events.emit("topic://spy/c", "to the spy");
      await b.events.emit("topic://other/z", "to the other");
      assert.equal((await it.next()).value?.data, "to the spy");
      assert.equal((await theirs.next()).value?.data, "to the other");
    });
  });
});
