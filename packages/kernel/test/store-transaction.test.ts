import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { SqliteStore } from "../src/store/sqlite.js";
import { removeHome } from "./harness.js";

describe("store transactions through one reused transaction function", () => {
  it("each call runs its own function, commits it, rolls it back when it throws, and nests as a savepoint", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-store-txn-"));
    const store = new SqliteStore(join(dir, "kernel.db"));
    try {
      const put = (key: string) =>
        store.putDedupe({ key, hash: new Uint8Array(32), response: new Uint8Array([1]), expires: 2_000_000 });
      const has = (key: string) => store.lookupDedupe(key, 1_000_000) !== undefined;
      assert.equal(
        store.transaction(() => {
          put("a");
          return 41 + 1;
        }),
        42,
      );
      assert.equal(
        store.transaction(() => "second function"),
        "second function",
      );
      assert.throws(
        () =>
          store.transaction(() => {
            put("b");
            throw new Error("refused");
          }),
        /refused/,
      );
      store.transaction(() => {
        put("c");
        assert.throws(() =>
          store.transaction(() => {
            put("d");
            throw new Error("inner");
          }),
        );
        put("e");
      });
      assert.deepEqual(
        ["a", "b", "c", "d", "e"].map((k) => [k, has(k)]),
        [
          ["a", true],
          ["b", false],
          ["c", true],
          ["d", false],
          ["e", true],
        ],
      );
      assert.equal(store.db.inTransaction, false);
    } finally {
      store.close();
      removeHome(dir);
    }
  });
  it("onRollback's undo runs when its transaction or savepoint rolls back, newest first, and is dropped once the outermost commits", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-store-txn-"));
    const store = new SqliteStore(join(dir, "kernel.db"));
    try {
      const undone: string[] = [];
      const note = (x: string) => store.onRollback(() => undone.push(x));
      assert.equal(note("outside"), false, "no transaction open: nothing to undo");
      store.transaction(() => {
        note("kept");
        assert.throws(() =>
          store.transaction(() => {
            note("inner 1");
            note("inner 2");
            throw new Error("inner");
          }),
        );
        store.transaction(() => note("nested, committed"));
      });
      assert.deepEqual(undone, ["inner 2", "inner 1"], "only the savepoint rolled back");
      undone.length = 0;
      assert.throws(() =>
        store.transaction(() => {
          note("a");
          store.transaction(() => note("b (its savepoint committed, the whole rolled back)"));
          throw new Error("outer");
        }),
      );
      assert.deepEqual(undone, ["b (its savepoint committed, the whole rolled back)", "a"]);
      undone.length = 0;
      store.transaction(() => {});
      assert.deepEqual(undone, [], "nothing left from a committed one");
    } finally {
      store.close();
      removeHome(dir);
    }
  });
});
