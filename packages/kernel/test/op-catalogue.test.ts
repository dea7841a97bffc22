import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { KernelClient } from "@kpip/client";
import {
  BUILTIN_FAMILIES,
  type CborMap,
  type CborValue,
  checkShape,
  generateIdentity,
  type OpDefinition,
  storageStat,
} from "@kpip/protocol";
import { klass, removeHome, sandboxSkip, startKernel, type TestKernel } from "./harness.js";

/*
 * The op catalogue (@kpip/protocol's ops/) is what the docs, the spec's Appendix C and the
 * client's types are made from: these tests hold the kernel to it. Every built-in op is called
 * on a real kernel and its payload must fit the declared result exactly (every key declared,
 * every required key present, every value of its declared type, at every depth).
 */

const BUILTIN = new Map(BUILTIN_FAMILIES.flatMap((f) => f.ops.map((d) => [d.op, d])));
const fixture = (f: string) => fileURLToPath(new URL(`../../test/fixtures/${f}`, import.meta.url));

describe("the op catalogue against a real kernel", () => {
  let t: TestKernel;
  let c: KernelClient;
  const called = new Set<string>();

  /** Calls an op and checks its payload against the definition's result fields; returns the payload. */
  const call = async (op: string, target: string, args: CborMap = {}, status = "SUCCESS", client = c): Promise<CborMap> => {
    const def = BUILTIN.get(op);
    assert.ok(def, `${op} is in the catalogue`);
    const r = await client.call(op, target, args);
    assert.equal(r.status, status, `${op} answers ${status}`);
    const payload = r.payload as CborMap;
    assert.deepEqual(checkShape(def.result, payload, { mode: "payload" }), undefined, `${op}'s payload fits its result fields`);
    called.add(op);
    return payload;
  };

  before(async () => {
    t = await startKernel({}, undefined, (k) => {
      for (const n of ["square", "spin"]) k.registerTask(n, { module: fixture("tasks.mjs"), export: n });
    });
    c = await t.admin();
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  it("the kernel's table holds every built-in op as defined, and nothing else but what embedders add", () => {
    for (const d of t.k.router.all()) {
      const def = BUILTIN.get(d.op) as OpDefinition;
      assert.ok(def, `${d.op} is defined in @kpip/protocol`);
      assert.equal(d.args, def.args, `${d.op}: the kernel checks the catalogue's own argument fields`);
      assert.equal(d.result, def.result);
      assert.deepEqual(
        [d.description, d.targets, d.idempotent, d.effects, d.authorizeAs, d.reach, d.sessionState],
        [def.description, [...def.targets], def.idempotent, def.effects, def.authorizeAs, def.reach, def.sessionState],
      );
    }
    assert.deepEqual(
      t.k.router
        .all()
        .map((d) => d.op)
        .sort(),
      [...BUILTIN.keys()].sort(),
    );
  });

  it("system.*: both views of system.status", async () => {
    await call("system.health", "kernel://");
    await call("system.info", "kernel://");
    const operator = await call("system.status", "kernel://");
    assert.equal(operator.view, "operator");
    const described = await call("system.describe", "kernel://");
    assert.ok(
      (described.ops as CborMap[]).every((o) => o.result !== undefined),
      "every built-in op describes its result",
    );
    const bob = await t.persona("bob", [{ ops: ["system.status"], targets: ["kernel://"] }]);
    const b = await t.connect(bob.identity, [bob.token]);
    assert.equal((await call("system.status", "kernel://", {}, "SUCCESS", b)).view, "persona");
  });

  it("storage.*: writes, reads, ranges, pages, deletes and a chunked upload", async () => {
    await call("storage.write", "obj://ws/a", { data: "hello" });
    await call("storage.write", "obj://ws/b", { data: new Uint8Array([1, 2, 3]), ifGeneration: 0 });
    await call("storage.read", "obj://ws/a");
    await call("storage.read", "obj://ws/a", { offset: 1, length: 2 });
    await call("storage.stat", "obj://ws/a");
    // The same op through the client's typed call: the payload's type is the definition's result.
    const stat = await c.op(storageStat, "obj://ws/a", {});
    assert.equal(stat.payload.size, 5);
    const page = await call("storage.list", "obj://ws", { limit: 1 }, "PARTIAL");
    await call("storage.list", "obj://ws", { cursor: page.cursor as string });
    await call("storage.delete", "obj://ws/b");
    const bytes = Buffer.from("uploaded");
    const { upload } = await call("storage.upload.begin", "obj://ws/big", { size: bytes.length });
    await call("storage.upload.chunk", "obj://ws/big", { upload: upload as string, offset: 0, data: bytes });
    const sha256 = createHash("sha256").update(bytes).digest();
    await call("storage.upload.commit", "obj://ws/big", { upload: upload as string, sha256, size: bytes.length });
    const second = await call("storage.upload.begin", "obj://ws/big2", { size: 1 });
    await call("storage.upload.abort", "obj://ws/big2", { upload: second.upload as string });
    const w = await call("storage.watch", "obj://ws/**");
    await call("storage.unwatch", "obj://ws/**", { subscription: w.subscription as number });
  });

  it("resource.*: alloc, free, and both targets of query", async () => {
    const a = await call("resource.alloc", "persona://admin", { resource: "memory", amount: 1 });
    await call("resource.query", "persona://admin");
    await call("resource.query", "obj://ws");
    await call("resource.free", "persona://admin", { allocation: a.allocation as string });
  });

  it("token.*: mint, inspect, refresh, bind, list in pages, revoke", async () => {
    const rights = [{ ops: ["system.health"], targets: ["kernel://"] }];
    const m = await call("token.mint", "persona://admin", { rights, ttlMs: 60_000, limits: { concurrent: 4 } });
    const token = m.token as Uint8Array;
    await call("token.inspect", `token://${m.id}`, { token });
    await call("token.refresh", `token://${m.id}`, { token });
    await call("token.bind", `token://${m.id}`, { token });
    const page = await call("token.list", "kernel://", { limit: 1 }, "PARTIAL");
    await call("token.list", "kernel://", { cursor: page.cursor as string, persona: "bob" });
    await call("token.revoke", `token://${m.id}`);
  });

  it("event.*: subscribe, emit, unsubscribe", async () => {
    const s = await call("event.subscribe", "topic://cat/**");
    await call("event.emit", "topic://cat/x", { data: { n: 1 } });
    await call("event.unsubscribe", "topic://cat/**", { subscription: s.subscription as number });
  });

  it("compute.submit and op.*: DEFERRED answers, a result, a cancellation", async () => {
    const done = await call("compute.submit", "op://task/square", { args: 7 }, "DEFERRED");
    await call("op.status", done.op as string);
    await c.ops.wait(done.op as string);
    assert.equal((await call("op.result", done.op as string)).result, 49);
    const spinning = await call("compute.submit", "op://task/spin", {}, "DEFERRED");
    // It spins until cancelled: its op.result is DEFERRED, with the status fields only.
    const pending = await call("op.result", spinning.op as string, {}, "DEFERRED");
    assert.equal(pending.result, undefined);
    await call("op.cancel", spinning.op as string);
    await call("op.list", "kernel://", { limit: 10 });
  });

  it("persona.*: register, list, remove", async () => {
    const carol = generateIdentity("carol");
    await call("persona.register", "persona://carol", { publicKey: carol.publicKey });
    await call("persona.register", "persona://carol/helper", { publicKey: generateIdentity("carol/helper").publicKey });
    await call("persona.list", "persona://carol");
    await call("persona.remove", "persona://carol");
  });

  it("agent.*: spawn, status, logs, list, kill", { skip: sandboxSkip }, async () => {
    await call("agent.spawn", "agent://sleep/cat1", { args: ["300"], rights: [], lifetimeMs: 60_000 });
    await call("agent.status", "agent://sleep/cat1");
    await call("agent.logs", "agent://sleep/cat1");
    await call("agent.list", "kernel://");
    await call("agent.kill", "agent://sleep/cat1");
  });

  it("refuses ill-typed arguments at any depth with SEMANTIC, naming the path, before the op runs", async () => {
    const right = { ops: ["system.health"], targets: ["kernel://"] };
    const bad: [string, string, CborMap, string][] = [
      ["token.mint", "persona://bob", { rights: [right, { ops: ["x.y"], targets: [7] }], ttlMs: 1000 }, "rights[1].targets[0]"],
      ["token.mint", "persona://bob", { rights: [{ ops: ["x.y"] }], ttlMs: 1000 }, "rights[0].targets"],
      ["token.mint", "persona://bob", { rights: [right], ttlMs: 1000, limits: { concurrent: "4" } }, "limits.concurrent"],
      ["agent.spawn", "agent://sleep/bad", { args: ["1", 2], rights: [], lifetimeMs: 1000 }, "args[1]"],
      ["storage.write", "obj://ws/x", { data: "x", ifGeneration: "0" }, "ifGeneration"],
      ["storage.write", "obj://ws/x", { data: "x", constructor: 1 }, "constructor"],
    ];
    // The ids of the tokens minted so far (an agent killed earlier may still be having its token revoked).
    const minted = async () => {
      const ids: string[] = [];
      for await (const t of c.tokens.list()) ids.push(t.id);
      return ids.sort();
    };
    const before = await minted();
    for (const [op, target, args, path] of bad) {
      await assert.rejects(c.call(op, target, args), klass("SEMANTIC", JSON.stringify(path)), `${op} ${path}`);
    }
    assert.deepEqual(await minted(), before, "nothing was minted");
    await assert.rejects(c.storage.stat("obj://ws/x"), klass("SEMANTIC", "no object"));
    assert.equal((await c.system.health()).status, "ok");
  });

  it("every built-in op was called and its payload checked", () => {
    const skipped = sandboxSkip ? [...BUILTIN.keys()].filter((o) => o.startsWith("agent.")) : [];
    assert.deepEqual(
      [...BUILTIN.keys()].filter((o) => !called.has(o) && !skipped.includes(o)),
      [],
    );
  });

  it("a payload with a key the catalogue does not declare, or a value of another type, does not fit", () => {
    const def = BUILTIN.get("event.subscribe") as OpDefinition;
    const undeclared: CborValue = { subscription: 1, extra: true };
    assert.deepEqual(checkShape(def.result, undeclared as CborMap, { mode: "payload" }), { kind: "unknown", path: "extra" });
    assert.equal(checkShape(def.result, { subscription: "1" }, { mode: "payload" })?.kind, "type");
    assert.equal(checkShape(def.result, {}, { mode: "payload" })?.kind, "missing");
  });
});
