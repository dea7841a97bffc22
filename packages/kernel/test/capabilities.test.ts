import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { utimesSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { KpipError } from "@kpip/client";
import {
  attenuate,
  type Caveat,
  decodeToken,
  encodeCanonical,
  encodeToken,
  generateIdentity,
  mintToken,
  type Token,
} from "@kpip/protocol";
import { ROOT_KEYS_FILE, RootKeys } from "../src/index.js";
import { addPersonaKey, klass, removeHome, startKernel, type TestKernel, until } from "./harness.js";

const rightsFor = (p: string) => [
  { ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] },
  { ops: ["token.mint"], targets: [`persona://${p}/**`] },
];
const storageWs1 = [{ ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] }];

describe("capabilities", () => {
  let now = Date.now();
  let t: TestKernel;
  before(async () => {
    t = await startKernel({ clock: () => now });
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  it("allows what the token grants and refuses the rest with PERMISSION", async () => {
    const a = await t.persona("alice", storageWs1);
    const c = await t.connect(a.identity, [a.token]);
    await c.storage.write("obj://ws1/a", "x");
    await assert.rejects(c.storage.write("obj://ws2/a", "x"), klass("PERMISSION"));
    await assert.rejects(c.storage.delete("obj://ws1/a"), klass("PERMISSION"));
    await assert.rejects(c.system.health(), klass("PERMISSION"));
  });

  it("matches targets by whole segments: obj://ws1/a never covers obj://ws1/ab", async () => {
    const b = await t.persona("bob", [{ ops: ["storage.write"], targets: ["obj://ws1/a"] }]);
    const c = await t.connect(b.identity, [b.token]);
    await c.storage.write("obj://ws1/a", "ok");
    await assert.rejects(c.storage.write("obj://ws1/ab", "x"), klass("PERMISSION"));
    await assert.rejects(c.storage.write("obj://ws1/a/b", "x"), klass("PERMISSION"));
  });

  it("has no ambient authority: no capability is CAPABILITY", async () => {
    const a = await t.persona("carol", storageWs1);
    const c = await t.connect(a.identity, []);
    await assert.rejects(c.storage.read("obj://ws1/a"), klass("CAPABILITY"));
    const admin = await t.connect(generateIdentity("x"), []).catch((e) => e);
    assert.ok(admin instanceof KpipError);
  });

  it("refuses forged, bit-flipped, truncated, wrong-key and unknown-caveat tokens at bind and inline", async () => {
    const a = await t.persona("dave", storageWs1);
    const good = decodeToken(a.token);
    const flipped = Buffer.from(a.token);
    flipped[flipped.length - 1] = (flipped[flipped.length - 1] as number) ^ 1;
    const forged = encodeToken(mintToken(randomBytes(32), good.claims));
    const wrongKid = encodeToken(mintToken(randomBytes(32), { ...good.claims, kid: "nokey" }));
    const unknownCaveat = encodeCanonical({ t: "color", v: "red" });
    const withUnknown: Token = { ...good, caveatBytes: [unknownCaveat], caveats: [], sig: good.sig };
    const bad = [flipped, forged, wrongKid];
    const c = await t.connect(a.identity, bad);
    assert.deepEqual(
      c.refusedTokens.map((r) => [r.index, r.code]),
      [
        [0, "BAD_SIGNATURE"],
        [1, "BAD_SIGNATURE"],
        [2, "UNKNOWN_KEY"],
      ],
    );
    assert.deepEqual(c.handles, []);
    // the client refuses to hold a token it cannot parse; sent inline, the kernel refuses it
    await assert.rejects(t.connect(a.identity, [encodeToken(withUnknown)]), /unknown caveat/);
    for (const tok of [...bad, encodeToken(withUnknown), Buffer.from(a.token).subarray(0, 20)])
      await assert.rejects(c.storage.read("obj://ws1/a", { caps: [tok] }), klass("CAPABILITY"));
  });

  it("refuses a token presented by a persona outside its subject, and honours sub-persona narrowing", async () => {
    const a = await t.persona("erin", storageWs1);
    const mallory = await t.persona("mallory", [{ ops: ["system.health"], targets: ["kernel://"] }]);
    const c = await t.connect(mallory.identity, []);
    await assert.rejects(c.storage.read("obj://ws1/a", { caps: [a.token] }), klass("CAPABILITY"));
    const narrowed = encodeToken(attenuate(decodeToken(a.token), { t: "sub", v: "erin/worker-1" }));
    const w1 = generateIdentity("erin/worker-1");
    addPersonaKey(t, "erin/worker-1", w1.publicKey);
    const other = generateIdentity("erin/other");
    addPersonaKey(t, "erin/other", other.publicKey);
    const cw = await t.connect(w1, [narrowed]);
    await cw.storage.write("obj://ws1/w1", "ok");
    const co = await t.connect(other, []);
    await assert.rejects(co.storage.write("obj://ws1/w1", "x", { caps: [narrowed] }), klass("CAPABILITY"));
    const ce = await t.connect(a.identity, []);
    await assert.rejects(ce.storage.write("obj://ws1/w1", "x", { caps: [narrowed] }), klass("CAPABILITY"));
  });

  it("narrows offline: an attenuated token never does more than its parent", async () => {
    const a = await t.persona("fay", storageWs1);
    const ro = encodeToken(attenuate(decodeToken(a.token), { t: "ops", v: ["storage.read"] }));
    const c = await t.connect(a.identity, [ro]);
    await assert.rejects(c.storage.write("obj://ws1/f", "x"), klass("PERMISSION"));
    // an attenuation that tries to widen (ops the parent lacks) still cannot exceed the parent
    const wide = encodeToken(attenuate(decodeToken(a.token), { t: "ops", v: ["**"] }));
    await assert.rejects(c.system.health({ caps: [wide] }), klass("PERMISSION"));
  });

  it("a copy narrowed offline (ops, targets or rights caveats) cannot revoke the token it was narrowed from, nor what was minted from it; the token itself still can", async () => {
    const a = await t.persona("iva", [...storageWs1, { ops: ["token.mint"], targets: ["persona://iva/**"] }]);
    const root = decodeToken(a.token);
    const admin = await t.admin();
    const full = await t.connect(a.identity, [a.token]);
    const minted = await full.tokens.mint("iva", {
      rights: [{ ops: ["storage.read"], targets: ["obj://ws1/**"] }],
      ttlMs: 60_000,
    });
    const caveats: Caveat[] = [
      { t: "ops", v: ["storage.read"] },
      { t: "targets", v: ["obj://ws1/pub/**"] },
      { t: "rights", v: [["storage.read", "obj://ws1/**"]] },
    ];
    for (const caveat of caveats) {
      const narrow = encodeToken(attenuate(root, caveat));
      const c = await t.connect(a.identity, [narrow]);
      await assert.rejects(
        c.tokens.revoke(root.claims.id),
        klass("PERMISSION"),
        `${caveat.t}: not the token it was narrowed from`,
      );
      await assert.rejects(c.tokens.revoke(minted.id), klass("PERMISSION"), `${caveat.t}: not what was minted from it`);
      await c.close();
    }
    // Neither was revoked: the full token still acts, and revokes what it minted, then itself.
    await full.storage.write("obj://ws1/iva", "still valid");
    await full.tokens.revoke(minted.id);
    await full.tokens.revoke(root.claims.id);
    await assert.rejects(full.storage.write("obj://ws1/iva", "x"), klass("CAPABILITY"));
    await full.close();
    await admin.close();
  });

  it("expires by the kernel clock", async () => {
    const a = await t.persona("gus", storageWs1, { ttlMs: 60_000 });
    const c = await t.connect(a.identity, [a.token]);
    await c.storage.write("obj://ws1/g", "x");
    now += 61_000;
    await assert.rejects(c.storage.write("obj://ws1/g", "x"), klass("CAPABILITY"));
    now -= 61_000;
  });

  it("revokes mid-session on every session at once, and cascades to derived tokens", async () => {
    const a = await t.persona("hal", rightsFor("hal"));
    const s1 = await t.connect(a.identity, [a.token]);
    const s2 = await t.connect(a.identity, [a.token]);
    const child = await s1.tokens.mint("hal/kid", {
      rights: [{ ops: ["storage.read"], targets: ["obj://ws1/**"] }],
      ttlMs: 60_000,
      limits: {},
    });
    const kid = generateIdentity("hal/kid");
    addPersonaKey(t, "hal/kid", kid.publicKey);
    const sk = await t.connect(kid, [child.token]);
    await sk.storage.read("obj://ws1/a");
    const notices: string[] = [];
    s2.on("event", (e) => notices.push(e.topic));
    const admin = await t.admin();
    await admin.tokens.revoke(a.id);
    await assert.rejects(s1.storage.read("obj://ws1/a"), klass("CAPABILITY"));
    await assert.rejects(s2.storage.read("obj://ws1/a"), klass("CAPABILITY"));
    await assert.rejects(sk.storage.read("obj://ws1/a"), klass("CAPABILITY"));
    await until(() => notices.some((n) => n.includes(`/tokens/${a.id}/revoked`)), 30_000, "revocation notice");
  });

  it("refuses a mint that widens rights, limits, lifetime or workspaces, and audits the refusal", async () => {
    const a = await t.persona("ivy", rightsFor("ivy"), { limits: { "storage.bytes": 1000 }, ttlMs: 60_000, workspaces: ["ws1"] });
    const c = await t.connect(a.identity, [a.token]);
    const base = {
      rights: [{ ops: ["storage.read"], targets: ["obj://ws1/**"] }],
      ttlMs: 1000,
      limits: { "storage.bytes": 10 },
      workspaces: ["ws1"],
    };
    await c.tokens.mint("ivy/x", base);
    for (const wider of [
      { ...base, rights: [{ ops: ["storage.delete"], targets: ["obj://ws1/**"] }] },
      { ...base, rights: [{ ops: ["storage.read"], targets: ["obj://**"] }] },
      { ...base, limits: { "storage.bytes": 5000 } },
      { ...base, limits: {} },
      { ...base, ttlMs: 120_000 },
      { ...base, workspaces: ["ws2"] },
    ]) {
      await assert.rejects(c.tokens.mint("ivy/x", wider), klass("PERMISSION"), JSON.stringify(wider));
    }
    await until(() => t.k.inspect.queryAudit({ op: "token.mint", persona: "ivy" }).some((r) => r.errorClass === "PERMISSION"));
  });

  it("refreshes to a later expiry, never past the maximum lifetime", async () => {
    const admin = await t.admin();
    const m = await admin.tokens.mint("admin", {
      rights: [{ ops: ["**"], targets: ["**"] }],
      ttlMs: 10_000,
      maxLifetimeMs: 25_000,
    });
    const start = now;
    const refresh = async (tok: Uint8Array) => {
      const id = decodeToken(tok).claims.id;
      const r = await admin.call("token.refresh", `token://${id}`, { token: tok }, { caps: [tok] });
      return (r.payload as { token: Uint8Array }).token;
    };
    now = start + 5_000;
    const t1 = await refresh(m.token);
    assert.equal(decodeToken(t1).claims.exp, start + 15_000);
    now = start + 14_000;
    const t2 = await refresh(t1);
    assert.equal(decodeToken(t2).claims.exp, start + 24_000);
    now = start + 23_000;
    const t3 = await refresh(t2);
    assert.equal(decodeToken(t3).claims.exp, decodeToken(m.token).claims.maxExp, "capped at the maximum lifetime");
    now = start + 26_000;
    await assert.rejects(refresh(t3), klass("CAPABILITY"));
    now = start;
  });

  it("handles are session-local; inline tokens work once; token.bind adds a handle", async () => {
    const a = await t.persona("jo", storageWs1);
    const s1 = await t.connect(a.identity, [a.token]);
    const s2 = await t.connect(a.identity, []);
    assert.deepEqual(s1.handles, [1]);
    await assert.rejects(s2.storage.read("obj://ws1/a", { caps: [1] }), klass("CAPABILITY"));
    await s2.storage.write("obj://ws1/jo", "x", { caps: [a.token] });
    const b = await s2.call("token.bind", `token://${a.id}`, { token: a.token }, { caps: [a.token] });
    const h = (b.payload as { handle: number }).handle;
    await s2.storage.read("obj://ws1/jo", { caps: [h] });
    const rows = await until(() => t.k.inspect.queryAudit({ persona: "jo", op: "storage.read" }).at(-1));
    assert.match(rows.caps ?? "", new RegExp(a.id));
  });

  it("keeps old tokens valid after key rotation until their key is retired", async () => {
    const a = await t.persona("kim", storageWs1);
    const oldKid = decodeToken(a.token).claims.kid;
    // Both changes keep the file's mtime (a coarse-grained file system, or two changes in one
    // clock tick): the kernel tells them by the file's inode, size and change time.
    const keyFile = join(t.home, ROOT_KEYS_FILE);
    const sameTime = 1_700_000_000;
    RootKeys.rotate(t.home);
    utimesSync(keyFile, sameTime, sameTime);
    now += 1100; // the kernel re-reads the key file at most once a second, by its clock
    const b = await t.persona("kim2", storageWs1);
    assert.notEqual(decodeToken(b.token).claims.kid, oldKid);
    const c = await t.connect(a.identity, []);
    await c.storage.write("obj://ws1/kim", "old key still verifies", { caps: [a.token] });
    RootKeys.retire(t.home, oldKid);
    utimesSync(keyFile, sameTime, sameTime);
    now += 1100;
    await assert.rejects(c.storage.read("obj://ws1/kim", { caps: [a.token] }), klass("CAPABILITY"));
    const c2 = await t.connect(b.identity, [b.token]);
    await c2.storage.read("obj://ws1/kim");
  });
});

describe("token.inspect of tokens no request can pass", () => {
  let now = Date.now();
  let t: TestKernel;
  before(async () => {
    t = await startKernel({ clock: () => now });
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  it("token.inspect of a token whose signature does not verify says it is invalid: not valid, and not whether the ids it claims are revoked", async () => {
    const nia = await t.persona("nia", [{ ops: ["token.inspect"], targets: ["token://**"] }]);
    const oli = await t.persona("oli", storageWs1);
    const admin = await t.admin();
    await admin.tokens.revoke(oli.id);
    const c = await t.connect(nia.identity, [nia.token]);
    const own = decodeToken(nia.token).claims;
    // Claims written by nia, signed with no key of the kernel's: a token id of her own making,
    // another persona's token id in its chain, every right.
    const forge = (claims: Partial<typeof own>) => {
      const f = mintToken(randomBytes(32), { ...own, id: randomBytes(16).toString("hex"), ...claims });
      return { id: f.claims.id, bytes: encodeToken(f) };
    };
    const probe = forge({ chain: [oli.id] });
    const mine = await c.tokens.inspect(probe.id, probe.bytes);
    assert.equal(mine.status, "invalid", "a forged token told nia whether oli's token was revoked");
    assert.match(String(mine.problem), /signature is invalid/);
    // The operator inspecting a forged "admin" token a persona hands over is not told it is valid.
    const root = forge({ sub: "admin", rights: [{ ops: ["**"], targets: ["**"] }], chain: [] });
    const seen = await admin.tokens.inspect(root.id, root.bytes);
    assert.equal(seen.status, "invalid");
    // A genuine token is described as before.
    assert.equal((await c.tokens.inspect(own.id, nia.token)).status, "valid");
  });

  it("token.inspect of a forged token says no request can pass it (effective.usable false), whatever rights it claims", async () => {
    const admin = await t.admin();
    const own = decodeToken((await t.persona("pia", storageWs1)).token).claims;
    const f = mintToken(randomBytes(32), {
      ...own,
      id: randomBytes(16).toString("hex"),
      sub: "admin",
      rights: [{ ops: ["**"], targets: ["**"] }],
      chain: [],
    });
    const seen = await admin.tokens.inspect(f.claims.id, encodeToken(f));
    assert.equal(seen.status, "invalid");
    // PROTOCOL's token.inspect: `usable` is whether any request can pass it. A reader (a program,
    // the MCP gateway's model) that looks at it was told a forged admin token could.
    assert.equal(seen.effective.usable, false, "a forged token's rights pass nothing");
  });

  it("token.inspect of a revoked or an expired token says no request can pass it (effective.usable false), as its status says", async () => {
    const admin = await t.admin();
    const live = await t.persona("quin", storageWs1, { ttlMs: 60_000 });
    const gone = await t.persona("rue", storageWs1);
    assert.equal((await admin.tokens.inspect(live.id, live.token)).effective.usable, true, "a valid token is usable");
    await admin.tokens.revoke(gone.id);
    const revoked = await admin.tokens.inspect(gone.id, gone.token);
    assert.equal(revoked.status, "revoked");
    assert.equal(revoked.effective.usable, false, "a revoked token was said to be usable");
    now += 61_000;
    try {
      const expired = await admin.tokens.inspect(live.id, live.token);
      assert.equal(expired.status, "expired");
      assert.equal(expired.effective.usable, false, "an expired token was said to be usable");
    } finally {
      now -= 61_000;
    }
  });
});
