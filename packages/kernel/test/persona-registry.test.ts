import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { KernelClient, KernelUnavailableError, KpipError } from "@kpip/client";
import { decodeToken, generateIdentity } from "@kpip/protocol";
import { verifyAudit } from "../src/audit/verify.js";
import { HOME_FILES, SqliteStore } from "../src/index.js";
import { addPersonaKey, kernelForSuite, klass, removeHome, runExample, sandboxSkip, startKernel, until } from "./harness.js";

const closedWith = (c: KernelClient) => new Promise<Error>((resolve) => c.once("closed", (e: Error) => resolve(e)));

describe("the persona registry through the kernel: persona.register / remove / list", () => {
  const suite = kernelForSuite();

  it("registers a persona that can attest at once, and audits it as the admin's act", async () => {
    const carol = generateIdentity("carol");
    const r = await suite.admin.call("persona.register", "persona://carol", { publicKey: carol.publicKey });
    assert.equal((r.payload as { persona: string }).persona, "carol");
    assert.deepEqual(suite.t.k.inspect.getPersona("carol")?.publicKey, Buffer.from(carol.publicKey));
    const token = (
      await suite.admin.tokens.mint("carol", { rights: [{ ops: ["system.*"], targets: ["kernel://"] }], ttlMs: 60_000 })
    ).token;
    const c = await suite.t.connect(carol, [token]);
    assert.equal((await c.call("system.health", "kernel://")).status, "SUCCESS");
    const recs = suite.t.k.inspect
      .queryAudit({ op: "persona.register", limit: 10 })
      .filter((x) => x.target === "persona://carol");
    assert.deepEqual(
      recs.map((x) => [x.phase, x.persona, x.target, x.status]).sort(),
      [
        ["intent", "admin", "persona://carol", null],
        ["outcome", "admin", "persona://carol", "SUCCESS"],
      ].sort(),
    );
  });

  it("refuses a second registration, a key that is not 32 bytes and a target that is not a persona id (in any segment)", async () => {
    const again = await suite.admin
      .call("persona.register", "persona://carol", { publicKey: generateIdentity("carol").publicKey })
      .catch((e) => e);
    assert.ok(again instanceof KpipError && again.errorClass === "SEMANTIC", String(again));
    const short = await suite.admin.call("persona.register", "persona://dan", { publicKey: Buffer.alloc(31) }).catch((e) => e);
    assert.ok(short instanceof KpipError && short.errorClass === "SEMANTIC", String(short));
    const noKey = await suite.admin.call("persona.register", "persona://dan", {}).catch((e) => e);
    assert.ok(noKey instanceof KpipError && noKey.errorClass === "SEMANTIC", String(noKey));
    // Refused by the intent grammar before it leaves the client (the kernel checks the same grammar).
    const bad = await suite.admin.call("persona.register", "persona://Dan", { publicKey: Buffer.alloc(32, 1) }).catch((e) => e);
    assert.ok(bad instanceof Error && bad.name === "IntentError", String(bad));
    // PROTOCOL §7.3 rule 4: the grammar checks only the first segment; the op checks the rest (SEMANTIC).
    const later = await suite.admin
      .call("persona.register", "persona://dan/Helper~1", { publicKey: Buffer.alloc(32, 1) })
      .catch((e) => e);
    assert.ok(later instanceof KpipError && later.errorClass === "SEMANTIC", String(later));
    assert.equal(suite.t.k.inspect.getPersona("dan"), undefined);
  });

  it("needs a grant: none at all is refused, a grant over one's own sub-personas covers only those", async () => {
    const plain = await suite.t.persona("pat", [{ ops: ["system.*"], targets: ["kernel://"] }]);
    const p = await suite.t.connect(plain.identity, [plain.token]);
    const refused = await p.call("persona.register", "persona://pat/helper", { publicKey: Buffer.alloc(32, 2) }).catch((e) => e);
    assert.ok(refused instanceof KpipError && ["PERMISSION", "CAPABILITY"].includes(refused.errorClass), String(refused));
    assert.equal(suite.t.k.inspect.getPersona("pat/helper"), undefined);

    const owner = await suite.t.persona("olga", [{ ops: ["persona.*"], targets: ["persona://olga/**"] }]);
    const o = await suite.t.connect(owner.identity, [owner.token]);
    const w = generateIdentity("olga/worker");
    await o.call("persona.register", "persona://olga/worker", { publicKey: w.publicKey });
    const list = (await o.call("persona.list", "persona://olga/worker")).payload as { personas: { persona: string }[] };
    assert.deepEqual(
      list.personas.map((x) => x.persona),
      ["olga/worker"],
    );
    const other = await o.call("persona.register", "persona://pat/x", { publicKey: Buffer.alloc(32, 3) }).catch((e) => e);
    assert.ok(other instanceof KpipError && other.errorClass === "PERMISSION", String(other));
    const wide = await o.call("persona.list", "persona://pat").catch((e) => e);
    assert.ok(wide instanceof KpipError && wide.errorClass === "PERMISSION", String(wide));
    await o.call("persona.remove", "persona://olga/worker");
    assert.equal(suite.t.k.inspect.getPersona("olga/worker"), undefined);
  });

  it("removal ends the persona's sessions at once, revokes its tokens, and a new key under the id inherits nothing", async () => {
    const eve = await suite.t.persona("eve", [{ ops: ["system.*"], targets: ["kernel://"] }]);
    const c = await suite.t.connect(eve.identity, [eve.token]);
    const closed = closedWith(c);
    const r = await suite.admin.call("persona.remove", "persona://eve");
    assert.deepEqual(r.payload, { removed: "eve", alsoRemoved: [], sessionsEnded: 1, tokensRevoked: 1 });
    const err = await closed;
    assert.ok(err instanceof KpipError && err.errorClass === "AUTH" && err.code === "PERSONA_REMOVED", String(err));
    assert.equal(c.state, "closed", "a removed persona's client does not reconnect");
    await assert.rejects(c.call("system.health", "kernel://"), KernelUnavailableError);
    await assert.rejects(
      KernelClient.connect({ socket: suite.t.k.socketPath, identity: eve.identity, tokens: [], reconnect: false }),
      (e: unknown) => e instanceof KpipError && e.errorClass === "AUTH",
    );
    const audited = suite.t.k.inspect.queryAudit({ persona: "eve", op: "session.error", limit: 5 });
    assert.ok(
      audited.some((x) => x.message?.startsWith("PERSONA_REMOVED")),
      JSON.stringify(audited),
    );

    // Someone else registered as eve later must not be able to use what the old eve held.
    const newEve = generateIdentity("eve");
    await suite.admin.call("persona.register", "persona://eve", { publicKey: newEve.publicKey });
    const c2 = await suite.t.connect(newEve, [eve.token]);
    assert.equal(c2.refusedTokens.length, 1);
    assert.equal(c2.refusedTokens[0]?.code, "REVOKED");
  });

  it("removal revokes the tokens the persona minted from its parent's token, and what was minted from them, in the removal's record", async () => {
    const status = async (tok: Uint8Array) =>
      (
        (await suite.admin.call("token.inspect", `token://${decodeToken(tok).claims.id}`, { token: tok })).payload as {
          status: string;
        }
      ).status;
    const rights = [{ ops: ["system.*", "token.mint"], targets: ["kernel://", "persona://vic", "persona://vic/**"] }];
    const vic = await suite.t.persona("vic", rights);
    const bot = await suite.t.persona("vic/bot", [{ ops: ["system.*"], targets: ["kernel://"] }]);
    // The sub-persona uses its parent's token (its subject is above it) to mint for the parent.
    const b = await suite.t.connect(bot.identity, [bot.token, vic.token]);
    const minted = (await b.tokens.mint("vic", { rights, ttlMs: 60_000 }, { caps: [vic.token] })).token;
    const v = await suite.t.connect(vic.identity, [vic.token]);
    const grandchild = (await v.tokens.mint("vic", { rights: rights.slice(0, 1), ttlMs: 30_000 }, { caps: [minted] })).token;
    assert.equal(await status(minted), "valid");

    const r = await suite.admin.call("persona.remove", "persona://vic/bot");
    assert.deepEqual(r.payload, { removed: "vic/bot", alsoRemoved: [], sessionsEnded: 1, tokensRevoked: 2 });
    assert.equal(await status(minted), "revoked", "minted by the removed persona");
    assert.equal(await status(grandchild), "revoked", "minted from a token it minted");
    assert.equal(await status(vic.token), "valid", "the parent's own token stays");
    // On the record of the removal, as any revocation is: every token it ended; refusals name that record.
    const rec = suite.t.k.inspect
      .queryAudit({ op: "persona.remove", limit: 50 })
      .find((x) => x.phase === "outcome" && x.target === "persona://vic/bot");
    const id = (x: Uint8Array) => decodeToken(x).claims.id;
    await assert.rejects(
      v.call("system.health", "kernel://", {}, { caps: [minted] }),
      klass("CAPABILITY", new RegExp(`^token ${id(minted)} is revoked \\(audit record ${rec?.seq}\\)$`)),
    );
    await assert.rejects(
      v.call("system.health", "kernel://", {}, { caps: [grandchild] }),
      klass("CAPABILITY", new RegExp(`its ancestor ${id(minted)} was revoked \\(audit record ${rec?.seq}\\)$`)),
    );
    assert.equal((await v.call("system.health", "kernel://", {}, { caps: [vic.token] })).status, "SUCCESS");
    const ended = (JSON.parse(rec?.detail ?? "{}") as { ended?: string[] }).ended ?? [];
    assert.deepEqual([...ended].sort(), [bot.token, minted, grandchild].map(id).sort());
  });

  it("a persona registered again under a removed id sees none of the removed one's ops, agents or tokens", {
    skip: sandboxSkip,
  }, async () => {
    // The tree's owner hands a worker name to one holder, removes it, and gives the name to another.
    const owner = await suite.t.persona("oli", [
      {
        ops: ["persona.*", "token.*", "compute.submit", "op.*", "agent.*"],
        targets: ["persona://oli/**", "token://**", "kernel://", "op://**", "agent://**"],
      },
    ]);
    const o = await suite.t.connect(owner.identity, [owner.token]);
    const work = [{ ops: ["compute.submit", "op.*", "agent.*", "token.list"], targets: ["op://**", "agent://**", "kernel://"] }];
    const first = generateIdentity("oli/w");
    await o.call("persona.register", "persona://oli/w", { publicKey: first.publicKey });
    const t1 = (await o.tokens.mint("oli/w", { rights: work, ttlMs: 600_000 })).token;
    const w1 = await suite.t.connect(first, [t1]);
    const d = await w1.call("compute.submit", "op://command/sh", { args: ["-c", "echo first-holder-secret"] });
    const op = (d.payload as { op: string }).op;
    await until(
      async () => ((await w1.call("op.status", op)).payload as { state: string }).state === "succeeded" || undefined,
      30_000,
      "the op done",
    );
    await w1.call("agent.spawn", "agent://echo/a1", { args: ["agent-secret"], rights: [], lifetimeMs: 60_000 });
    await until(() => suite.t.k.inspect.getAgent("oli/w/echo/a1")?.state === "exited" || undefined, 30_000, "the agent ended");
    const ownerSaw = ((await o.call("token.list", "kernel://", {})).payload as { tokens: { id: string }[] }).tokens.map(
      (x) => x.id,
    );
    assert.ok(ownerSaw.includes(decodeToken(t1).claims.id));

    await o.call("persona.remove", "persona://oli/w");
    const second = generateIdentity("oli/w");
    await o.call("persona.register", "persona://oli/w", { publicKey: second.publicKey });
    const t2 = (await o.tokens.mint("oli/w", { rights: work, ttlMs: 600_000 })).token;
    const w2 = await suite.t.connect(second, [t2]);
    assert.deepEqual((await w2.call("op.list", "kernel://", {})).payload, { ops: [] });
    await assert.rejects(w2.call("op.result", op), klass("SEMANTIC", /^no op /));
    assert.deepEqual((await w2.call("agent.list", "kernel://", {})).payload, { agents: [] });
    await assert.rejects(w2.call("agent.logs", "agent://echo/a1"), klass("SEMANTIC", /^no agent /));
    const listed = ((await w2.call("token.list", "kernel://", {})).payload as { tokens: { id: string }[] }).tokens;
    assert.deepEqual(
      listed.map((x) => x.id),
      [decodeToken(t2).claims.id],
      "its own token only: none of the first holder's",
    );
    // Those above still see what the removed persona held, and the admin sees the op and marks it.
    const ownerSees = ((await o.call("token.list", "kernel://", {})).payload as { tokens: { id: string }[] }).tokens.map(
      (x) => x.id,
    );
    assert.ok(ownerSees.includes(decodeToken(t1).claims.id), "the owner keeps the removed holder's tokens in its list");
    const r = await suite.admin.call("op.result", op);
    assert.match(Buffer.from((r.payload as { result: { stdout: Uint8Array } }).result.stdout).toString(), /first-holder-secret/);
    const all = ((await suite.admin.call("op.list", "kernel://", {})).payload as { ops: { op: string; spawn?: string }[] }).ops;
    assert.equal(all.find((x) => x.op === op)?.spawn, "removed");
  });

  it("session.open names the key the persona attested with, and a registration the key it registered: a key put in the registry off the record is told apart", async () => {
    const b64 = (k: Uint8Array) => Buffer.from(k).toString("base64url");
    const first = generateIdentity("kay");
    await suite.admin.call("persona.register", "persona://kay", { publicKey: first.publicKey });
    const tok = (await suite.admin.tokens.mint("kay", { rights: [{ ops: ["system.*"], targets: ["kernel://"] }], ttlMs: 60_000 }))
      .token;
    await (await suite.t.connect(first, [tok])).close();
    // Someone who can write the home's database (not its keys) swaps kay's key for theirs, off the record.
    const planted = generateIdentity("kay");
    addPersonaKey(suite.t, "kay", planted.publicKey);
    await (await suite.t.connect(planted, [tok])).close();
    const detail = (r: { detail?: string | null } | undefined) => JSON.parse(r?.detail ?? "{}") as { key?: string };
    const registered = suite.t.k.inspect
      .queryAudit({ op: "persona.register", limit: 100 })
      .filter((r) => r.phase === "outcome" && r.target === "persona://kay");
    assert.deepEqual(
      registered.map((r) => detail(r).key),
      [b64(first.publicKey)],
    );
    const opens = await until(
      () => {
        const o = suite.t.k.inspect.queryAudit({ persona: "kay", op: "session.open", limit: 10 });
        return o.length === 2 ? o : undefined;
      },
      10_000,
      "both opens on the record",
    );
    assert.deepEqual(
      opens.map((r) => detail(r).key),
      [b64(first.publicKey), b64(planted.publicKey)],
      "each open names its key: the second, one no registration record names",
    );
  });

  it("refuses to remove the admin persona or oneself, and an unknown persona", async () => {
    const self = await suite.admin.call("persona.remove", "persona://admin").catch((e) => e);
    assert.ok(self instanceof KpipError && self.errorClass === "PERMISSION", String(self));
    const owner = await suite.t.persona("sam", [{ ops: ["persona.*"], targets: ["persona://sam", "persona://sam/**"] }]);
    const s = await suite.t.connect(owner.identity, [owner.token]);
    const own = await s.call("persona.remove", "persona://sam").catch((e) => e);
    assert.ok(own instanceof KpipError && own.errorClass === "PERMISSION", String(own));
    const unknown = await suite.admin.call("persona.remove", "persona://nobody").catch((e) => e);
    assert.ok(unknown instanceof KpipError && unknown.errorClass === "SEMANTIC", String(unknown));
    assert.ok(suite.t.k.inspect.getPersona("admin") && suite.t.k.inspect.getPersona("sam"));
  });

  it("removing a persona kills the agents running as it or its sub-personas", { skip: sandboxSkip }, async () => {
    const p = await suite.t.persona("ann", [{ ops: ["agent.*"], targets: ["agent://**", "kernel://"] }]);
    const c = await suite.t.connect(p.identity, [p.token]);
    await c.call("agent.spawn", "agent://sleep/annie", { args: ["30"], rights: [], lifetimeMs: 60_000 });
    assert.equal(suite.t.k.inspect.getAgent("ann/sleep/annie")?.state, "running");
    // Another program under the same instance name would act as the same persona: refused.
    const twin = await c.call("agent.spawn", "agent://cat/annie", { args: [], rights: [], lifetimeMs: 60_000 }).catch((e) => e);
    assert.ok(twin instanceof KpipError && twin.errorClass === "SEMANTIC" && /already used/.test(twin.message), String(twin));
    await suite.admin.call("persona.remove", "persona://ann");
    const a = await until(
      () => {
        const rec = suite.t.k.inspect.getAgent("ann/sleep/annie");
        return rec?.state === "killed" ? rec : undefined;
      },
      30_000,
      "the agent killed",
    );
    assert.equal(a.persona, "ann/agent.annie");
    assert.equal(suite.t.k.inspect.getPersona("ann/agent.annie"), undefined);
  });

  it("a sub-persona cannot remove the persona above it", async () => {
    // sam/w holds a token over sam's whole tree (sub-personas may use tokens of their parent's grant).
    const w = await suite.t.persona("sam/w", [{ ops: ["persona.*"], targets: ["persona://sam", "persona://sam/**"] }]);
    const c = await suite.t.connect(w.identity, [w.token]);
    const up = await c.call("persona.remove", "persona://sam").catch((e) => e);
    assert.ok(up instanceof KpipError && up.errorClass === "PERMISSION", String(up));
    assert.ok(suite.t.k.inspect.getPersona("sam"));
  });

  it("removing a persona removes its sub-personas too, ending their sessions", async () => {
    const top = await suite.t.persona("tom", [{ ops: ["system.*"], targets: ["kernel://"] }]);
    const sub = await suite.t.persona("tom/helper", [{ ops: ["system.*"], targets: ["kernel://"] }]);
    const ct = await suite.t.connect(top.identity, [top.token]);
    const cs = await suite.t.connect(sub.identity, [sub.token]);
    const closed = Promise.all([closedWith(ct), closedWith(cs)]);
    const r = await suite.admin.call("persona.remove", "persona://tom");
    assert.deepEqual(r.payload, { removed: "tom", alsoRemoved: ["tom/helper"], sessionsEnded: 2, tokensRevoked: 2 });
    for (const e of await closed) assert.ok(e instanceof KpipError && e.code === "PERSONA_REMOVED", String(e));
    assert.equal(suite.t.k.inspect.getPersona("tom/helper"), undefined);
  });
});

describe("registry changes made without the kernel are audited, once", () => {
  it("moves the offline journal into the chain at start, and applies an offline removal to a running kernel", async () => {
    let t = await startKernel();
    const home = t.home;
    const first = t.k.inspect.queryAudit({ op: "persona.register", limit: 5 });
    assert.ok(
      first.some((x) => x.phase === "offline" && x.target === "persona://admin"),
      "the admin created at first start is on the record",
    );
    await t.stop();

    // As the CLI does while no kernel runs: the change and its journal entry in one transaction.
    const dave = generateIdentity("dave");
    const offline = new SqliteStore(join(home, HOME_FILES.database));
    // A change that changed nothing leaves no journal entry.
    offline.withJournal({ actor: "test", op: "persona.remove", target: "persona://ghost", message: "nothing" }, () =>
      offline.removePersona("ghost"),
    );
    assert.deepEqual(offline.offlineJournal(), []);
    offline.withJournal({ actor: "test", op: "persona.register", target: "persona://dave", message: "registered offline" }, () =>
      offline.addPersona("dave", dave.publicKey),
    );
    offline.close();

    t = await startKernel({ heartbeatMs: 200 }, home);
    const recs = () => t.k.inspect.queryAudit({ op: "persona.register", limit: 10 }).filter((x) => x.target === "persona://dave");
    assert.equal(recs().length, 1);
    assert.equal(recs()[0]?.phase, "offline");
    assert.match(recs()[0]?.message ?? "", /registered offline \(by test at /);
    assert.deepEqual(t.k.inspect.offlineJournal(), []);

    // dave connects; then an offline removal (another process on the same database) ends his session.
    const admin = await t.admin();
    const token = (await admin.tokens.mint("dave", { rights: [{ ops: ["system.*"], targets: ["kernel://"] }], ttlMs: 60_000 }))
      .token;
    const c = await t.connect(dave, [token]);
    const closed = closedWith(c);
    const other = new SqliteStore(join(home, HOME_FILES.database));
    other.withJournal({ actor: "test", op: "persona.remove", target: "persona://dave", message: "removed offline" }, () => {
      other.removePersona("dave");
      for (const tk of other.listTokens("dave")) other.revokeToken(tk.id, "test", Date.now());
    });
    other.close();
    const err = await closed;
    assert.ok(err instanceof KpipError && err.code === "PERSONA_REMOVED", String(err));
    await until(() => t.k.inspect.offlineJournal().length === 0, 30_000, "journal drained");
    const removal = t.k.inspect.queryAudit({ op: "persona.remove", limit: 5 });
    assert.equal(removal.length, 1);
    assert.equal(removal[0]?.phase, "offline");

    // Removed and registered again under a new key before the kernel looked: the session that
    // attested with the old key still ends; one with the new key is kept.
    const erin = generateIdentity("erin");
    const erin2 = generateIdentity("erin");
    const s1 = new SqliteStore(join(home, HOME_FILES.database));
    s1.withJournal({ actor: "test", op: "persona.register", target: "persona://erin", message: "registered" }, () =>
      s1.addPersona("erin", erin.publicKey),
    );
    await until(() => t.k.inspect.offlineJournal().length === 0, 30_000, "journal drained");
    const erinToken = (
      await admin.tokens.mint("erin", { rights: [{ ops: ["system.*"], targets: ["kernel://"] }], ttlMs: 60_000 })
    ).token;
    const old = await t.connect(erin, [erinToken]);
    const oldClosed = closedWith(old);
    s1.withJournal({ actor: "test", op: "persona.remove", target: "persona://erin", message: "removed" }, () =>
      s1.removePersona("erin"),
    );
    s1.withJournal({ actor: "test", op: "persona.register", target: "persona://erin", message: "registered again" }, () =>
      s1.addPersona("erin", erin2.publicKey),
    );
    s1.close();
    const why = await oldClosed;
    assert.ok(why instanceof KpipError && why.code === "PERSONA_REMOVED", String(why));
    const fresh = await t.connect(erin2, []);
    await until(() => t.k.inspect.offlineJournal().length === 0, 30_000, "journal drained");
    assert.equal(fresh.state, "ready", "the session attested with the new key is kept");

    // A second kernel on this home while the first serves writes nothing before it is refused.
    const s2 = new SqliteStore(join(home, HOME_FILES.database));
    s2.withJournal({ actor: "test", op: "persona.register", target: "persona://fay", message: "registered" }, () =>
      s2.addPersona("fay", generateIdentity("fay").publicKey),
    );
    s2.close();
    await assert.rejects(startKernel({}, home), (e: unknown) => e instanceof Error && e.name === "HomeInUseError");
    await until(() => t.k.inspect.offlineJournal().length === 0, 30_000, "journal drained");
    assert.equal(
      t.k.inspect.queryAudit({ op: "persona.register", limit: 50 }).filter((x) => x.target === "persona://fay").length,
      1,
    );
    assert.equal((await admin.call("system.health", "kernel://")).status, "SUCCESS");
    await t.stop();

    // A restart records nothing twice, and the chain verifies.
    t = await startKernel({}, home);
    assert.equal(recs().length, 1);
    assert.deepEqual(
      t.k.inspect
        .queryAudit({ op: "persona.remove", limit: 5 })
        .map((x) => x.target)
        .sort(),
      ["persona://dave", "persona://erin"],
    );
    await t.stop();
    const store = new SqliteStore(join(home, HOME_FILES.database));
    try {
      assert.equal(verifyAudit(store).ok, true);
    } finally {
      store.close();
    }
    removeHome(home);
  });
});

describe("examples/sub-personas.ts", () => {
  it("runs: a persona registers a worker, the worker acts within its token, removal ends its session", async () => {
    const r = await runExample("sub-personas");
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /alice's personas: \[ 'alice\/worker-1' \]/);
    assert.match(r.out, /worker reading \(not granted\): PERMISSION/);
    assert.match(
      r.out,
      /removed: \{\s+removed: 'alice\/worker-1',\s+alsoRemoved: \[\],\s+sessionsEnded: 1,\s+tokensRevoked: 1\s+\}/,
    );
    assert.match(r.out, /worker session ended: AUTH PERSONA_REMOVED/);
    assert.match(r.out, /alice registering bob: PERMISSION/);
  });
});

describe("a long offline journal", () => {
  it("is recorded in batches, each entry exactly once", async () => {
    let t = await startKernel({ auditBatchMax: 64 });
    const home = t.home;
    await t.stop();
    const store = new SqliteStore(join(home, HOME_FILES.database));
    for (let i = 0; i < 300; i++) {
      store.withJournal({ actor: "test", op: "persona.register", target: `persona://bulk${i}`, message: "bulk" }, () =>
        store.addPersona(`bulk${i}`, generateIdentity(`bulk${i}`).publicKey),
      );
    }
    store.close();
    t = await startKernel({ auditBatchMax: 64 }, home);
    const recs = t.k.inspect
      .queryAudit({ op: "persona.register", limit: 1000 })
      .filter((x) => x.target?.startsWith("persona://bulk"));
    assert.equal(recs.length, 300);
    assert.equal(new Set(recs.map((x) => x.target)).size, 300);
    assert.deepEqual(t.k.inspect.offlineJournal(), []);
    await t.stop();
    removeHome(home);
  });
});
