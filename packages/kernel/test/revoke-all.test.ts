import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { Grant } from "@kpip/protocol";
import fc from "fast-check";
import { Revocations } from "../src/auth/revocations.js";
import { SqliteStore } from "../src/index.js";
import { removeHome } from "./harness.js";

const hexId = (i: number) => i.toString(16).padStart(32, "0");

/** A forest of tokens: token i is minted from token parent[i] (or from none), expired when flagged; some are revoked already. */
const forest = fc.integer({ min: 1, max: 40 }).chain((n) =>
  fc.record({
    parents: fc.tuple(...Array.from({ length: n }, (_, i) => (i === 0 ? fc.constant(-1) : fc.integer({ min: -1, max: i - 1 })))),
    expired: fc.array(fc.boolean(), { minLength: n, maxLength: n }),
    revokedBefore: fc.uniqueArray(fc.integer({ min: 0, max: n - 1 }), { maxLength: 3 }),
    // Tokens attenuated offline from token i and used this run (known only in memory), by i.
    seen: fc.array(fc.integer({ min: 0, max: n - 1 }), { maxLength: 8 }),
    // What is revoked together, in order (an unknown id among them).
    revoke: fc.uniqueArray(fc.integer({ min: 0, max: n }), { minLength: 1, maxLength: n + 1 }),
  }),
);

function storeWith(home: string, name: string, f: { parents: number[]; expired: boolean[]; revokedBefore: number[] }) {
  const store = new SqliteStore(join(home, name));
  const chains: string[][] = [];
  f.parents.forEach((p, i) => {
    const chain = p < 0 ? [] : [...(chains[p] as string[]), hexId(p)];
    chains.push(chain);
    store.recordToken({
      id: hexId(i),
      kid: "k",
      sub: `p${i}`,
      chain,
      exp: f.expired[i] ? 500 : 5000,
      mintedBy: "admin",
      createdAt: 0,
      family: hexId(i),
    });
  });
  for (const i of f.revokedBefore) store.revokeToken(hexId(i), "admin", 1);
  return store;
}

describe("revoking many tokens at once (a persona tree's removal)", () => {
  it("revokeAll ends exactly what revoke one by one ends, in the same order (derived tokens in the store and seen in memory)", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-revoke-all-"));
    try {
      let run = 0;
      fc.assert(
        fc.property(forest, (f) => {
          run++;
          const one = storeWith(home, `one-${run}.db`, f);
          const all = storeWith(home, `all-${run}.db`, f);
          try {
            const ids = f.revoke.map(hexId);
            const a = new Revocations(one);
            const b = new Revocations(all);
            f.seen.forEach((i, k) => {
              const chain = one.getToken(hexId(i))?.chain ?? [];
              const g = { id: hexId(i), chain, derived: `d${k}` } as unknown as Grant;
              a.firstUse(g, "alice");
              b.firstUse(g, "alice");
            });
            const expected = ids.map((id) => a.revoke(id, "admin", 1000));
            const got = b.revokeAll(ids, "admin", 1000);
            assert.deepEqual(
              got.ended,
              expected.flatMap((r) => r.ended),
            );
            assert.equal(got.changed, expected.filter((r) => r.changed).length);
            assert.deepEqual(all.revokedTokenIds().sort(), one.revokedTokenIds().sort());
          } finally {
            one.close();
            all.close();
          }
        }),
        { numRuns: 60 },
      );
    } finally {
      removeHome(home);
    }
  });

  it("the ids handed to the revocation fan-out reach every grant a revocation newly covers, and no other (revoke, revokeAll, reload)", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-revoke-fresh-"));
    try {
      let run = 0;
      fc.assert(
        fc.property(forest, fc.integer({ min: 0, max: 2 }), (f, how) => {
          run++;
          const store = storeWith(home, `fresh-${run}.db`, f);
          try {
            const r = new Revocations(store);
            const grants = f.parents.map((_, i) => ({ id: hexId(i), chain: store.getToken(hexId(i))?.chain ?? [] }));
            const before = grants.map((g) => r.covers(g));
            assert.deepEqual(r.takeFresh(), [], "what the store held at start is not new");
            const ids = f.revoke.map(hexId);
            if (how === 0) for (const id of ids) r.revoke(id, "admin", 1000);
            else if (how === 1) r.revokeAll(ids, "admin", 1000);
            else {
              // Revoked by another process on the same database (the CLI without the kernel).
              for (const id of ids) store.revokeToken(id, "cli", 1000);
              r.reload();
            }
            const fresh = new Set(r.takeFresh());
            grants.forEach((g, i) => {
              const newly = r.covers(g) && !before[i];
              const named = [g.id, ...g.chain].some((id) => fresh.has(id));
              // Named but not newly covered is only ever a grant already covered before (nothing to end).
              if (newly) assert.ok(named, `grant ${g.id} newly covered but not reached`);
              if (named) assert.ok(r.covers(g), `grant ${g.id} reached but not covered`);
            });
            assert.deepEqual(r.takeFresh(), [], "taken once");
          } finally {
            store.close();
          }
        }),
        { numRuns: 60 },
      );
    } finally {
      removeHome(home);
    }
  });
});

describe("a revocation a full disk kept back", () => {
  it("stays in force when storing it later fails for another reason (an I/O error): it is kept, not dropped, across a reload", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-revoke-kept-"));
    const store = storeWith(home, "kept.db", { parents: [-1], expired: [false], revokedBefore: [] });
    try {
      const r = new Revocations(store);
      const revoke = store.revokeToken.bind(store);
      let failure: Error = Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" });
      store.revokeToken = () => {
        throw failure;
      };
      r.revoke(hexId(0), "kernel", 2, false, true);
      assert.equal(r.unstoredRevocation(hexId(0)), true, "kept for room");
      failure = Object.assign(new Error("disk I/O error"), { code: "SQLITE_IOERR" });
      assert.throws(() => r.storeKept(), /disk I\/O error/);
      r.reload(true);
      assert.equal(r.covers({ id: hexId(0), chain: [] }), true, "still revoked after the failed store and a reload");
      assert.equal(r.unstoredRevocation(hexId(0)), true, "still waiting to be stored");
      store.revokeToken = revoke;
      r.storeKept();
      assert.equal(r.unstoredRevocation(hexId(0)), false);
      assert.ok(store.revokedTokenIds().includes(hexId(0)));
    } finally {
      store.close();
      removeHome(home);
    }
  });
});
