import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { attenuate, decodeToken, encodeIntent, encodeToken, generateIdentity } from "@kpip/protocol";
import { addPersonaKey, adminIdentity, kernelForSuite } from "./harness.js";
import { RawPeer } from "./wire.js";

const write = (target: string, data: string) => encodeIntent({ op: "storage.write", target, args: { data } });
const read = (target: string) => encodeIntent({ op: "storage.read", target, args: {} });

describe("dedupe after authorization (PROTOCOL §9.1 steps 6–8, §11 rule 3)", () => {
  const s = kernelForSuite();

  /** An admin session on a raw socket with handle 1 = the root token, handle 2 = a storage.read-only token. */
  async function adminPeer(): Promise<RawPeer> {
    const narrow = await s.admin.tokens.mint("admin", {
      rights: [{ ops: ["storage.read"], targets: ["obj://**"] }],
      ttlMs: 600_000,
    });
    const p = await RawPeer.connect(s.t.k.socketPath);
    const w = await p.handshake(adminIdentity(s.t.k), [Buffer.from(s.t.adminToken, "base64url"), narrow.token]);
    assert.deepEqual(w.body.handles, [1, 2]);
    return p;
  }

  const phases = (target: string) =>
    s.t.k.inspect
      .queryAudit({ limit: 1000 })
      .filter((r) => r.target === target)
      .map((r) => `${r.phase}:${r.errorClass ?? r.status ?? "-"}`);

  it("a duplicate of a write is authorized again: no capability → CAPABILITY, a token that does not grant it → PERMISSION; only a granting one gets the recorded answer", async () => {
    const p = await adminPeer();
    const persona = "admin";
    const target = "obj://dd/w";
    p.request(1, write(target, "once"), { persona, caps: [1] });
    const first = await p.response(1);
    assert.equal(first.status, "SUCCESS");

    p.request(1, write(target, "once"), { persona, caps: [] });
    const none = await p.response(1);
    assert.equal(none.error, "CAPABILITY");
    assert.equal(none.payload, undefined, "no recorded payload without a capability");
    p.request(1, write(target, "once"), { persona, caps: [2] });
    const narrow = await p.response(1);
    assert.equal(narrow.error, "PERMISSION");
    assert.equal(narrow.payload, undefined, "no recorded payload for a token that does not grant the write");

    p.request(1, write(target, "once"), { persona, caps: [1] });
    const replay = await p.response(1);
    assert.deepEqual(replay, first, "the granting token gets the recorded answer");
    p.request(2, read(target), { persona, caps: [2] });
    assert.equal((((await p.response(2)).payload ?? {}) as { generation: number }).generation, 1, "executed once");
    assert.deepEqual(phases(target), [
      "intent:-",
      "outcome:SUCCESS",
      "refused:CAPABILITY",
      "refused:PERMISSION",
      "replay:SUCCESS",
      "complete:SUCCESS",
    ]);
    p.close();
  });

  it("an id reused for another intent without a usable capability is CAPABILITY, not SEMANTIC: it learns nothing of the first", async () => {
    const p = await adminPeer();
    const persona = "admin";
    p.request(5, write("obj://dd/reuse", "a"), { persona, caps: [1] });
    assert.equal((await p.response(5)).status, "SUCCESS");
    p.request(5, write("obj://dd/reuse", "b"), { persona, caps: [] });
    assert.equal((await p.response(5)).error, "CAPABILITY");
    p.request(5, write("obj://dd/reuse", "b"), { persona, caps: [2] });
    assert.equal((await p.response(5)).error, "PERMISSION");
    p.request(5, write("obj://dd/reuse", "b"), { persona, caps: [1] });
    const reused = await p.response(5);
    assert.equal(reused.error, "SEMANTIC");
    assert.match(reused.message ?? "", /already used/);
    p.close();
  });

  it("a read-only duplicate runs again, authorized again, and reflects the current state (§11 rule 4)", async () => {
    const p = await adminPeer();
    const persona = "admin";
    const target = "obj://dd/r";
    p.request(10, write(target, "v1"), { persona, caps: [1] });
    await p.response(10);
    p.request(11, read(target), { persona, caps: [2] });
    assert.equal(Buffer.from(((await p.response(11)).payload as { data: Uint8Array }).data).toString(), "v1");
    p.request(12, write(target, "v2"), { persona, caps: [1] });
    await p.response(12);
    p.request(11, read(target), { persona, caps: [2] });
    assert.equal(Buffer.from(((await p.response(11)).payload as { data: Uint8Array }).data).toString(), "v2");
    p.request(11, read(target), { persona, caps: [] });
    const none = await p.response(11);
    assert.equal(none.error, "CAPABILITY");
    assert.equal(none.payload, undefined);
    assert.deepEqual(
      phases(target).filter((x) => !x.startsWith("intent") && !x.startsWith("outcome")),
      ["complete:SUCCESS", "complete:SUCCESS", "refused:CAPABILITY"],
    );
    p.close();
  });

  it("another persona replaying the same instance id, request id and intent bytes runs its own request and never gets the first persona's answer", async () => {
    const a = await adminPeer();
    const target = "obj://dd/x";
    a.request(20, write(target, "admin's"), { persona: "admin", caps: [1] });
    const mine = await a.response(20);
    assert.deepEqual(mine.payload, { generation: 1, size: 7 });

    const bob = generateIdentity("bob-dd");
    addPersonaKey(s.t, bob.persona, bob.publicKey);
    const m = await s.admin.tokens.mint(bob.persona, {
      rights: [{ ops: ["storage.read"], targets: ["obj://dd/**"] }],
      ttlMs: 600_000,
    });
    const b = await RawPeer.connect(s.t.k.socketPath);
    await b.handshake(bob, [m.token]); // the same instance id as the admin's peer
    b.request(20, write(target, "admin's"), { persona: bob.persona, caps: [1] });
    const theirs = await b.response(20);
    assert.equal(theirs.error, "PERMISSION", "bob may not write: refused, not answered from admin's record");
    assert.equal(theirs.payload, undefined);
    b.request(20, read(target), { persona: bob.persona, caps: [1] });
    const r = await b.response(20);
    assert.equal(r.status, "SUCCESS", "bob's own id 20 is not admin's (no id-reuse conflict across personas)");
    a.close();
    b.close();
  });

  it("a replay under a narrower capability of the same persona never gets the answer recorded under a wider one (a token minted by the root token)", async () => {
    // handle 1: the root token; handle 2: a token that may mint, but only tokens within itself
    const minter = await s.admin.tokens.mint("admin", {
      rights: [{ ops: ["token.mint"], targets: ["persona://**"] }],
      ttlMs: 600_000,
    });
    const p = await RawPeer.connect(s.t.k.socketPath);
    await p.handshake(adminIdentity(s.t.k), [Buffer.from(s.t.adminToken, "base64url"), minter.token]);
    const persona = "admin";
    const mint = encodeIntent({
      op: "token.mint",
      target: "persona://admin",
      args: { rights: [{ ops: ["storage.read"], targets: ["obj://**"] }], ttlMs: 60_000 },
    });
    // the narrow token on its own may not mint a storage.read token: escalation
    p.request(76, mint, { persona, caps: [2] });
    assert.equal((await p.response(76)).error, "PERMISSION");
    // the root token mints it
    p.request(77, mint, { persona, caps: [1] });
    const wide = await p.response(77);
    assert.equal(wide.status, "SUCCESS");
    assert.ok((wide.payload as { token?: Uint8Array }).token, "the answer carries the new token");
    // the same id and bytes under the narrow token: refused, and the new token is not in the answer
    p.request(77, mint, { persona, caps: [2] });
    const replay = await p.response(77);
    assert.equal(replay.status, "FAILURE");
    assert.equal(replay.payload, undefined, "the wider token's answer is not handed to the narrower one");
    assert.match(replay.message ?? "", /another capability/);
    // the capability that made it still gets its recorded answer
    p.request(77, mint, { persona, caps: [1] });
    assert.deepEqual(await p.response(77), wide);
    p.close();
  });

  it("a replay under the same token narrowed offline by a rights caveat never gets the answer recorded under the token itself", async () => {
    const wide = await s.admin.tokens.mint("admin", {
      rights: [{ ops: ["token.mint", "storage.read"], targets: ["persona://**", "obj://**"] }],
      ttlMs: 600_000,
    });
    // The same claims, a rights caveat: it may mint for persona://admin, but only tokens that mint.
    const narrow = encodeToken(attenuate(decodeToken(wide.token), { t: "rights", v: [["token.mint", "persona://admin"]] }));
    const p = await RawPeer.connect(s.t.k.socketPath);
    await p.handshake(adminIdentity(s.t.k), [wide.token, narrow]);
    const persona = "admin";
    const mint = encodeIntent({
      op: "token.mint",
      target: "persona://admin",
      args: { rights: [{ ops: ["storage.read"], targets: ["obj://**"] }], ttlMs: 60_000 },
    });
    p.request(90, mint, { persona, caps: [2] });
    assert.equal((await p.response(90)).error, "PERMISSION", "the narrowed token may not mint a storage.read token");
    p.request(91, mint, { persona, caps: [1] });
    const made = await p.response(91);
    assert.equal(made.status, "SUCCESS");
    p.request(91, mint, { persona, caps: [2] });
    const replay = await p.response(91);
    assert.equal(replay.status, "FAILURE");
    assert.equal(replay.payload, undefined, "the token's answer is not handed to its narrowed copy");
    assert.match(replay.message ?? "", /another capability/);
    p.close();
  });

  it("a replay under the same token narrowed offline by an exp caveat never gets a longer-lived token recorded under the token itself", async () => {
    const wide = await s.admin.tokens.mint("admin", {
      rights: [{ ops: ["token.mint"], targets: ["persona://**"] }],
      ttlMs: 3_600_000,
    });
    const short = encodeToken(attenuate(decodeToken(wide.token), { t: "exp", v: Date.now() + 600_000 }));
    const p = await RawPeer.connect(s.t.k.socketPath);
    await p.handshake(adminIdentity(s.t.k), [wide.token, short]);
    const persona = "admin";
    const mint = encodeIntent({
      op: "token.mint",
      target: "persona://admin",
      args: { rights: [{ ops: ["token.mint"], targets: ["persona://**"] }], ttlMs: 1_800_000 },
    });
    p.request(92, mint, { persona, caps: [2] });
    assert.equal((await p.response(92)).error, "PERMISSION", "the short-lived copy may not mint a token that outlives it");
    p.request(93, mint, { persona, caps: [1] });
    const made = await p.response(93);
    assert.equal(made.status, "SUCCESS");
    p.request(93, mint, { persona, caps: [2] });
    const replay = await p.response(93);
    assert.equal(replay.status, "FAILURE");
    assert.equal(replay.payload, undefined, "the longer-lived token is not handed to the short-lived copy");
    // A refreshed copy of the token itself is the same authority: its retry is answered from the record.
    const fresh = (await s.admin.call("token.refresh", `token://${wide.id}`, { token: wide.token }, { caps: [wide.token] }))
      .payload as { token: Uint8Array };
    const q = await RawPeer.connect(s.t.k.socketPath);
    await q.handshake(adminIdentity(s.t.k), [fresh.token]);
    q.request(93, mint, { persona, caps: [1] });
    assert.deepEqual(await q.response(93), made);
    q.close();
    p.close();
  });
});
