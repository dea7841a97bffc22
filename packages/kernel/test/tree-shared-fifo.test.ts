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

  it("adding a key already held replaces it: its weight is counted once, in its new tree only", () => {
    const f = new TreeSharedFifo<string>(4, 10, 2); // 2 entries and 5 of weight a tree
    f.add("k", "old", "t1", 3);
    f.add("k", "new", "t2", 4);
    assert.deepEqual([f.size, f.weight, f.get("k")], [1, 4, "new"]);
    f.add("k", "newer", "t2", 4); // counted twice, t2's 8 would pass its share of 5 and push "k" out
    assert.deepEqual([f.size, f.weight, f.get("k")], [1, 4, "newer"]);
    // t1 holds nothing any more: its share is whole.
    f.add("a", "x", "t1", 5);
    assert.equal(f.get("k"), "newer");
    assert.equal(f.delete("k"), true);
    assert.equal(f.delete("a"), true);
    assert.deepEqual([f.size, f.weight], [0, 0]);
    const byTree = (f as unknown as { byTree: Map<string, unknown> }).byTree;
    assert.equal(byTree.size, 0, "no tree's bookkeeping outlives its entries");
  });

  it("tells what it forgets to make room, not what is deleted or replaced", () => {
    const told: string[] = [];
    const f = new TreeSharedFifo<number>(3, Number.POSITIVE_INFINITY, 1, (k, v) => told.push(`${k}=${v}`));
    f.add("a", 1, "t", 1);
    f.add("a", 2, "t", 1);
    f.add("b", 3, "t", 1);
    f.delete("b");
    f.add("c", 4, "t", 1);
    f.add("d", 5, "t", 1);
    assert.deepEqual(told, []);
    f.add("e", 6, "t", 1);
    assert.deepEqual(told, ["a=2"]);
  });
});
