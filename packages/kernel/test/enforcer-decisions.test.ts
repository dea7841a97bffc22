import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { encodeToken } from "@kpip/protocol";
import fc from "fast-check";
import { capabilities } from "../src/auth/capabilities.js";
import { RootKeys } from "../src/auth/keys.js";
import { HandleTable } from "../src/session/handles.js";
import { SqliteStore } from "../src/store/sqlite.js";

// A bound handle keeps its pattern-match results and the decision of a request it alone allows:
// pinned here to the decision of a handle bound afresh for every request (nothing kept).

describe("the enforcer's kept decisions (property)", () => {
  const home = mkdtempSync(join(tmpdir(), "kpip-enforcer-decisions-"));
  after(() => rmSync(home, { recursive: true, force: true }));

  it("a handle used again decides every request as a handle bound for it alone does", () => {
    const store = new SqliteStore(":memory:");
    try {
      const { enforcer, tokens } = capabilities(new RootKeys(home), store);
      const token = (spec: { workspaces?: string[]; domains?: string[] }) =>
        encodeToken(
          tokens.mint(undefined, "admin", {
            sub: "alice",
            rights: [
              { ops: ["storage.read"], targets: ["obj://ws1/**", "obj://ws2/a"] },
              { ops: ["system.*"], targets: ["kernel://"] },
            ],
            ttlMs: 60_000,
            ...spec,
          }),
        );
      const grants = [token({}), token({ workspaces: ["ws1"] }), token({ domains: ["d1"] })];
      const opt = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: undefined });
      const requestArb = fc.record({
        op: fc.constantFrom("storage.read", "storage.write", "system.health"),
        target: fc.constantFrom("obj://ws1/a", "obj://ws2/a", "obj://ws2/b", "kernel://"),
        workspace: opt(fc.constantFrom("ws1", "ws2")),
        domain: opt(fc.constantFrom("d1", "d2")),
        caps: fc.constantFrom<number[]>([1], [2], [3], [2, 1], [9, 1], [1, 3]),
      });
      const kept = new HandleTable();
      for (const g of grants) assert.ok("handle" in enforcer.bind(kept, "alice", g));
      type Req = typeof requestArb extends fc.Arbitrary<infer T> ? T : never;
      const decide = (table: HandleTable, r: Req) =>
        enforcer.authorize({
          persona: "alice",
          session: "s-1",
          intent: { op: r.op, target: r.target, args: {} },
          context: { persona: "alice", workspace: r.workspace, domain: r.domain },
          caps: r.caps,
          handles: table,
          declaration: undefined,
        });
      fc.assert(
        fc.property(fc.array(requestArb, { minLength: 1, maxLength: 30 }), (reqs) => {
          for (const r of reqs) {
            const fresh = new HandleTable();
            for (const g of grants) enforcer.bind(fresh, "alice", g);
            const a = decide(kept, r);
            const b = decide(fresh, r);
            assert.deepEqual({ ...a, grant: undefined }, { ...b, grant: undefined });
            assert.equal(a.allowed && a.grant?.id, b.allowed && b.grant?.id);
          }
        }),
        { numRuns: 200 },
      );
    } finally {
      store.close();
    }
  });

  it("a token verified from inside a large request body keeps none of that body alive in the verified cache", () => {
    const store = new SqliteStore(":memory:");
    try {
      const { enforcer, tokens } = capabilities(new RootKeys(home), store);
      const bytes = encodeToken(
        tokens.mint(undefined, "admin", { sub: "alice", rights: [{ ops: ["system.*"], targets: ["kernel://"] }], ttlMs: 60_000 }),
      );
      // As an inline token arrives: a view of a frame body of 4 MiB.
      const body = Buffer.alloc(4 * 1024 * 1024);
      body.set(bytes, 1000);
      const v = enforcer.verify(body.subarray(1000, 1000 + bytes.length), "alice");
      assert.ok(v.ok, JSON.stringify(v));
      for (const b of [v.token.claimsBytes, v.token.sig, ...v.token.caveatBytes]) {
        assert.ok(b.buffer.byteLength < 64 * 1024, `a token field keeps ${b.buffer.byteLength} bytes alive`);
      }
    } finally {
      store.close();
    }
  });
});
