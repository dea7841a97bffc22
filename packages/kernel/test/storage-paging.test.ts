import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { IntentError } from "@kpip/protocol";
import { SqliteStore } from "../src/index.js";
import { DELETED_PATHS_KEPT } from "../src/store/sqlite/objects.js";
import { klass, removeHome, startKernel, type TestKernel } from "./harness.js";

describe("storage: paging by hand, prefixes, CAS edges, client-side target checks", () => {
  let t: TestKernel;
  let c: KernelClient;
  before(async () => {
    t = await startKernel({ maxObjectBytes: 1024 });
    c = await t.admin();
    for (const n of ["dir/a", "dir/b", "dir/c", "dir/d", "dir/e", "dirx/a", "dir", "other/z"]) {
      await c.storage.write(`obj://ws1/${n}`, n);
    }
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  it("limit 2 over 5 objects: PARTIAL, PARTIAL, SUCCESS; following the cursors yields each exactly once", async () => {
    const statuses: string[] = [];
    const seen: string[] = [];
    let cursor: string | undefined;
    for (let i = 0; i < 10; i++) {
      const r = await c.call("storage.list", "obj://ws1/dir", cursor ? { limit: 2, cursor } : { limit: 2 });
      statuses.push(r.status);
      const p = r.payload as { items: { path: string }[]; cursor?: string };
      seen.push(...p.items.map((x) => x.path));
      if (r.status === "SUCCESS") {
        assert.equal(p.cursor, undefined, "the last page has no cursor");
        break;
      }
      assert.ok(p.cursor, "a PARTIAL page has a cursor");
      cursor = p.cursor;
    }
    assert.deepEqual(statuses, ["PARTIAL", "PARTIAL", "SUCCESS"]);
    assert.deepEqual(seen, ["dir/a", "dir/b", "dir/c", "dir/d", "dir/e"]);
  });

  it("a listing at the workspace root sees every object of that workspace only", async () => {
    await c.storage.write("obj://ws2/elsewhere", "x");
    const all: string[] = [];
    for await (const e of c.storage.list("obj://ws1", { pageSize: 3 })) all.push(e.path);
    assert.deepEqual(all, ["dir", "dir/a", "dir/b", "dir/c", "dir/d", "dir/e", "dirx/a", "other/z"]);
  });

  it("a cursor from another listing is refused (SEMANTIC)", async () => {
    await assert.rejects(c.call("storage.list", "obj://ws1/dir", { limit: 2, cursor: "other/z" }), klass("SEMANTIC"));
  });

  it("CAS: a write at the current generation bumps it; a delete at a stale generation leaves the object", async () => {
    const w0 = await c.storage.write("obj://ws1/cas2", "a", { ifGeneration: 0 });
    assert.equal(w0.generation, 1);
    const w1 = await c.storage.write("obj://ws1/cas2", "b", { ifGeneration: 1 });
    assert.equal(w1.generation, 2);
    await assert.rejects(c.storage.write("obj://ws1/cas2", "c", { ifGeneration: 1 }), klass("SEMANTIC"));
    await assert.rejects(c.storage.delete("obj://ws1/cas2", { ifGeneration: 1 }), klass("SEMANTIC"));
    assert.equal((await c.storage.stat("obj://ws1/cas2")).generation, 2);
    assert.equal(Buffer.from((await c.storage.read("obj://ws1/cas2")).data).toString(), "b");
    // after a delete the name is absent (ifGeneration 0 holds) and continues after its last generation
    await c.storage.delete("obj://ws1/cas2", { ifGeneration: 2 });
    assert.equal((await c.storage.write("obj://ws1/cas2", "again", { ifGeneration: 0 })).generation, 3);
  });

  it("a generation never names two versions: ranged reads and a compare-and-set across a delete and a re-creation fail", async () => {
    const [alice, bob] = [await t.admin(), await t.admin()];
    const first = await alice.storage.write("obj://ws1/doc", "AAAAAAAA");
    // alice reads the first half of the version she asked for ...
    const head = await alice.storage.readRange("obj://ws1/doc", 0, 4);
    assert.equal(head.generation, first.generation);
    // ... bob deletes it and writes another in its place, once or as often as it takes ...
    await bob.storage.delete("obj://ws1/doc");
    const again = await bob.storage.write("obj://ws1/doc", "BBBBBBBB");
    assert.ok(again.generation > first.generation, "the new version has a generation of its own");
    // ... alice's second half at her generation is a conflict, never bob's bytes mixed into hers.
    await assert.rejects(
      alice.call("storage.read", "obj://ws1/doc", { offset: 4, length: 4, ifGeneration: head.generation }),
      klass("SEMANTIC"),
    );
    // a write conditioned on the version alice saw does not replace bob's
    await assert.rejects(alice.storage.write("obj://ws1/doc", "mine", { ifGeneration: first.generation }), klass("SEMANTIC"));
    assert.equal(Buffer.from((await alice.storage.read("obj://ws1/doc")).data).toString(), "BBBBBBBB");
    // and so on: each re-creation continues after the last
    await bob.storage.delete("obj://ws1/doc");
    assert.ok((await bob.storage.write("obj://ws1/doc", "C")).generation > again.generation);
  });

  it("an object exactly at maxObjectBytes is accepted; one byte more is RESOURCE and leaves the old value", async () => {
    assert.equal((await c.storage.write("obj://ws1/edge", Buffer.alloc(1024, 1))).size, 1024);
    await assert.rejects(c.storage.write("obj://ws1/edge", Buffer.alloc(1025, 2)), klass("RESOURCE"));
    const r = await c.storage.read("obj://ws1/edge");
    assert.deepEqual([r.data.length, r.generation], [1024, 1]);
  });

  it("the client refuses traversal and non-canonical targets locally (IntentError, SEMANTIC) before sending", async () => {
    for (const target of [
      "obj://ws1/../ws2/x",
      "obj://ws1/a/./b",
      "obj://ws1/%2e%2e/x",
      "obj://ws1//x",
      "obj://ws1/a\\b",
      "obj://WS1/x",
      "obj://ws1/x?y=1",
      "obj://ws1/x#frag",
    ]) {
      await assert.rejects(
        c.call("storage.read", target),
        (e: unknown) => e instanceof IntentError && e.errorClass === "SEMANTIC",
        target,
      );
    }
  });
});

describe("remembered generations of deleted paths are bounded per workspace", () => {
  it("past DELETED_PATHS_KEPT deleted paths a workspace folds them into its floor: rows stay bounded, and no path's generation ever names two versions", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-gens-"));
    const s = new SqliteStore(join(home, "kernel.db"));
    try {
      const body = { data: Buffer.from("x") };
      const write = (ws: string, path: string) => {
        const r = s.writeObject(ws, path, body, undefined, 0, "p");
        assert.ok(r.ok);
        return r.generation as number;
      };
      // A path written three times, then deleted: written again, it continues after 3.
      for (let i = 0; i < 3; i++) write("ws", "kept");
      s.deleteObject("ws", "kept", undefined);
      assert.equal(write("ws", "kept"), 4);
      s.deleteObject("ws", "kept", undefined);
      // Unique paths created and deleted, one more than the rows kept: the rows are folded into the floor.
      for (let i = 0; i <= DELETED_PATHS_KEPT; i++) {
        write("ws", `u${i}`);
        s.deleteObject("ws", `u${i}`, undefined);
      }
      const rows = (s.db.prepare("SELECT count(*) AS n FROM object_generations").get() as { n: number }).n;
      assert.ok(rows <= DELETED_PATHS_KEPT, `${rows} rows kept`);
      // Past the fold: the path deleted at 4 and any new path of the workspace start above every deleted generation.
      assert.ok(write("ws", "kept") > 4);
      assert.ok(write("ws", "never-seen") > 1);
      // Another workspace is untouched: its new paths start at 1.
      assert.equal(write("other", "a"), 1);
    } finally {
      s.close();
      removeHome(home);
    }
  });
});
