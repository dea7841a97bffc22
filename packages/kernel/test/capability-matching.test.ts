import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { attenuate, type Caveat, decodeToken, encodeToken, generateIdentity } from "@kpip/protocol";
import { addPersonaKey, kernelForSuite, klass } from "./harness.js";

const att = (tok: Uint8Array, ...cs: Caveat[]) => {
  let t = decodeToken(tok);
  for (const c of cs) t = attenuate(t, c);
  return encodeToken(t);
};

/**
 * Red team of capability matching (docs/security.md): a token narrowed offline with caveats
 * stays narrowed through everything that derives from it or re-presents it — token.mint (the
 * child's rights, workspaces, domains and limits), token.refresh (the copy keeps every caveat),
 * token.bind (the handle decides as the token) — and its subscriptions and watches stay within
 * its target patterns by the subset test (PROTOCOL §13.1), however the pattern is spelled.
 */
describe("capability matching against a real kernel", () => {
  const k = kernelForSuite();

  it("a token narrowed offline keeps its caveats through token.mint, token.refresh and token.bind, and subscribes and watches only within them", async () => {
    const wide = [
      {
        ops: ["storage.*", "event.*", "token.*"],
        targets: ["obj://**", "topic://**", "persona://mal/**", "token://**"],
      },
    ];
    const m = await k.t.persona("mal", wide, { workspaces: ["ws1", "ws2"] });
    addPersonaKey(k.t, "mal/helper", generateIdentity("mal/helper").publicKey);
    const c = await k.t.connect(m.identity, []);
    const narrowed = att(
      m.token,
      { t: "workspaces", v: ["ws1"] },
      { t: "domains", v: ["d1"] },
      // Holds pub/x, pub/y and pub/z (1 byte, a 5-byte path and a row's 512 each), not 500 bytes at pub/big besides.
      { t: "limits", v: { "storage.bytes": 2000 } },
      { t: "targets", v: ["obj://ws1/pub/**", "topic://a/*", "persona://mal/**", "token://**"] },
    );
    const d1 = { caps: [narrowed], domain: "d1" };
    const refused = (p: Promise<unknown>, what: string) => assert.rejects(p, klass("PERMISSION"), what);

    // token.mint: the child carries every caveat of the grant it is minted from, or is refused.
    type Spec = Parameters<typeof c.tokens.mint>[1];
    const base: Spec = {
      rights: [{ ops: ["storage.read"], targets: ["obj://ws1/pub/**"] }],
      ttlMs: 60_000,
      limits: { "storage.bytes": 2000 },
      workspaces: ["ws1"],
      domains: ["d1"],
    };
    await c.tokens.mint("mal/helper", base, d1);
    const { workspaces: _w, ...noWorkspaces } = base;
    const { domains: _d, ...noDomains } = base;
    const wider: [string, Spec][] = [
      ["no workspaces", noWorkspaces],
      ["another workspace", { ...base, workspaces: ["ws2"] }],
      ["no domains", noDomains],
      ["no limits", { ...base, limits: {} }],
      ["a wider pattern", { ...base, rights: [{ ops: ["storage.read"], targets: ["obj://ws1/**"] }] }],
      ["a wildcard workspace", { ...base, rights: [{ ops: ["storage.read"], targets: ["obj://*/pub/**"] }] }],
      ["a `*` where the grant has a literal", { ...base, rights: [{ ops: ["storage.read"], targets: ["obj://ws1/*/**"] }] }],
    ];
    for (const [what, spec] of wider) await refused(c.tokens.mint("mal/helper", spec, d1), `mint with ${what}`);

    // Requests: the domain, the workspace and the targets caveat each refuse.
    await c.storage.write("obj://ws1/pub/x", "x", d1);
    await refused(c.storage.write("obj://ws1/pub/x", "x", { caps: [narrowed] }), "no domain");
    await refused(c.storage.write("obj://ws2/pub/x", "x", d1), "another workspace");
    await refused(c.call("storage.list", "obj://ws1", {}, d1), "a listing reaching past the targets caveat");

    // Subscriptions and watches: only patterns every match of which the caveat covers.
    await c.call("event.subscribe", "topic://a/*", {}, d1);
    for (const p of ["topic://a/**", "topic://a/*/**", "topic://*/x", "topic://**"])
      await refused(c.call("event.subscribe", p, {}, d1), `subscribe ${p}`);
    await c.call("storage.watch", "obj://ws1/pub/**", {}, d1);
    for (const p of ["obj://ws1/**", "obj://ws1/*/x", "obj://ws2/pub/**"])
      await refused(c.call("storage.watch", p, {}, d1), `watch ${p}`);

    // token.refresh: the copy keeps every caveat (workspace, domain, targets, limits).
    const id = decodeToken(narrowed).claims.id;
    await refused(
      c.call("token.refresh", `token://${id}`, { token: narrowed }, { caps: [narrowed] }),
      "refresh outside the domain",
    );
    const r = await c.call("token.refresh", `token://${id}`, { token: narrowed }, d1);
    const fresh = (r.payload as { token: Uint8Array }).token;
    assert.deepEqual(decodeToken(fresh).caveats, decodeToken(narrowed).caveats, "the copy keeps the caveats");
    const f1 = { caps: [fresh], domain: "d1" };
    await c.storage.write("obj://ws1/pub/y", "y", f1);
    await refused(c.storage.write("obj://ws2/pub/x", "x", f1), "the copy in another workspace");
    await refused(c.storage.write("obj://ws1/pub/x", "x", { caps: [fresh] }), "the copy without the domain");
    await refused(c.storage.write("obj://ws1/q", "x", f1), "the copy past the targets caveat");
    await assert.rejects(c.storage.write("obj://ws1/pub/big", "x".repeat(500), f1), klass("RESOURCE"), "the copy past the limit");
    await refused(c.tokens.mint("mal/helper", { ...base, limits: {} }, f1), "a mint from the copy without the limit");

    // token.bind: the handle decides as the token.
    const b = await c.call("token.bind", `token://${id}`, { token: narrowed }, d1);
    const h = (b.payload as { handle: number }).handle;
    await c.storage.write("obj://ws1/pub/z", "z", { caps: [h], domain: "d1" });
    await refused(c.storage.write("obj://ws2/pub/x", "x", { caps: [h], domain: "d1" }), "the handle in another workspace");
    await refused(c.storage.write("obj://ws1/pub/x", "x", { caps: [h] }), "the handle without the domain");
    await assert.rejects(
      c.storage.write("obj://ws1/pub/big", "x".repeat(500), { caps: [h], domain: "d1" }),
      klass("RESOURCE"),
      "the handle past the limit",
    );
  });
});
