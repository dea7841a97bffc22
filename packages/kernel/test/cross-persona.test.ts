import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { type CallResult, type KernelClient, KpipError } from "@kpip/client";
import { type CborMap, generateIdentity } from "@kpip/protocol";
import { klass, removeHome, sandboxSkip, startKernel, type TestKernel, until } from "./harness.js";

const fixture = (f: string) => fileURLToPath(new URL(`../../test/fixtures/${f}`, import.meta.url));

/**
 * The cross-persona matrix: bob owns objects, topics, ops, agents, tokens, allocations and a
 * subscription; alice, holding the widest grant the kernel lets a non-admin persona have over
 * each kind of target, tries every op the kernel serves against every one of bob's targets.
 * Every attempt must be refused, and nothing alice gets back may carry bob's data.
 */
describe("cross-persona matrix: every op against another persona's targets", () => {
  let t: TestKernel;
  let alice: KernelClient;
  let bob: KernelClient;
  const SECRET = "BOB-SECRET-7f3a";
  const bobs = {
    object: "obj://wb/secret",
    workspace: "obj://wb",
    topic: "topic://wb/private",
    op: "",
    agent: "agent://sleep/bobby",
    tokenId: "",
    token: new Uint8Array() as Uint8Array,
    /** An upload bob began (on obj://wb/upload) and finishes after alice's attempts. */
    upload: "",
    allocation: "",
    subscription: 0,
    watch: 0,
  };
  /** Everything alice got back, answers and error messages, to search for leaks. */
  const seen: string[] = [];

  before(async () => {
    // The matrix is about ownership, not confinement: without a sandbox here it runs unconfined.
    t = await startKernel(sandboxSkip ? { sandbox: "none" } : {}, undefined, (k) => {
      k.registerTask("square", { module: fixture("tasks.mjs"), export: "square" });
    });
    // Each persona: its own workspace and topics by capability; kernel-owned objects (ops,
    // agents, tokens, allocations, subscriptions) granted as widely as patterns allow.
    const grant = (ws: string, self: string) => [
      { ops: ["storage.*", "resource.query"], targets: [`obj://${ws}/**`, `obj://${ws}`] },
      { ops: ["event.*"], targets: [`topic://${ws}/**`] },
      { ops: ["compute.submit", "op.*"], targets: ["op://**", "kernel://"] },
      { ops: ["agent.*"], targets: ["agent://**", "kernel://"] },
      { ops: ["token.*"], targets: ["token://**", "kernel://", `persona://${self}`, `persona://${self}/**`] },
      { ops: ["resource.*"], targets: [`persona://${self}`] },
      { ops: ["persona.*"], targets: [`persona://${self}/**`] },
      { ops: ["system.*"], targets: ["kernel://"] },
    ];
    const limits = { memory: 100_000 };
    const a = await t.persona("alice", grant("wa", "alice"), { limits });
    const b = await t.persona("bob", grant("wb", "bob"), { limits });
    alice = await t.connect(a.identity, [a.token]);
    bob = await t.connect(b.identity, [b.token]);

    await bob.call("storage.write", bobs.object, { data: Buffer.from(SECRET) });
    bobs.upload = ((await bob.call("storage.upload.begin", "obj://wb/upload", { size: 5 })).payload as { upload: string }).upload;
    const op = await bob.call("compute.submit", "op://task/square", { args: 7 });
    bobs.op = (op.payload as { op: string }).op;
    await bob.call("agent.spawn", bobs.agent, { args: ["30"], rights: [], lifetimeMs: 60_000 });
    const minted = await bob.call("token.mint", "persona://bob/helper", {
      rights: [{ ops: ["storage.read"], targets: ["obj://wb/**"] }],
      limits: { memory: 10 },
      ttlMs: 600_000,
    });
    const m = minted.payload as { id: string; token: Uint8Array };
    bobs.tokenId = m.id;
    bobs.token = m.token;
    const alloc = await bob.call("resource.alloc", "persona://bob", { resource: "memory", amount: 1000 });
    bobs.allocation = (alloc.payload as { allocation: string }).allocation;
    const sub = await bob.call("event.subscribe", "topic://wb/**");
    bobs.subscription = (sub.payload as { subscription: number }).subscription;
    const watch = await bob.call("storage.watch", "obj://wb/**");
    bobs.watch = (watch.payload as { subscription: number }).subscription;
  });

  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  /** Runs one attempt as alice; returns the error class, or "ALLOWED" with what came back. */
  async function attempt(op: string, target: string, args: CborMap = {}, workspace?: string): Promise<string> {
    try {
      const r: CallResult = await alice.call(op, target, args, workspace ? { workspace } : {});
      seen.push(JSON.stringify(r.payload, (_k, v) => (v instanceof Uint8Array ? Buffer.from(v).toString("latin1") : v)));
      return `ALLOWED ${JSON.stringify(r.payload)}`;
    } catch (e) {
      if (!(e instanceof KpipError)) throw e;
      seen.push(e.message);
      return e.errorClass;
    }
  }

  const REFUSED = new Set(["CAPABILITY", "PERMISSION", "SEMANTIC"]);

  /** For every op: the attempts against bob's targets. An op missing here fails the test. */
  const matrix = (): Record<string, [string, string, CborMap?, string?][]> => ({
    "storage.read": [
      [bobs.object, bobs.object],
      [bobs.object, bobs.object, {}, "wb"],
    ],
    "storage.write": [[bobs.object, bobs.object, { data: Buffer.from("x") }]],
    "storage.stat": [[bobs.object, bobs.object]],
    "storage.list": [
      [bobs.workspace, bobs.workspace],
      [bobs.workspace, bobs.workspace, {}, "wb"],
    ],
    "storage.delete": [[bobs.object, bobs.object]],
    "storage.upload.begin": [[bobs.object, bobs.object, { size: 1 }]],
    "storage.upload.chunk": [
      ["bob's upload", "obj://wb/upload", { upload: bobs.upload, offset: 0, data: Buffer.from("spoof") }],
      ["bob's upload on alice's object", "obj://wa/mine", { upload: bobs.upload, offset: 0, data: Buffer.from("spoof") }],
    ],
    "storage.upload.commit": [
      ["bob's upload", "obj://wb/upload", { upload: bobs.upload, sha256: Buffer.alloc(32), size: 5 }],
      ["bob's upload on alice's object", "obj://wa/mine", { upload: bobs.upload, sha256: Buffer.alloc(32), size: 5 }],
    ],
    "storage.watch": [
      ["bob's object", bobs.object],
      ["bob's workspace", "obj://wb/**"],
    ],
    "storage.unwatch": [
      ["bob's watch", "obj://wb/**", { subscription: bobs.watch }],
      ["bob's watch via own workspace", "obj://wa/**", { subscription: bobs.watch }],
    ],
    "storage.upload.abort": [
      ["bob's upload", "obj://wb/upload", { upload: bobs.upload }],
      ["bob's upload on alice's object", "obj://wa/mine", { upload: bobs.upload }],
    ],
    "resource.query": [
      ["bob's persona", "persona://bob"],
      ["bob's workspace", bobs.workspace],
    ],
    "resource.alloc": [["bob's persona", "persona://bob", { resource: "memory", amount: 1 }]],
    "resource.free": [
      ["bob's allocation on bob", "persona://bob", { allocation: bobs.allocation }],
      ["bob's allocation on alice", "persona://alice", { allocation: bobs.allocation }],
    ],
    "event.emit": [[bobs.topic, bobs.topic, { data: "spoof" }]],
    "event.subscribe": [
      [bobs.topic, bobs.topic],
      ["bob's tree", "topic://wb/**"],
    ],
    "event.unsubscribe": [
      ["bob's subscription", "topic://wb/**", { subscription: bobs.subscription }],
      ["bob's subscription via own topic", "topic://wa/x", { subscription: bobs.subscription }],
    ],
    "op.status": [[bobs.op, bobs.op]],
    "op.result": [[bobs.op, bobs.op]],
    "op.cancel": [[bobs.op, bobs.op]],
    "agent.status": [[bobs.agent, bobs.agent]],
    "agent.logs": [[bobs.agent, bobs.agent]],
    "agent.kill": [[bobs.agent, bobs.agent]],
    "token.inspect": [["bob's token", `token://${bobs.tokenId}`, { token: bobs.token }]],
    "token.refresh": [["bob's token", `token://${bobs.tokenId}`, { token: bobs.token }]],
    "token.revoke": [["bob's token", `token://${bobs.tokenId}`]],
    "token.bind": [["bob's token", `token://${bobs.tokenId}`, { token: bobs.token }]],
    "persona.register": [
      ["bob's sub-persona id", "persona://bob/impostor", { publicKey: Buffer.alloc(32, 7) }],
      ["bob's own id", "persona://bob", { publicKey: Buffer.alloc(32, 7) }],
    ],
    "persona.remove": [
      ["bob", "persona://bob"],
      ["bob's sub-persona", "persona://bob/helper"],
    ],
    "persona.list": [
      ["bob", "persona://bob"],
      ["bob's tree", "persona://bob/helper"],
    ],
    "token.mint": [
      ["for bob", "persona://bob", { rights: [], limits: { memory: 1 }, ttlMs: 1000 }],
      ["for bob's sub-persona", "persona://bob/helper", { rights: [], limits: { memory: 1 }, ttlMs: 1000 }],
    ],
  });

  /** Ops that take a kernel-wide or ownerless target: checked for what they show, not refused. */
  const LISTS = ["op.list", "agent.list", "token.list"];
  // agent.spawn names an id of the caller's own (agent ids are scoped to their spawner): checked below.
  const OWNERLESS = ["system.describe", "system.health", "system.info", "system.status", "compute.submit", "agent.spawn"];

  it("covers every op the kernel serves", async () => {
    const ops = ((await alice.call("system.describe", "kernel://")).payload as { ops: { op: string }[] }).ops.map((o) => o.op);
    const covered = new Set([...Object.keys(matrix()), ...LISTS, ...OWNERLESS]);
    assert.deepEqual(
      ops.filter((o) => !covered.has(o)),
      [],
      "every op needs a row in the cross-persona matrix",
    );
  });

  it("refuses every op against every one of bob's targets", async () => {
    const outcomes: string[] = [];
    for (const [op, rows] of Object.entries(matrix())) {
      for (const [name, target, args, ws] of rows) {
        const r = await attempt(op, target, args ?? {}, ws);
        if (!REFUSED.has(r)) outcomes.push(`${op} ${name}: ${r}`);
      }
    }
    assert.deepEqual(outcomes, [], "attempts that were not refused");
  });

  it("lists show alice only her own ops, agents and tokens", async () => {
    const mine = await alice.call("compute.submit", "op://task/square", { args: 3 });
    const myOp = (mine.payload as { op: string }).op;
    const ops = JSON.stringify((await alice.call("op.list", "kernel://")).payload);
    assert.ok(ops.includes(myOp) && !ops.includes(bobs.op), ops);
    const agents = JSON.stringify((await alice.call("agent.list", "kernel://")).payload);
    assert.ok(!agents.includes("bobby"), agents);
    await assert.rejects(alice.call("token.list", "kernel://", { persona: "bob" }), KpipError);
    const tokens = await alice.call("token.list", "kernel://").catch((e: KpipError) => e);
    if (!(tokens instanceof KpipError)) {
      const s = JSON.stringify(tokens.payload);
      assert.ok(!s.includes(bobs.tokenId) && !s.includes('"bob'), s);
    }
  });

  it("bob's things are intact, and nothing alice saw carries bob's data", async () => {
    const read = (await bob.call("storage.read", bobs.object)).payload as { data: Uint8Array };
    assert.equal(Buffer.from(read.data).toString(), SECRET);
    assert.ok(t.k.inspect.getPersona("bob"), "bob is still registered");
    assert.equal(t.k.inspect.getPersona("bob/impostor"), undefined);
    // Alice spawning under the same name starts an agent of her own; bob's is not touched or revealed.
    const hers = (await alice.call("agent.spawn", bobs.agent, { args: ["1"], rights: [], lifetimeMs: 1000 })).payload as {
      persona: string;
    };
    assert.equal(hers.persona, "alice/agent.bobby");
    const his = (await bob.call("agent.status", bobs.agent)).payload as { state: string; persona: string };
    assert.deepEqual([his.state, his.persona], ["running", "bob/agent.bobby"]);
    const st = (await bob.call("token.inspect", `token://${bobs.tokenId}`, { token: bobs.token })).payload as {
      status: string;
    };
    assert.equal(st.status, "valid");
    // Bob's upload goes on from where he left it, and holds only his bytes.
    await bob.call("storage.upload.chunk", "obj://wb/upload", { upload: bobs.upload, offset: 0, data: Buffer.from("hello") });
    const sha256 = createHash("sha256").update("hello").digest();
    await bob.call("storage.upload.commit", "obj://wb/upload", { upload: bobs.upload, sha256, size: 5 });
    await bob.call("resource.free", "persona://bob", { allocation: bobs.allocation });
    await bob.call("event.unsubscribe", "topic://wb/**", { subscription: bobs.subscription });
    await bob.call("storage.unwatch", "obj://wb/**", { subscription: bobs.watch });
    const leaks = seen.filter((s) => s.includes(SECRET) || s.includes(Buffer.from(bobs.token).toString("latin1")));
    assert.deepEqual(leaks, []);
    await bob.call("agent.kill", bobs.agent);
  });
});

/**
 * The same matrix's other side: narrower grants in the SAME workspace (and the same persona
 * tree), where the grant's patterns — not a foreign owner — are the boundary. An op that
 * answers a whole subtree (a listing) is allowed only by a grant covering all of it; an op
 * over another persona (removal, its usage) only inside the caller's tree, whatever the
 * grant's patterns.
 */
describe("cross-persona matrix: narrower grants in the same workspace, and grants wider than the caller's tree", () => {
  let t: TestKernel;
  let admin: KernelClient;
  /** Everything a refused party got back, to search for what lies outside its grant. */
  const seen: string[] = [];
  const OBJECTS = ["pub/a", "pub/x/hidden", "pub/x/deep/secret", "priv/s"];

  before(async () => {
    t = await startKernel();
    admin = await t.admin();
    for (const p of OBJECTS) await admin.call("storage.write", `obj://ws1/${p}`, { data: Buffer.from(`data of ${p}`) });
  });

  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  /** Runs one call; the error class, or "ALLOWED" with what came back (kept in `seen`). */
  async function attempt(c: KernelClient, op: string, target: string, args: CborMap = {}): Promise<string> {
    try {
      const r = await c.call(op, target, args);
      const s = JSON.stringify(r.payload, (_k, v) => (v instanceof Uint8Array ? Buffer.from(v).toString("latin1") : v));
      seen.push(s);
      return `ALLOWED ${s}`;
    } catch (e) {
      if (!(e instanceof KpipError)) throw e;
      seen.push(e.message);
      return `${e.errorClass}: ${e.message}`;
    }
  }

  const paths = async (c: KernelClient, target: string) =>
    ((await c.call("storage.list", target)).payload as { items: { path: string }[] }).items.map((i) => i.path);

  /** The outcome records of `persona`'s refused `op` requests on `target`. */
  const refusals = (persona: string, op: string, target: string) =>
    t.k.inspect.queryAudit({ persona, op, limit: 100 }).filter((r) => r.target === target && r.errorClass === "PERMISSION");

  it("storage.list is authorized on the whole subtree it lists: a grant over part of it is PERMISSION, audited, with nothing of the subtree answered", async () => {
    const carol = await t.persona("carol", [
      { ops: ["storage.read", "storage.list", "storage.stat", "storage.watch"], targets: ["obj://ws1/pub/*"] },
    ]);
    const c = await t.connect(carol.identity, [carol.token]);
    // What the grant reaches (pub/a) is served; what lies deeper is not, by any op.
    assert.match(await attempt(c, "storage.read", "obj://ws1/pub/a"), /^ALLOWED/);
    assert.match(await attempt(c, "storage.watch", "obj://ws1/pub/*"), /^ALLOWED/);
    assert.match(await attempt(c, "storage.read", "obj://ws1/pub/x/hidden"), /^PERMISSION/);
    assert.match(await attempt(c, "storage.stat", "obj://ws1/pub/x/hidden"), /^PERMISSION/);
    assert.match(await attempt(c, "storage.watch", "obj://ws1/pub/x/**"), /^PERMISSION/);
    // From here on every answer is a listing's (refusals name only the target asked for).
    const listed = seen.length;
    for (const target of ["obj://ws1/pub/x", "obj://ws1/pub", "obj://ws1/pub/a", "obj://ws1"]) {
      const r = await attempt(c, "storage.list", target);
      const over = target === "obj://ws1" ? "obj://ws1/**" : `${target}/**`;
      assert.ok(r.startsWith("PERMISSION") && r.includes(`a grant must cover ${over}`), `${target}: ${r}`);
    }
    // A grant of the exact prefix (or of the bare workspace) names the top only: the same answer.
    const dave = await t.persona("dave", [{ ops: ["storage.list"], targets: ["obj://ws1/pub/x", "obj://ws1"] }]);
    const d = await t.connect(dave.identity, [dave.token]);
    assert.match(await attempt(d, "storage.list", "obj://ws1/pub/x"), /^PERMISSION/);
    assert.match(await attempt(d, "storage.list", "obj://ws1"), /^PERMISSION/);
    // The same with the workspace in the request's context, and through an inline token.
    await assert.rejects(
      d.call("storage.list", "obj://ws1/pub/x", {}, { workspace: "ws1" }),
      (e) => e instanceof KpipError && e.errorClass === "PERMISSION",
    );
    await assert.rejects(
      d.call("storage.list", "obj://ws1/pub/x", {}, { caps: [dave.token] }),
      (e) => e instanceof KpipError && e.errorClass === "PERMISSION",
    );

    const leaks = seen.slice(listed).filter((s) => /hidden|deep|secret|priv/.test(s));
    assert.deepEqual(leaks, [], "nothing outside the grant came back");
    // Each refusal is on the record, under the caller, naming the target asked for.
    await until(() => refusals("carol", "storage.list", "obj://ws1/pub/x").length === 1 || undefined);
    const [rec] = refusals("carol", "storage.list", "obj://ws1/pub/x");
    assert.equal(rec?.status, "FAILURE");
    assert.match(rec?.message ?? "", /a grant must cover obj:\/\/ws1\/pub\/x\/\*\*/);
    await until(() => refusals("dave", "storage.list", "obj://ws1/pub/x").length === 3 || undefined);
    assert.equal(refusals("dave", "storage.list", "obj://ws1").length, 1);
  });

  it("a grant covering the subtree lists it: obj://ws1/** lists obj://ws1 and obj://ws1/pub/x; obj://ws1/pub/x/** only the latter", async () => {
    const erin = await t.persona("erin", [{ ops: ["storage.list"], targets: ["obj://ws1/**"] }]);
    const e = await t.connect(erin.identity, [erin.token]);
    assert.deepEqual(await paths(e, "obj://ws1"), [...OBJECTS].sort());
    assert.deepEqual(await paths(e, "obj://ws1/pub/x"), ["pub/x/deep/secret", "pub/x/hidden"]);
    const frank = await t.persona("frank", [{ ops: ["storage.*"], targets: ["obj://ws1/pub/x/**"] }]);
    const f = await t.connect(frank.identity, [frank.token]);
    assert.deepEqual(await paths(f, "obj://ws1/pub/x"), ["pub/x/deep/secret", "pub/x/hidden"]);
    assert.deepEqual(await paths(f, "obj://ws1/pub/x/deep"), ["pub/x/deep/secret"]);
    assert.match(await attempt(f, "storage.list", "obj://ws1/pub"), /^PERMISSION/);
    assert.match(await attempt(f, "storage.list", "obj://ws1"), /^PERMISSION/);
    // A workspace caveat keeps applying: the same grant narrowed to another workspace lists nothing.
    const g = await t.persona("gus", [{ ops: ["storage.list"], targets: ["obj://ws1/**"] }], { workspaces: ["ws2"] });
    const gc = await t.connect(g.identity, [g.token]);
    assert.match(await attempt(gc, "storage.list", "obj://ws1"), /^CAPABILITY|^PERMISSION/);
  });

  it("persona.list is authorized on the subtree it lists: persona://gina or persona://gina/* does not list gina's sub-personas", async () => {
    const gina = await t.persona("gina", [{ ops: ["persona.list"], targets: ["persona://gina", "persona://gina/*"] }]);
    await t.persona("gina/sub", [{ ops: ["system.health"], targets: ["kernel://"] }]);
    await t.persona("gina/sub/deep", [{ ops: ["system.health"], targets: ["kernel://"] }]);
    const g = await t.connect(gina.identity, [gina.token]);
    const before = seen.length;
    for (const target of ["persona://gina", "persona://gina/sub"]) {
      const r = await attempt(g, "persona.list", target);
      assert.ok(r.startsWith("PERMISSION") && r.includes(`a grant must cover ${target}/**`), `${target}: ${r}`);
    }
    assert.deepEqual(
      seen.slice(before).filter((s) => s.includes("deep")),
      [],
    );
    await until(() => refusals("gina", "persona.list", "persona://gina").length === 1 || undefined);
    // A grant over the subtree lists it, the persona at its top included.
    const wide = await admin.tokens.mint("gina", {
      rights: [{ ops: ["persona.list"], targets: ["persona://gina/**"] }],
      ttlMs: 600_000,
    });
    const w = await t.connect(gina.identity, [wide.token]);
    const listed = (await w.call("persona.list", "persona://gina")).payload as { personas: { persona: string }[] };
    assert.deepEqual(
      listed.personas.map((p) => p.persona),
      ["gina", "gina/sub", "gina/sub/deep"],
    );
  });

  it("persona.remove and resource.query on persona:// act only inside the caller's tree, whatever the grant: PERMISSION, audited, the other persona untouched", async () => {
    const wide = [{ ops: ["persona.*", "resource.query"], targets: ["persona://**"] }];
    const mallory = await t.persona("mallory", wide);
    const bob = await t.persona("bob", [{ ops: ["system.health", "resource.*"], targets: ["kernel://", "persona://bob"] }]);
    const m = await t.connect(mallory.identity, [mallory.token]);
    const b = await t.connect(bob.identity, [bob.token]);
    await b.call("resource.alloc", "persona://bob", { resource: "memory", amount: 4242 });

    const removal = await attempt(m, "persona.remove", "persona://bob");
    assert.match(removal, /^PERMISSION: mallory removes personas under mallory only/);
    const query = await attempt(m, "resource.query", "persona://bob");
    assert.match(query, /^PERMISSION: mallory queries personas under mallory only/);
    assert.ok(!query.includes("4242"));
    // Bob is untouched: registered, his session open, his token good.
    assert.ok(t.k.inspect.getPersona("bob"));
    assert.equal((await b.call("system.health", "kernel://")).status, "SUCCESS");
    await until(() => refusals("mallory", "persona.remove", "persona://bob").length === 1 || undefined);
    await until(() => refusals("mallory", "resource.query", "persona://bob").length === 1 || undefined);

    // Inside her tree the same grant works: she registers, queries and removes her own helper.
    const helper = generateIdentity("mallory/helper");
    await m.call("persona.register", "persona://mallory/helper", { publicKey: helper.publicKey });
    assert.equal(
      ((await m.call("resource.query", "persona://mallory/helper")).payload as { persona: string }).persona,
      "mallory/helper",
    );
    assert.equal(((await m.call("resource.query", "persona://mallory")).payload as { persona: string }).persona, "mallory");
    const removed = (await m.call("persona.remove", "persona://mallory/helper")).payload as { removed: string };
    assert.equal(removed.removed, "mallory/helper");
    // The admin still removes and queries anyone.
    const usage = (await admin.call("resource.query", "persona://bob")).payload as { usage: Record<string, number> };
    assert.equal(usage.usage.memory, 4242);
    await admin.call("persona.remove", "persona://bob");
    assert.equal(t.k.inspect.getPersona("bob"), undefined);
  });

  it("listing cursors (token.list, op.list, agent.list) are opaque: they do not count what other personas created between a persona's rows, and one made up, altered or of another listing is SEMANTIC", async () => {
    const mint = [
      { ops: ["token.mint"], targets: ["persona://kim/**"] },
      { ops: ["token.list", "op.list", "agent.list", "system.health"], targets: ["kernel://"] },
    ];
    const kim = await t.persona("kim", mint);
    const k = await t.connect(kim.identity, [kim.token]);
    const own = async () =>
      (await k.tokens.mint("kim/a", { rights: [{ ops: ["system.health"], targets: ["kernel://"] }], ttlMs: 60_000 })).id;
    const mine = [await own()];
    // Other personas' activity between kim's tokens: 25 tokens of the admin's.
    for (let i = 0; i < 25; i++)
      await admin.tokens.mint("someone", { rights: [{ ops: ["system.health"], targets: ["kernel://"] }], ttlMs: 60_000 });
    mine.push(await own(), await own());
    const cursors: string[] = [];
    const listed: string[] = [];
    let cursor: string | undefined;
    do {
      const r = await k.call("token.list", "kernel://", { limit: 1, ...(cursor ? { cursor } : {}) });
      const p = r.payload as { tokens: { id: string }[]; cursor?: string };
      listed.push(...p.tokens.map((x) => x.id));
      cursor = p.cursor;
      if (cursor) cursors.push(cursor);
    } while (cursor);
    // Every token kim sees (her own and the three she minted), each once, in order.
    assert.deepEqual(listed.slice(-3), mine);
    assert.equal(new Set(listed).size, listed.length);
    for (const c of cursors) assert.doesNotMatch(c, /^\d+$/, `a cursor is no row number: ${c}`);
    assert.equal(new Set(cursors.map((c) => c.length)).size, 1, "every cursor has one length, whatever its position");
    const [first] = cursors as [string];
    const altered = `${first.slice(0, 5)}${first[5] === "A" ? "B" : "A"}${first.slice(6)}`;
    for (const [op, c] of [
      ["token.list", altered],
      ["token.list", "12"],
      ["op.list", first],
      ["agent.list", first],
    ] as const) {
      await assert.rejects(k.call(op, "kernel://", { cursor: c }), klass("SEMANTIC", "cursor"), `${op} ${c}`);
    }
  });

  it("resource.query answers a workspace's usage only for its bare address: a grant over one object is SEMANTIC through that object's address, PERMISSION for the workspace", async () => {
    const usage = (r: string) => /"storage\.bytes":(\d+)/.exec(r)?.[1];
    const whole = (await admin.call("resource.query", "obj://ws1")).payload as { usage: Record<string, number> };
    assert.ok((whole.usage["storage.bytes"] ?? 0) > 0);
    const hal = await t.persona("hal", [
      { ops: ["resource.query", "storage.read"], targets: ["obj://ws1/pub/a", "obj://ws1/pub/x/**"] },
    ]);
    const h = await t.connect(hal.identity, [hal.token]);
    assert.match(await attempt(h, "storage.read", "obj://ws1/pub/a"), /^ALLOWED/);
    const through = [
      await attempt(h, "resource.query", "obj://ws1/pub/a"),
      await attempt(h, "resource.query", "obj://ws1/pub/x/hidden"),
    ];
    for (const r of through) assert.match(r, /^SEMANTIC: resource\.query takes a workspace, obj:\/\/<ws>, not an object/);
    assert.match(await attempt(h, "resource.query", "obj://ws1"), /^PERMISSION/);
    for (const r of through) assert.equal(usage(r), undefined, "no usage figure came back");
    // A grant that covers the workspace reads its usage, as before.
    const ivy = await t.persona("ivy", [{ ops: ["resource.query"], targets: ["obj://ws1/**"] }]);
    const i = await t.connect(ivy.identity, [ivy.token]);
    const mine = (await i.call("resource.query", "obj://ws1")).payload as { workspace: string; usage: Record<string, number> };
    assert.equal(mine.workspace, "ws1");
    assert.equal(mine.usage["storage.bytes"], whole.usage["storage.bytes"]);
  });
});

describe("listing cursors across a restart", () => {
  it("a token.list cursor handed out before a kernel restart pages on after it, to the same rows", async () => {
    let t = await startKernel();
    const home = t.home;
    try {
      const admin = await t.admin();
      const health = [{ ops: ["system.health"], targets: ["kernel://"] }];
      for (let i = 0; i < 3; i++) await admin.tokens.mint(`p${i}`, { rights: health, ttlMs: 600_000 });
      const page = async (c: KernelClient, cursor?: string) =>
        (await c.call("token.list", "kernel://", { limit: 2, ...(cursor ? { cursor } : {}) })).payload as {
          tokens: { id: string }[];
          cursor?: string;
        };
      const first = await page(admin);
      const rest = (await page(admin, first.cursor)).tokens.map((x) => x.id);
      await t.stop();
      t = await startKernel({}, home);
      const again = await t.admin();
      assert.deepEqual(
        (await page(again, first.cursor)).tokens.map((x) => x.id),
        rest,
      );
    } finally {
      await t.stop();
      removeHome(home);
    }
  });
});
