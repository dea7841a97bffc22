import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { attenuate, decodeToken, derivedTokenId, encodeToken } from "@kpip/protocol";
import { capabilities } from "../src/auth/capabilities.js";
import { RootKeys } from "../src/auth/keys.js";
import { HandleTable } from "../src/session/handles.js";
import { SqliteStore } from "../src/store/sqlite.js";
import { removeHome, withKernel } from "./harness.js";

// Each bound handle cached up to 1,024 decisions keyed by the request's target (up to 2 KiB), and
// a session may bind 256 handles (offline attenuations of one token, ~330 bytes each): a persona
// naming a fresh long target on each request, each handle in turn, kept ~2 KB of heap per
// request — 19,200 requests on 32 handles in 3 s, +41 MB; 256 handles, ~550 MB for one session.

/** What a session's cached decisions hold: their keys' characters and 64 bytes each. */
function cachedBytes(table: HandleTable): number {
  let n = 0;
  for (const b of table.all()) for (const byScope of b.decisions.values()) for (const k of byScope.keys()) n += k.length + 64;
  return n;
}

/** How many decisions a session's handles cache. */
function cachedCount(table: HandleTable): number {
  let n = 0;
  for (const b of table.all()) for (const byScope of b.decisions.values()) n += byScope.size;
  return n;
}

describe("bounded after authentication: decisions cached per session", () => {
  it("the decisions a session's handles cache stay within 256 KiB however many long targets its requests name", async () => {
    await withKernel({}, async (t) => {
      const eve = await t.persona("eve", [{ ops: ["storage.stat", "token.bind"], targets: ["obj://ws/**", "token://**"] }]);
      const c = await t.connect(eve.identity, [eve.token], { maxAttempts: 1 });
      const base = decodeToken(eve.token);
      const handles: number[] = [];
      for (let i = 0; i < 32; i++) {
        const copy = encodeToken(attenuate(base, { t: "ops", v: ["storage.stat", `x.y${i}`] }));
        const r = await c.call("token.bind", `token://${derivedTokenId(decodeToken(copy))}`, { token: copy });
        handles.push((r.payload as { handle: number }).handle);
      }
      const sessions = (t.k as unknown as { services: { sessions: { sessions: Set<{ handles: HandleTable }> } } }).services
        .sessions.sessions;
      const table = [...sessions].map((s) => s.handles).find((h) => h.size >= handles.length) as HandleTable;
      assert.ok(table, "eve's session");
      const pad = "p".repeat(1990);
      let n = 0;
      let max = 0;
      for (let round = 0; round < 40; round++) {
        const answers = await Promise.all(
          handles.map((h) => c.call("storage.stat", `obj://ws/${pad}${n++}`, {}, { caps: [h] }).catch((e: unknown) => e)),
        );
        // Not found (no such object), never refused: each handle allowed its request.
        for (const a of answers)
          assert.ok(!(a instanceof Error) || (a as { errorClass?: string }).errorClass === "SEMANTIC", String(a));
        max = Math.max(max, cachedBytes(table));
      }
      assert.ok(max <= 256 * 1024, `the session's handles cached ${max} bytes of decisions`);
      // Still a cache: what was decided last is kept.
      assert.ok(cachedBytes(table) > 0);
    });
  });

  it("the session's bytes are the one bound: a handle alone keeps as many decisions as they allow, and its counter stays true across resets", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-decisions-"));
    const store = new SqliteStore(":memory:");
    try {
      const { enforcer, tokens } = capabilities(new RootKeys(home), store);
      const token = encodeToken(
        tokens.mint(undefined, "admin", {
          sub: "eve",
          rights: [{ ops: ["storage.stat"], targets: ["obj://ws/**"] }],
          ttlMs: 60_000,
        }),
      );
      const table = new HandleTable();
      const bound = enforcer.bind(table, "eve", token);
      assert.ok("handle" in bound);
      let max = 0;
      let resets = 0;
      let before = 0;
      for (let i = 0; i < 8000; i++) {
        const d = enforcer.authorize({
          persona: "eve",
          session: "s-1",
          intent: { op: "storage.stat", target: `obj://ws/t${i}`, args: {} },
          context: { persona: "eve", workspace: undefined, domain: undefined },
          caps: [bound.handle],
          handles: table,
          declaration: undefined,
        });
        assert.ok(d.allowed);
        const n = cachedCount(table);
        if (n < before) resets++;
        before = n;
        max = Math.max(max, n);
        assert.equal(table.decisionBytes, cachedBytes(table), "the session's counter is what its handles hold");
        assert.ok(table.decisionBytes <= 256 * 1024);
      }
      // ~80 bytes each (a 14-character target and 64): about 3,300 fit, not a handle's 1,024 of old.
      assert.ok(max > 1024, `one handle kept at most ${max} decisions`);
      assert.ok(resets >= 1, "past the session's bytes its cache starts over");
    } finally {
      store.close();
      removeHome(home);
    }
  });
});
