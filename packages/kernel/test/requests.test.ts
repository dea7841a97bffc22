import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { encodeCanonical, encodeIntent } from "@kpip/protocol";
import { klass, removeHome, startKernel, type TestKernel, until } from "./harness.js";
import { seenNothing, slowFamily } from "./slow-family.js";
import { RawPeer, rawPeerKernel, stopRawPeerKernel } from "./wire.js";

describe("the request pipeline", () => {
  let t: TestKernel;
  let p: RawPeer;
  before(async () => {
    ({ t, p } = await rawPeerKernel({ maxInFlight: 4 }));
  });
  after(() => stopRawPeerKernel(t, p));

  it("answers system.health, system.info and system.describe", async () => {
    const c = await t.admin();
    assert.equal((await c.system.health()).status, "ok");
    assert.equal((await c.system.info()).kernel, t.k.kernelId);
    const ops = (await c.system.describe()).ops.map((o) => o.op);
    for (const op of [
      "system.health",
      "storage.write",
      "storage.list",
      "token.mint",
      "event.subscribe",
      "compute.submit",
      "agent.spawn",
      "resource.alloc",
    ]) {
      assert.ok(ops.includes(op), op);
    }
  });

  it("carries a W3C traceparent from the request context into the audit record", async () => {
    const c = await t.admin();
    const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    await c.call("system.health", "kernel://", {}, { traceparent: tp });
    const row = await until(() => t.k.inspect.queryAudit({ op: "system.health" }).find((r) => r.traceparent === tp));
    assert.equal(row.phase, "complete");
  });

  it("refuses a request that speaks for another persona (AUTH) and audits it", async () => {
    p.request(10, { op: "system.health", target: "kernel://", args: {} }, { persona: "mallory" });
    p.request(11, { op: "system.health", target: "kernel://", args: {} }, { persona: "admin", ctxPersona: "mallory" });
    for (const id of [10, 11]) {
      const r = await p.response(id);
      assert.deepEqual([r.status, r.error], ["FAILURE", "AUTH"]);
    }
    const rows = await until(() => {
      const r = t.k.inspect.queryAudit({ status: "FAILURE" }).filter((x) => x.errorClass === "AUTH" && x.phase === "refused");
      return r.length >= 2 ? r : undefined;
    });
    assert.equal(rows[0]?.persona, "admin");
  });

  it("refuses non-canonical intent bytes with SEMANTIC, never re-encoding them", async () => {
    const unsorted = Buffer.concat([
      Buffer.from("a3", "hex"),
      encodeCanonical("target"),
      encodeCanonical("kernel://"),
      encodeCanonical("op"),
      encodeCanonical("system.health"),
      encodeCanonical("args"),
      encodeCanonical({}),
    ]);
    p.request(12, unsorted, { persona: "admin" });
    const r = await p.response(12);
    assert.deepEqual([r.status, r.error], ["FAILURE", "SEMANTIC"]);
    const row = await until(() => t.k.inspect.queryAudit({}).find((x) => x.requestId === 12));
    assert.deepEqual(Buffer.from(row.intent ?? []), unsorted);
    assert.deepEqual(Buffer.from(row.intentHash ?? []), createHash("sha256").update(unsorted).digest());
  });

  it("refuses unknown ops, wrong target schemes and unknown args with SEMANTIC", async () => {
    const c = await t.admin();
    await assert.rejects(c.call("nope.op", "kernel://"), klass("SEMANTIC"));
    await assert.rejects(c.call("storage.read", "kernel://"), klass("SEMANTIC"));
    await assert.rejects(c.call("system.health", "kernel://", { surprise: 1 }), klass("SEMANTIC"));
    await assert.rejects(c.call("storage.write", "obj://ws1/x"), klass("SEMANTIC"));
  });

  it("dedupes a retried request: one execution, the same answer", async () => {
    const intent = encodeIntent({ op: "storage.write", target: "obj://ws1/dedupe", args: { data: "once" } });
    p.request(20, intent, { persona: "admin" });
    p.request(20, intent, { persona: "admin" });
    const a = await p.response(20);
    const b = await p.response(20);
    assert.deepEqual(a, b);
    assert.equal(a.status, "SUCCESS");
    const rows = t.k.inspect.queryAudit({ op: "storage.write", limit: 100 }).filter((r) => r.requestId === 20);
    assert.deepEqual(
      rows.map((r) => r.phase).sort(),
      ["intent", "outcome", "replay"],
      "one execution, and the retry on the record as a replay",
    );
    const c = await t.admin();
    assert.equal((await c.storage.stat("obj://ws1/dedupe")).generation, 1);
    p.request(20, encodeIntent({ op: "storage.write", target: "obj://ws1/dedupe", args: { data: "twice" } }), {
      persona: "admin",
    });
    const d = await p.response(20);
    assert.deepEqual([d.status, d.error], ["FAILURE", "SEMANTIC"]);
    assert.match(d.message ?? "", /already used/);
    assert.equal((await c.storage.stat("obj://ws1/dedupe")).generation, 1);
  });

  it("answers a replay from a new session of the same client instance from the record", async () => {
    const intent = encodeIntent({ op: "storage.write", target: "obj://ws1/replay", args: { data: "x" } });
    p.request(30, intent, { persona: "admin" });
    const first = await p.response(30);
    const q = await RawPeer.admin(t);
    q.request(30, intent, { persona: "admin" });
    assert.deepEqual(await q.response(30), first);
    q.close();
  });

  it("sends responses only to the session that asked", async () => {
    const q = await RawPeer.admin(t);
    for (let i = 0; i < 5; i++) {
      p.request(100 + i, { op: "system.health", target: "kernel://", args: {} }, { persona: "admin" });
      q.request(200 + i, { op: "system.health", target: "kernel://", args: {} }, { persona: "admin" });
    }
    for (let i = 0; i < 5; i++) {
      await p.response(100 + i);
      await q.response(200 + i);
    }
    assert.ok(!p.frames.some((f) => f.msg.type === "RESPONSE"));
    assert.ok(!q.frames.some((f) => f.msg.type === "RESPONSE"));
    q.close();
  });

  it("refuses a workspace in the context that does not contain the target (PERMISSION)", async () => {
    const c = await t.admin({ workspace: "ws2" });
    await assert.rejects(c.storage.write("obj://ws1/x", "y"), klass("PERMISSION"));
  });

  it("refuses work whose deadline has passed (RESOURCE)", async () => {
    p.request(40, { op: "system.health", target: "kernel://", args: {}, constraints: { deadline: 1 } }, { persona: "admin" });
    const r = await p.response(40);
    assert.deepEqual([r.status, r.error], ["FAILURE", "RESOURCE"]);
  });

  it("limits requests in flight per session, answering every id exactly once", async () => {
    const ids = Array.from({ length: 40 }, (_, i) => 500 + i);
    for (const id of ids)
      p.request(id, { op: "storage.write", target: `obj://ws1/flood/${id}`, args: { data: "x" } }, { persona: "admin" });
    const results = [];
    for (const id of ids) results.push(await p.response(id));
    assert.equal(results.length, ids.length);
    const refused = results.filter((r) => r.error === "RESOURCE");
    assert.ok(refused.length > 0, "some requests over maxInFlight are refused");
    assert.ok(results.some((r) => r.status === "SUCCESS"));
    assert.ok(!p.frames.some((f) => f.msg.type === "RESPONSE"), "no id answered twice");
  });

  it("keeps another persona's request ids apart from admin's records", async () => {
    const bob = await t.persona("bob", [{ ops: ["storage.*"], targets: ["obj://ws1/**"] }]);
    const q = await RawPeer.connect(t.k.socketPath);
    await q.handshake(bob.identity, [bob.token]);
    // same instance id bytes (RawPeer uses a fixed one) and the same request id as admin's request 20
    q.request(20, encodeIntent({ op: "storage.write", target: "obj://ws1/dedupe", args: { data: "once" } }), { persona: "bob" });
    const r = await q.response(20);
    assert.equal(r.status, "SUCCESS");
    assert.equal((r.payload as { generation: number }).generation, 2, "bob's request ran: admin's record is not bob's");
    q.close();
  });
});

describe("far deadlines", () => {
  it("a deadline farther than a timer holds (any uint is valid): the op runs to its end, never INTERNAL nor aborted at once", async () => {
    const seen = seenNothing();
    const t = await startKernel({}, undefined, (k) => k.register(slowFamily(seen)));
    try {
      const c = await t.admin();
      const day = 24 * 3600 * 1000;
      // 30 days: past 2^31 − 1 ms a timer fired after 1 ms (the op saw its signal abort);
      // 60 days and 2^53 − 1: past 2^32 − 1 ms AbortSignal.timeout threw (INTERNAL).
      for (const deadline of [Date.now() + 30 * day, Date.now() + 60 * day, 2 ** 53 - 1]) {
        const r = await c.request({ op: "slow.wait", target: "kernel://", args: {}, constraints: { deadline } });
        assert.deepEqual([r.status, r.payload], ["SUCCESS", { aborted: false }], `deadline ${deadline}: ${r.message}`);
      }
      // A near one still stops the op at its time.
      const r = await c.request({
        op: "slow.until_abort",
        target: "kernel://",
        args: {},
        constraints: { deadline: Date.now() + 50 },
      });
      assert.deepEqual([r.status, r.payload], ["SUCCESS", { aborted: true }]);
      await c.close();
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
