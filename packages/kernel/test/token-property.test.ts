import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { attenuate, type Caveat, decodeToken, encodeToken, type Right } from "@kpip/protocol";
import fc from "fast-check";
import { capabilities, RootKeys, SqliteStore } from "../src/index.js";
import { removeHome } from "./harness.js";

const ops = ["storage.read", "storage.write", "storage.delete", "event.emit", "system.health"];
const opPatterns = [...ops, "storage.*", "event.*", "**"];
const targets = ["obj://ws1/a", "obj://ws1/a/b", "obj://ws1/ab", "obj://ws2/a", "topic://t/x", "kernel://"];
const targetPatterns = [...targets, "obj://ws1/*", "obj://ws1/**", "obj://**", "topic://t/*", "**"];
const personas = ["alice", "alice/w1", "alice/w2", "bob"];

const right: fc.Arbitrary<Right> = fc.record({
  ops: fc.uniqueArray(fc.constantFrom(...opPatterns), { minLength: 1, maxLength: 3 }),
  targets: fc.uniqueArray(fc.constantFrom(...targetPatterns), { minLength: 1, maxLength: 3 }),
});
const caveat: fc.Arbitrary<Caveat> = fc.oneof(
  fc.record({
    t: fc.constant("ops" as const),
    v: fc.uniqueArray(fc.constantFrom(...opPatterns), { minLength: 1, maxLength: 2 }),
  }),
  fc.record({
    t: fc.constant("targets" as const),
    v: fc.uniqueArray(fc.constantFrom(...targetPatterns), { minLength: 1, maxLength: 2 }),
  }),
  fc.record({ t: fc.constant("exp" as const), v: fc.integer({ min: 0, max: 200 }).map((d) => 1_000_000 + d) }),
  fc.record({ t: fc.constant("sub" as const), v: fc.constantFrom(...personas) }),
  fc.record({ t: fc.constant("workspaces" as const), v: fc.uniqueArray(fc.constantFrom("ws1", "ws2"), { maxLength: 2 }) }),
);
const request = fc.record({
  op: fc.constantFrom(...ops),
  target: fc.constantFrom(...targets),
  persona: fc.constantFrom(...personas),
  workspace: fc.constantFrom(undefined, "ws1", "ws2"),
  at: fc.integer({ min: 1_000_000 - 10, max: 1_000_000 + 210 }),
});

describe("attenuation (property)", () => {
  it("a derived token never authorizes a request its parent refuses", () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-prop-"));
    const store = new SqliteStore(join(home, "kernel.db"));
    let now = 1_000_000;
    const { enforcer, tokens } = capabilities(new RootKeys(home), store, () => now);
    const decide = (
      token: Uint8Array,
      r: { op: string; target: string; persona: string; workspace: string | undefined; at: number },
    ) => {
      now = r.at;
      const ctx: { persona: string; workspace?: string } = { persona: r.persona };
      if (r.workspace) ctx.workspace = r.workspace;
      return enforcer.authorize({
        persona: r.persona,
        session: "s",
        intent: { op: r.op, target: r.target, args: {} },
        context: ctx,
        caps: [token],
        declaration: undefined,
      }).allowed;
    };
    try {
      fc.assert(
        fc.property(
          fc.array(right, { minLength: 1, maxLength: 3 }),
          fc.array(caveat, { maxLength: 5 }),
          fc.array(request, { minLength: 1, maxLength: 8 }),
          (rights, caveats, requests) => {
            now = 1_000_000;
            let t = tokens.mint(undefined, "test", { sub: "alice", rights, ttlMs: 150 });
            const chain = [encodeToken(t)];
            for (const c of caveats) {
              t = attenuate(t, c);
              chain.push(encodeToken(t));
            }
            for (const r of requests) {
              for (let i = 1; i < chain.length; i++) {
                if (decide(chain[i] as Uint8Array, r)) {
                  assert.ok(
                    decide(chain[i - 1] as Uint8Array, r),
                    `caveat ${JSON.stringify(caveats[i - 1])} widened ${JSON.stringify(r)}`,
                  );
                }
              }
            }
            assert.equal(JSON.stringify(decodeToken(chain.at(-1) as Uint8Array).caveats), JSON.stringify(caveats));
          },
        ),
        { numRuns: 300 },
      );
    } finally {
      store.close();
      removeHome(home);
    }
  });
});
