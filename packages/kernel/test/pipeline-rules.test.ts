import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { type CborMap, encodeCanonical, encodeIntent } from "@kpip/protocol";
import type { PrimitiveFamily } from "../src/index.js";
import { addPersonaKey, adminIdentity, klass, removeHome, startKernel, type TestKernel, until } from "./harness.js";
import {
  allAudit,
  attestSignature,
  auditRecord,
  helloAs,
  RawPeer,
  rawPeerKernel,
  requestFrame,
  stopRawPeerKernel,
} from "./wire.js";

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest();
const health = { op: "system.health", target: "kernel://", args: {} };

describe("pipeline rules over a raw socket (maxInFlight 2)", () => {
  let t: TestKernel;
  let p: RawPeer;
  before(async () => {
    ({ t, p } = await rawPeerKernel({ maxInFlight: 2 }));
  });
  after(() => stopRawPeerKernel(t, p));

  it("ten storage.write REQUESTs in one write: some RESOURCE, the rest SUCCESS, every id answered once", async () => {
    const ids = Array.from({ length: 10 }, (_, i) => 1000 + i);
    p.send(
      Buffer.concat(
        ids.map((id) => requestFrame(id, { op: "storage.write", target: `obj://ws1/burst/${id}`, args: { data: "x" } })),
      ),
    );
    const results = new Map<number, Awaited<ReturnType<RawPeer["response"]>>>();
    for (const id of ids) results.set(id, await p.response(id));
    await p.barrier(1100);
    assert.ok(!p.frames.some((f) => f.msg.type === "RESPONSE"), "no id is answered twice");
    const refused = ids.filter((id) => results.get(id)?.status === "FAILURE");
    const done = ids.filter((id) => results.get(id)?.status === "SUCCESS");
    assert.equal(refused.length + done.length, 10);
    assert.ok(refused.length > 0, "requests over maxInFlight are refused");
    assert.ok(done.length >= 2, "requests within maxInFlight run");
    for (const id of refused) assert.equal(results.get(id)?.error, "RESOURCE");
    // the refused writes never happened; the accepted ones happened once
    const c = await t.admin();
    for (const id of refused) await assert.rejects(c.storage.stat(`obj://ws1/burst/${id}`), klass("SEMANTIC"));
    for (const id of done) assert.equal((await c.storage.stat(`obj://ws1/burst/${id}`)).generation, 1);
    // and each refusal is audited
    for (const id of refused) {
      const row = await auditRecord(t.k, (r) => r.requestId === id && r.phase === "refused", `refused record ${id}`);
      assert.equal(row.errorClass, "RESOURCE");
    }
    await c.close();
  });

  it("a REQUEST speaking for another registered persona: AUTH, audited as refused under the attested persona", async () => {
    addPersonaKey(t, "bob", Buffer.alloc(32, 1));
    const intent = encodeIntent({ op: "storage.write", target: "obj://ws1/injected", args: { data: "x" } });
    p.send(requestFrame(2000, intent, { persona: "bob" }));
    p.send(requestFrame(2001, intent, { persona: "admin", ctxPersona: "bob" }));
    for (const id of [2000, 2001]) {
      const r = await p.response(id);
      assert.deepEqual([r.status, r.error], ["FAILURE", "AUTH"]);
      const row = await auditRecord(t.k, (x) => x.requestId === id && x.phase === "refused", `refused ${id}`);
      assert.deepEqual([row.persona, row.errorClass, row.status], ["admin", "AUTH", "FAILURE"]);
      assert.deepEqual(Buffer.from(row.intent ?? []), intent, "the refused intent is kept for post-mortem");
    }
    const c = await t.admin();
    await assert.rejects(c.storage.stat("obj://ws1/injected"), klass("SEMANTIC"));
    await c.close();
  });

  it("every audit record that keeps intent bytes also carries their SHA-256 intent hash", async () => {
    // (covers the refusals above: AUTH at the envelope and RESOURCE over maxInFlight)
    const rows = allAudit(t.k).filter((r) => r.intent !== null);
    assert.ok(rows.length > 0);
    const missing = rows.filter((r) => r.intentHash === null).map((r) => `seq ${r.seq} ${r.phase} ${r.errorClass ?? ""}`);
    assert.deepEqual(missing, [], "records with intent bytes but no intent hash");
    for (const r of rows) assert.deepEqual(Buffer.from(r.intentHash ?? []), sha256(r.intent as Uint8Array), `seq ${r.seq}`);
  });

  it("a REQUEST whose version differs from the session's: FAILURE PROTOCOL, the session survives", async () => {
    p.send(requestFrame(2100, health, { version: 2 }));
    const r = await p.response(2100);
    assert.deepEqual([r.status, r.error], ["FAILURE", "PROTOCOL"]);
    p.send(requestFrame(2101, health));
    assert.equal((await p.response(2101)).status, "SUCCESS");
  });

  it("intent bytes that are not canonical: SEMANTIC for each kind, the session survives", async () => {
    const cases: [string, Buffer][] = [
      // keys out of canonical order
      [
        "unsorted keys",
        Buffer.concat([
          Buffer.from("a3", "hex"),
          encodeCanonical("target"),
          encodeCanonical("kernel://"),
          encodeCanonical("op"),
          encodeCanonical("system.health"),
          encodeCanonical("args"),
          encodeCanonical({}),
        ]),
      ],
      // an integer in a longer form than needed (deadline 10 as 0x18 0x0a)
      [
        "non-shortest integer",
        Buffer.concat([
          Buffer.from("a4", "hex"),
          encodeCanonical("op"),
          encodeCanonical("system.health"),
          encodeCanonical("args"),
          encodeCanonical({}),
          encodeCanonical("target"),
          encodeCanonical("kernel://"),
          encodeCanonical("constraints"),
          Buffer.from("a1", "hex"),
          encodeCanonical("deadline"),
          Buffer.from("1b00000000ffffffff", "hex"),
        ]),
      ],
      // an indefinite-length map
      [
        "indefinite length",
        Buffer.concat([
          Buffer.from("bf", "hex"),
          encodeCanonical("op"),
          encodeCanonical("system.health"),
          encodeCanonical("args"),
          encodeCanonical({}),
          encodeCanonical("target"),
          encodeCanonical("kernel://"),
          Buffer.from("ff", "hex"),
        ]),
      ],
      ["trailing bytes", Buffer.concat([encodeIntent(health), Buffer.from("00", "hex")])],
      ["not a map", encodeCanonical(["system.health", "kernel://"])],
    ];
    let id = 2200;
    for (const [what, bytes] of cases) {
      p.send(requestFrame(id, bytes));
      const r = await p.response(id);
      assert.deepEqual([r.status, r.error], ["FAILURE", "SEMANTIC"], what);
      const row = await auditRecord(t.k, (x) => x.requestId === id && x.phase === "refused", what);
      assert.deepEqual(Buffer.from(row.intent ?? []), bytes, `${what}: the bytes are kept exactly as sent`);
      id++;
    }
    p.send(requestFrame(id, health));
    assert.equal((await p.response(id)).status, "SUCCESS");
  });

  it("intent-level refusals on the wire (unknown op, wrong scheme, unknown arg, bad constraint): SEMANTIC", async () => {
    const cases = [
      { op: "nope.op", target: "kernel://", args: {} },
      { op: "storage.read", target: "agent://a1", args: {} },
      { op: "system.health", target: "kernel://", args: { surprise: true } },
      { op: "storage.write", target: "obj://ws1/x", args: {} },
      { op: "storage.write", target: "obj://ws1/x", args: { data: "x", ifGeneration: "one" } },
      { op: "system.health", target: "kernel://", args: {}, constraints: { retries: 3 } },
      { op: "system.health", target: "kernel://", args: {}, extra: 1 },
    ];
    let id = 2300;
    for (const intent of cases) {
      p.send(requestFrame(id, encodeCanonical(intent as unknown as CborMap)));
      const r = await p.response(id++);
      assert.deepEqual([r.status, r.error], ["FAILURE", "SEMANTIC"], JSON.stringify(intent));
    }
  });

  it("an unknown op is SEMANTIC whatever the token: a narrow grant does not make it PERMISSION", async () => {
    const narrow = await t.persona("narrow", [{ ops: ["storage.read"], targets: ["obj://ws1/**"] }]);
    const c = await t.connect(narrow.identity, [narrow.token]);
    await assert.rejects(c.call("nosuch.op", "kernel://"), klass("SEMANTIC"));
    await assert.rejects(c.call("storage.write", "obj://ws1/x", { data: "x" }), klass("PERMISSION"));
    await c.close();
  });

  it("non-integer numbers for uint arguments are SEMANTIC, never executed nor an internal error", async () => {
    const c = await t.admin();
    await c.storage.write("obj://ws1/uint/a", "a");
    await c.storage.write("obj://ws1/uint/b", "b");
    await c.close();
    // the codec only encodes integers, so the float 1.5 (f9 3e00, the shortest form) is spliced in by hand
    const withFloat = (op: string, target: string, arg: string, extra: Buffer[] = []) =>
      Buffer.concat([
        Buffer.from("a3", "hex"),
        encodeCanonical("op"),
        encodeCanonical(op),
        encodeCanonical("args"),
        Buffer.from((0xa0 + 1 + extra.length / 2).toString(16), "hex"),
        ...extra,
        encodeCanonical(arg),
        Buffer.from("f93e00", "hex"),
        encodeCanonical("target"),
        encodeCanonical(target),
      ]);
    p.send(requestFrame(2700, withFloat("storage.list", "obj://ws1/uint", "limit")));
    p.send(
      requestFrame(
        2701,
        withFloat("storage.write", "obj://ws1/uint/a", "ifGeneration", [encodeCanonical("data"), encodeCanonical("z")]),
      ),
    );
    for (const id of [2700, 2701]) {
      const r = await p.response(id);
      assert.deepEqual([r.status, r.error], ["FAILURE", "SEMANTIC"], `request ${id}: ${r.message}`);
    }
  });

  it("a context workspace other than the target's: PERMISSION, nothing written, audited as refused", async () => {
    p.send(
      requestFrame(2400, { op: "storage.write", target: "obj://ws1/ws-mismatch", args: { data: "x" } }, { workspace: "ws2" }),
    );
    const r = await p.response(2400);
    assert.deepEqual([r.status, r.error], ["FAILURE", "PERMISSION"]);
    const c = await t.admin();
    await assert.rejects(c.storage.stat("obj://ws1/ws-mismatch"), klass("SEMANTIC"));
    await c.close();
    const rows = await until(() => {
      const x = allAudit(t.k).filter((a) => a.requestId === 2400 && a.session !== "");
      return x.some((a) => a.status === "FAILURE") ? x : undefined;
    });
    assert.ok(rows.every((a) => a.status === null || a.errorClass === "PERMISSION"));
  });

  it("a deadline in the past: RESOURCE, and a write with it never happens", async () => {
    p.send(
      requestFrame(2500, {
        op: "storage.write",
        target: "obj://ws1/too-late",
        args: { data: "x" },
        constraints: { deadline: Date.now() - 1000 },
      }),
    );
    const r = await p.response(2500);
    assert.deepEqual([r.status, r.error], ["FAILURE", "RESOURCE"]);
    const c = await t.admin();
    await assert.rejects(c.storage.stat("obj://ws1/too-late"), klass("SEMANTIC"));
    await c.close();
  });

  it("a request with no capabilities: CAPABILITY", async () => {
    p.send(requestFrame(2600, health, { caps: [] }));
    const r = await p.response(2600);
    assert.deepEqual([r.status, r.error], ["FAILURE", "CAPABILITY"]);
  });
});

describe("dedupe of retried requests", () => {
  let t: TestKernel;
  const runs = { n: 0 };
  /** What counter.bump waits on before it answers (a test holds it closed). */
  let gate: Promise<void> = Promise.resolve();
  const counter: PrimitiveFamily = {
    name: "counter",
    ops: [
      {
        op: "counter.bump",
        description: "counts its executions, slowly",
        targets: ["kernel"],
        args: {},
        idempotent: false,
        effects: true,
        handler: async () => {
          const n = ++runs.n;
          await gate;
          return { status: "SUCCESS", payload: { n } };
        },
      },
    ],
  };
  before(async () => {
    t = await startKernel({}, undefined, (k) => k.register(counter));
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  it("a duplicate arriving while the first attempt still runs: one execution, two identical answers", async () => {
    const p = await RawPeer.admin(t);
    const before = runs.n;
    let open = () => {};
    gate = new Promise<void>((r) => {
      open = r;
    });
    const f = requestFrame(1, { op: "counter.bump", target: "kernel://", args: {} });
    p.send(f);
    await until(() => runs.n === before + 1, undefined, "the first attempt running");
    // The duplicate, then a health check behind it: once that is answered the duplicate was read,
    // while the first attempt still waits on the gate (a 150 ms sleep let a busy machine finish it first).
    p.send(Buffer.concat([f, requestFrame(2, health)]));
    assert.equal((await p.response(2)).status, "SUCCESS");
    open();
    const a = await p.response(1);
    const b = await p.response(1);
    assert.equal(a.status, "SUCCESS");
    assert.deepEqual(a, b);
    assert.equal(runs.n, before + 1);
    p.close();
  });

  it("a retry after a kernel restart, from the same client instance, gets the recorded answer", async () => {
    const intent = encodeIntent({ op: "storage.write", target: "obj://ws1/restart-dedupe", args: { data: "once" } });
    const p = await RawPeer.admin(t);
    p.send(requestFrame(77, intent));
    const first = await p.response(77);
    assert.equal(first.status, "SUCCESS");
    p.close();
    await t.stop();
    t = await startKernel({}, t.home, (k) => k.register(counter));
    const q = await RawPeer.connect(t.k.socketPath); // same fixed instance id as p
    await q.handshake(adminIdentity(t.k), [Buffer.from(t.adminToken, "base64url")]);
    q.send(requestFrame(77, intent));
    assert.deepEqual(await q.response(77), first);
    const c = await t.admin();
    assert.equal((await c.storage.stat("obj://ws1/restart-dedupe")).generation, 1, "executed once");
    // the same id with another intent is still refused after the restart
    q.send(requestFrame(77, { op: "storage.write", target: "obj://ws1/restart-dedupe", args: { data: "twice" } }));
    const r = await q.response(77);
    assert.deepEqual([r.status, r.error], ["FAILURE", "SEMANTIC"]);
    assert.equal((await c.storage.stat("obj://ws1/restart-dedupe")).generation, 1);
    q.close();
  });

  it("another client instance using the same request id is a new request", async () => {
    const c = await t.admin();
    await c.storage.write("obj://ws1/instances", "v1");
    const p = await RawPeer.connect(t.k.socketPath);
    const id = adminIdentity(t.k);
    const h = await helloAs(p, "admin", id.publicKey, Buffer.alloc(16, 9));
    p.sendMessage({
      type: "ATTEST",
      body: { signature: attestSignature(id, h.helloBytes, h.challengeBytes), tokens: [Buffer.from(t.adminToken, "base64url")] },
    });
    await p.next("WELCOME");
    // ids 1 and 77 were used above by the 0x07… instance, for other intents
    p.send(requestFrame(1, { op: "storage.write", target: "obj://ws1/instances", args: { data: "v2" } }));
    assert.equal(((await p.response(1)).payload as { generation: number }).generation, 2);
    p.send(requestFrame(77, { op: "storage.write", target: "obj://ws1/instances", args: { data: "v3" } }));
    assert.equal(((await p.response(77)).payload as { generation: number }).generation, 3);
    p.close();
    await c.close();
  });

  it("responses go only to the session that owns them (two sessions, interleaved)", async () => {
    const p = await RawPeer.admin(t);
    const q = await RawPeer.admin(t);
    const pIds = [3001, 3003, 3005];
    const qIds = [3002, 3004, 3006];
    for (let i = 0; i < 3; i++) {
      p.send(requestFrame(pIds[i] as number, { op: "storage.write", target: `obj://ws1/own/p${i}`, args: { data: "p" } }));
      q.send(requestFrame(qIds[i] as number, { op: "storage.write", target: `obj://ws1/own/q${i}`, args: { data: "q" } }));
    }
    for (const id of pIds) assert.equal((await p.response(id)).status, "SUCCESS");
    for (const id of qIds) assert.equal((await q.response(id)).status, "SUCCESS");
    await p.barrier(3101);
    await q.barrier(3102);
    const stray = (x: RawPeer) => x.frames.filter((f) => f.msg.type === "RESPONSE").map((f) => f.stream);
    assert.deepEqual(stray(p), []);
    assert.deepEqual(stray(q), []);
    q.close();
    p.close();
  });
});
