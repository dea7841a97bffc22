import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { encodeCanonical } from "@kpip/protocol";
import { klass, removeHome, startKernel, type TestKernel } from "./harness.js";
import { RawPeer } from "./wire.js";

describe("storage primitives", () => {
  let t: TestKernel;
  let c: KernelClient;
  before(async () => {
    t = await startKernel({ maxObjectBytes: 1024 });
    c = await t.admin();
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  it("round-trips bytes and text, stats and deletes", async () => {
    const bytes = Buffer.from([0, 1, 2, 255]);
    assert.deepEqual(await c.storage.write("obj://ws1/b", bytes), { generation: 1, size: 4 });
    assert.deepEqual(Buffer.from((await c.storage.read("obj://ws1/b")).data), bytes);
    await c.storage.write("obj://ws1/t", "héllo");
    assert.equal(Buffer.from((await c.storage.read("obj://ws1/t")).data).toString(), "héllo");
    const st = await c.storage.stat("obj://ws1/t");
    assert.deepEqual([st.generation, st.size], [1, 6]);
    await c.storage.delete("obj://ws1/t");
    await assert.rejects(c.storage.read("obj://ws1/t"), klass("SEMANTIC"));
    await assert.rejects(c.storage.delete("obj://ws1/t"), klass("SEMANTIC"));
  });

  it("compare-and-set by generation", async () => {
    assert.equal((await c.storage.write("obj://ws1/cas", "a", { ifGeneration: 0 })).generation, 1);
    await assert.rejects(c.storage.write("obj://ws1/cas", "b", { ifGeneration: 0 }), klass("SEMANTIC"));
    await assert.rejects(c.storage.write("obj://ws1/cas", "b", { ifGeneration: 7 }), klass("SEMANTIC"));
    assert.equal((await c.storage.write("obj://ws1/cas", "b", { ifGeneration: 1 })).generation, 2);
    await assert.rejects(c.storage.delete("obj://ws1/cas", { ifGeneration: 1 }), klass("SEMANTIC"));
    assert.equal(Buffer.from((await c.storage.read("obj://ws1/cas")).data).toString(), "b");
    await c.storage.delete("obj://ws1/cas", { ifGeneration: 2 });
  });

  it("lists in pages: PARTIAL with a cursor while more remain, each entry exactly once", async () => {
    for (const n of ["d/1", "d/2", "d/3", "d/4", "d/5", "dx/1", "d"]) await c.storage.write(`obj://ws1/${n}`, n);
    const first = await c.call("storage.list", "obj://ws1/d", { limit: 2 });
    assert.equal(first.status, "PARTIAL");
    const seen: string[] = [];
    for await (const e of c.storage.list("obj://ws1/d", { pageSize: 2 })) seen.push(e.path);
    assert.deepEqual(seen, ["d/1", "d/2", "d/3", "d/4", "d/5"]);
    const last = await c.call("storage.list", "obj://ws1/d", { limit: 10 });
    assert.equal(last.status, "SUCCESS");
    await assert.rejects(c.call("storage.list", "obj://ws1/d", { cursor: "zzz" }), klass("SEMANTIC"));
  });

  it("enforces the object size limit (RESOURCE) and refuses patterns as names", async () => {
    await assert.rejects(c.storage.write("obj://ws1/big", Buffer.alloc(2000)), klass("RESOURCE"));
    await assert.rejects(c.storage.read("obj://ws1/big"), klass("SEMANTIC"));
    await assert.rejects(c.storage.write("obj://ws1/*", "x"), klass("SEMANTIC"));
    await assert.rejects(c.storage.write("obj://ws1", "x"), klass("SEMANTIC"));
  });

  it("refuses traversal and encoded variants on the wire with SEMANTIC", async () => {
    const p = await RawPeer.admin(t);
    const targets = [
      "obj://ws1/../ws2/x",
      "obj://ws1/a/./b",
      "obj://ws1/%2e%2e/x",
      "obj://ws1/%2E%2E%2Fx",
      "obj://ws1//x",
      "obj://ws1/a\\..\\b",
      "obj://WS1/x",
      "obj://ws1/\u2024\u2024/x",
      "obj://ws1/a\u0000b",
    ];
    let id = 1;
    for (const target of targets) {
      p.request(id, encodeCanonical({ op: "storage.read", target, args: {} }), { persona: "admin" });
      const r = await p.response(id++);
      assert.deepEqual([r.status, r.error], ["FAILURE", "SEMANTIC"], target);
    }
    p.close();
  });

  it("is durable across a kernel restart", async () => {
    await c.storage.write("obj://ws1/durable", "kept");
    await t.stop();
    t = await startKernel({}, t.home);
    c = await t.admin();
    assert.equal(Buffer.from((await c.storage.read("obj://ws1/durable")).data).toString(), "kept");
  });
});
