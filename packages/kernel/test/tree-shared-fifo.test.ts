import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { TreeSharedFifo } from "../src/auth/tree-shared-fifo.js";

describe("TreeSharedFifo (the verified-token cache's and the derived tokens' bound)", () => {
  it("a tree past its share replaces its own oldest; the others' entries stay", () => {
    const f = new TreeSharedFifo<number>(8, Number.POSITIVE_INFINITY, 4); // 2 entries a tree
    f.add("b1", 1, "bob", 1);
    for (let i = 0; i < 10; i++) f.add(`m${i}`, i, "mallory", 1);
    assert.deepEqual(
      [...f].map(([k]) => k),
      ["b1", "m8", "m9"],
    );
    assert.equal(f.weight, 3);
  });

  it("past the whole bound the oldest go, whoever's; a tree whose last entry went that way adds again", () => {
    const f = new TreeSharedFifo<string>(4, 10, 1);
    f.add("a", "x", "t1", 4);
    f.add("b", "y", "t2", 4);
    f.add("c", "z", "t2", 4); // weight 12 > 10: "a" (t1's only entry) goes
    assert.deepEqual(
      [...f].map(([k]) => k),
      ["b", "c"],
    );
    f.add("d", "w", "t1", 1);
    assert.equal(f.get("d"), "w");
    assert.equal(f.size, 3);
    assert.equal(f.weight, 9);
    assert.equal(f.delete("d"), true);
    assert.equal(f.delete("d"), false);
    f.add("e", "v", "t1", 1); // t1's bookkeeping is whole again after its entries all went
    assert.deepEqual(
      [...f].map(([k]) => k),
      ["b", "c", "e"],
    );
    f.clear();
    assert.deepEqual([f.size, f.weight], [0, 0]);
  });

  it("a tree's share is bounded in weight too", () => {
    const f = new TreeSharedFifo<null>(100, 40, 4); // 10 of weight a tree
    f.add("a1", null, "a", 6);
    f.add("a2", null, "a", 6); // 12 > 10: a1 goes
    f.add("b1", null, "b", 6);
    assert.deepEqual(
      [...f].map(([k]) => k),
      ["a2", "b1"],
    );
  });
});
