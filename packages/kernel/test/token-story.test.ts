import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { attenuate, decodeToken, derivedTokenId, encodeToken, generateIdentity, type Identity, type Token } from "@kpip/protocol";
import type { AuditRow } from "../src/store/types.js";
import { addPersonaKey, klass, removeHome, startKernel, type TestKernel, until } from "./harness.js";

type Rec = AuditRow & { d: Record<string, unknown> };
const records = (t: TestKernel, op: string): Rec[] =>
  t.k.inspect.queryAudit({ op, limit: 1000 }).map((r) => ({ ...r, d: JSON.parse(r.detail ?? "null") }));
const tokenOf = (r: Rec | undefined) => r?.d.token as Record<string, unknown> | undefined;

/** `token` narrowed offline to `sub` and to exactly these (op, target) pairs. */
const delegate = (token: Uint8Array, sub: string, pairs: [string, string][]): Token =>
  attenuate(attenuate(decodeToken(token), { t: "rights", v: pairs }), { t: "sub", v: sub });

describe("tokens on the record, pairs kept, delegated refresh", () => {
  let t: TestKernel;
  let alice: { identity: Identity; token: Uint8Array; id: string };
  const worker = generateIdentity("alice/w");
  before(async () => {
    t = await startKernel();
    alice = await t.persona(
      "alice",
      [
        { ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] },
        { ops: ["token.*"], targets: ["token://**", "persona://alice/**"] },
      ],
      { ttlMs: 3_600_000 },
    );
    addPersonaKey(t, "alice/w", worker.publicKey);
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  it("token.mint's outcome names the token: id, parent, subject, rights as (op, target) pairs, caveats, expiry", () => {
    const mint = records(t, "token.mint").find((r) => r.phase === "outcome" && tokenOf(r)?.id === alice.id);
    const d = tokenOf(mint);
    const admin = decodeToken(Buffer.from(t.adminToken, "base64url")).claims.id;
    assert.equal(d?.parent, admin);
    assert.equal(d?.sub, "alice");
    assert.deepEqual(d?.rights, [
      ["storage.read", "obj://ws1/**"],
      ["storage.write", "obj://ws1/**"],
      ["token.*", "token://**"],
      ["token.*", "persona://alice/**"],
    ]);
    assert.deepEqual(d?.caveats, []);
    assert.equal(d?.exp, decodeToken(alice.token).claims.exp);
    assert.equal(mint?.d.status, "SUCCESS");
  });

  it("a rights caveat keeps pairs: read here and write there never becomes write here; minting from it cannot widen", async () => {
    const pairs = attenuate(decodeToken(alice.token), {
      t: "rights",
      v: [
        ["storage.read", "obj://ws1/a/**"],
        ["storage.write", "obj://ws1/b/**"],
        ["token.mint", "persona://alice/**"],
      ],
    });
    const c = await t.connect(alice.identity, [encodeToken(pairs)]);
    await c.storage.write("obj://ws1/b/x", Buffer.from("ok"));
    await assert.rejects(c.storage.write("obj://ws1/a/x", Buffer.from("no")), klass("PERMISSION"));
    await assert.rejects(c.storage.read("obj://ws1/b/x"), klass("PERMISSION"));
    await assert.rejects(
      c.tokens.mint("alice", { rights: [{ ops: ["storage.write"], targets: ["obj://ws1/a/**"] }], ttlMs: 60_000 }),
      klass("PERMISSION", /escalation/),
    );
    await c.close();
  });

  it("a derived token has its own id: on the session record, on its requests, and recorded once when first used", async () => {
    const d = delegate(alice.token, "alice/w", [["storage.read", "obj://ws1/**"]]);
    const id = derivedTokenId(d);
    assert.notEqual(id, alice.id);
    for (let i = 0; i < 2; i++) {
      const c = await t.connect(worker, [encodeToken(d)]);
      await c.storage.read("obj://ws1/b/x");
      await c.close();
    }
    const derived = records(t, "token.derived").filter((r) => tokenOf(r)?.id === id);
    assert.equal(derived.length, 1, "recorded once per run");
    assert.equal(derived[0]?.phase, "kernel");
    assert.equal(derived[0]?.persona, "alice/w");
    assert.equal(tokenOf(derived[0])?.parent, alice.id);
    assert.equal(tokenOf(derived[0])?.sub, "alice/w");
    assert.deepEqual(
      ((tokenOf(derived[0])?.caveats ?? []) as { t: string }[]).map((c) => c.t),
      ["rights", "sub"],
    );
    const opens = t.k.inspect.queryAudit({ op: "session.open", persona: "alice/w", limit: 10 });
    assert.ok(
      opens.every((r) => r.caps === `h1:${id}`),
      JSON.stringify(opens.map((r) => r.caps)),
    );
    const reads = t.k.inspect.queryAudit({ op: "storage.read", persona: "alice/w", limit: 10 });
    assert.ok(reads.length >= 2 && reads.every((r) => r.caps === `h1:${id}`));
  });

  it("a derived token only refused (inline) leaves no token.derived record: refusals stay within the refusal limiter", async () => {
    const c = await t.connect(worker, [encodeToken(delegate(alice.token, "alice/w", [["storage.read", "obj://ws1/**"]]))]);
    const fresh = delegate(alice.token, "alice/w", [["storage.read", "obj://ws1/c/**"]]);
    await assert.rejects(
      c.call("storage.write", "obj://ws1/c/x", { data: Buffer.from("x") }, { caps: [encodeToken(fresh)] }),
      klass("PERMISSION"),
    );
    const refused = t.k.inspect.queryAudit({ op: "storage.write", persona: "alice/w", limit: 5 }).at(-1);
    assert.equal(refused?.caps, `inline:${derivedTokenId(fresh)}`);
    assert.equal(records(t, "token.derived").filter((r) => tokenOf(r)?.id === derivedTokenId(fresh)).length, 0);
    await c.storage.read("obj://ws1/c/x", { caps: [encodeToken(fresh)] }).catch(() => {});
    assert.equal(records(t, "token.derived").filter((r) => tokenOf(r)?.id === derivedTokenId(fresh)).length, 1);
    await c.close();
  });

  it("a delegated worker's client refreshes the token narrowed to it, never wider nor past the chain's maximum", async () => {
    const admin = await t.admin();
    const short = await admin.tokens.mint("alice", {
      rights: [{ ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] }],
      ttlMs: 3_000,
      maxLifetimeMs: 3_600_000,
    });
    const d = delegate(short.token, "alice/w", [["storage.read", "obj://ws1/**"]]);
    const c = await t.connect(worker, [encodeToken(d)], { refreshMarginMs: 60_000 });
    const refreshed = await new Promise<{ id: string; exp: number }>((resolve, reject) => {
      c.once("tokenRefreshed", resolve);
      c.once("tokenRefreshFailed", reject);
    });
    const fresh = decodeToken(Buffer.from(c.heldTokens[0] as string, "base64url"));
    assert.equal(fresh.claims.id, refreshed.id);
    assert.deepEqual(fresh.caveats, d.caveats, "every caveat kept: still the worker's, still read-only");
    assert.ok(fresh.claims.maxExp <= decodeToken(short.token).claims.maxExp);
    await c.storage.read("obj://ws1/b/x");
    await assert.rejects(c.storage.write("obj://ws1/b/x", Buffer.from("no")), klass("PERMISSION"));
    const rec = records(t, "token.refresh").find((r) => r.phase === "outcome" && tokenOf(r)?.minted === fresh.claims.id);
    assert.equal(rec?.persona, "alice/w");
    assert.equal(tokenOf(rec)?.id, derivedTokenId(fresh));
    assert.equal(tokenOf(rec)?.parent, derivedTokenId(d));
    assert.equal(tokenOf(rec)?.sub, "alice/w");
    // A token narrowed to a sibling is not the worker's to refresh (nor to use).
    const sibling = delegate(short.token, "alice/other", [["storage.read", "obj://ws1/**"]]);
    await assert.rejects(
      c.call("token.refresh", `token://${short.id}`, { token: encodeToken(sibling) }, { caps: [encodeToken(d)] }),
      klass("PERMISSION", /another persona/),
    );
    await c.close();
  });

  it("a token refused at the handshake is on the session record, with its class and id", async () => {
    const bob = generateIdentity("bob");
    addPersonaKey(t, "bob", bob.publicKey);
    const c = await t.connect(bob, [alice.token]);
    const open = await until(
      () => t.k.inspect.queryAudit({ op: "session.open", persona: "bob", limit: 5 })[0],
      30_000,
      "bob's session record",
    );
    assert.equal(open.errorClass, "CAPABILITY");
    assert.equal(open.caps, `refused:${alice.id}`);
    assert.match(open.message ?? "", /1 token\(s\) refused: token [0-9a-f]{32} is not usable by persona bob/);
    assert.deepEqual(JSON.parse(open.detail ?? "{}").refused, [{ code: "WRONG_PERSONA", index: 0, token: alice.id }]);
    await c.close();
  });

  it("a token whose signature does not verify is named unverified:<the id it claims>, on a refusal and at the handshake, never as that token", async () => {
    // mallory knows alice's token (or only its id) and signs nothing: she flips a signature byte.
    const forged = decodeToken(alice.token);
    const sig = Uint8Array.from(forged.sig);
    sig[0] = (sig[0] as number) ^ 1;
    const bytes = encodeToken({ ...forged, sig });
    const mallory = generateIdentity("mallory");
    addPersonaKey(t, "mallory", mallory.publicKey);
    const m = await t.connect(mallory, [bytes]);
    const open = await until(
      () => t.k.inspect.queryAudit({ op: "session.open", persona: "mallory", limit: 5 })[0],
      30_000,
      "mallory's session record",
    );
    assert.equal(open.caps, `unverified:${alice.id}`);
    assert.deepEqual(JSON.parse(open.detail ?? "{}").refused, [{ code: "BAD_SIGNATURE", index: 0, token: alice.id }]);
    await assert.rejects(m.call("storage.read", "obj://ws1/x", {}, { caps: [bytes] }), klass("CAPABILITY"));
    const refused = t.k.inspect
      .queryAudit({ op: "storage.read", persona: "mallory", limit: 5 })
      .find((r) => r.phase === "refused");
    assert.equal(refused?.caps, `unverified:${alice.id}`);
    assert.equal(refused?.message, "token signature is invalid");
    // alice's genuine token presented by mallory is a use of that token: named as it is.
    await assert.rejects(m.call("storage.read", "obj://ws1/y", {}, { caps: [alice.token] }), klass("CAPABILITY"));
    const genuine = t.k.inspect
      .queryAudit({ op: "storage.read", persona: "mallory", limit: 5 })
      .find((r) => r.phase === "refused" && r.target === "obj://ws1/y");
    assert.equal(genuine?.caps, `inline:${alice.id}`);
    await m.close();
  });

  it("a copy narrowed offline, refused to another persona, names the token it was narrowed from: whose token was handed on can be found", async () => {
    // alice narrows her token for her worker; the copy leaks to eve, who presents it at ATTEST and inline.
    const copy = delegate(alice.token, "alice/w", [["storage.read", "obj://ws1/handed/**"]]);
    const d = derivedTokenId(copy);
    const named = new RegExp(`token ${d} \\(narrowed offline from token ${alice.id}\\) is not usable by persona eve`);
    const eve = generateIdentity("eve");
    addPersonaKey(t, "eve", eve.publicKey);
    const e = await t.connect(eve, [encodeToken(copy)]);
    const open = await until(
      () => t.k.inspect.queryAudit({ op: "session.open", persona: "eve", limit: 5 })[0],
      30_000,
      "eve's session record",
    );
    assert.equal(open.caps, `refused:${d}`);
    assert.match(open.message ?? "", named);
    await assert.rejects(e.call("storage.read", "obj://ws1/x", {}, { caps: [encodeToken(copy)] }), klass("CAPABILITY", named));
    const refused = t.k.inspect.queryAudit({ op: "storage.read", persona: "eve", limit: 5 }).find((r) => r.phase === "refused");
    assert.equal(refused?.caps, `inline:${d}`);
    assert.match(refused?.message ?? "", named);
    // The copy itself is in no table and on no record of its own: it never authorized a request.
    assert.equal(records(t, "token.derived").filter((r) => tokenOf(r)?.id === d).length, 0);
    await e.close();
  });

  it("a revocation lists every token it ended; a refusal names the revoked ancestor, its record, and the inline token", async () => {
    const admin = await t.admin();
    const parent = await admin.tokens.mint("alice", {
      rights: [{ ops: ["storage.read", "token.mint"], targets: ["obj://ws1/**", "persona://alice/**"] }],
      ttlMs: 600_000,
    });
    const p = await t.connect(alice.identity, [parent.token]);
    const child = await p.tokens.mint("alice/w", {
      rights: [{ ops: ["storage.read"], targets: ["obj://ws1/**"] }],
      ttlMs: 60_000,
    });
    const d = delegate(parent.token, "alice/w", [["storage.read", "obj://ws1/**"]]);
    const w = await t.connect(worker, [encodeToken(d)]);
    await w.storage.read("obj://ws1/b/x");
    await admin.tokens.revoke(parent.id);
    const rev = records(t, "token.revoke").find((r) => r.phase === "outcome" && r.d.revoked === parent.id);
    assert.deepEqual(new Set(rev?.d.ended as string[]), new Set([parent.id, child.id, derivedTokenId(d)]));
    const refused = await w.call("storage.read", "obj://ws1/b/x", {}, { caps: [encodeToken(d)] }).catch((e) => e);
    assert.ok(klass("CAPABILITY")(refused), String(refused));
    const msg = `token ${derivedTokenId(d)} is revoked: the token it was derived from ${parent.id} was revoked (audit record ${rev?.seq})`;
    assert.equal((refused as Error).message, msg);
    const last = t.k.inspect.queryAudit({ op: "storage.read", persona: "alice/w", limit: 1 }).find((r) => r.phase === "refused");
    assert.equal(last?.caps, `inline:${derivedTokenId(d)}`);
    assert.equal(last?.message, msg);
    // Revoking again ends nothing more.
    await admin.tokens.revoke(parent.id);
    const again = records(t, "token.revoke").filter((r) => r.phase === "outcome" && r.d.revoked === parent.id);
    assert.deepEqual(again.at(-1)?.d.ended, []);
    await p.close();
    await w.close();
  });

  it("after a restart a refusal still points at the revocation's record", async () => {
    const k = await startKernel();
    const home = k.home;
    let k2: TestKernel | undefined;
    try {
      const bob = await k.persona("bob", [{ ops: ["system.health"], targets: ["kernel://"] }]);
      const admin = await k.admin();
      await admin.tokens.revoke(bob.id);
      const seq = records(k, "token.revoke").find((r) => r.phase === "outcome")?.seq;
      await k.stop();
      k2 = await startKernel({}, home);
      const c = await k2.connect(bob.identity, []);
      const e = await c.call("system.health", "kernel://", {}, { caps: [bob.token] }).catch((x) => x);
      assert.ok(klass("CAPABILITY", new RegExp(`^token ${bob.id} is revoked \\(audit record ${seq}\\)$`))(e), String(e));
    } finally {
      if (k2) await k2.stop();
      else await k.stop();
      removeHome(home);
    }
  });
});
