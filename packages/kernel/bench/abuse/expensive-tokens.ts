import { attenuate, decodeToken, encodeToken, type Token } from "@kpip/protocol";
import { type Attack, errorSummary, hammer } from "./attack.js";

/** The token: 64 caveats of 64 long target patterns (~300 KB), attenuated offline. */
function huge(t: Token, seed: number): Token {
  for (let i = 0; i < 64; i++) {
    t = attenuate(t, {
      t: "targets",
      v: Array.from({ length: 64 }, (_, j) => `obj://m3/${"p".repeat(48)}/${seed}/${i}/${j}/**`),
    });
  }
  return t;
}

/** The largest token that fits 8 KiB: long literal patterns, every caveat walked. */
function largestThatFits(t: Token, seed: number, max = 8192): Token {
  for (let i = 0; t.caveats.length < 64; i++) {
    const next = attenuate(t, {
      t: "targets",
      v: [...Array.from({ length: 8 }, (_, j) => `obj://m3/${"q".repeat(40)}/${seed}/${i}/${j}`), "obj://m3/**"],
    });
    if (encodeToken(next).length > max) break;
    t = next;
  }
  return t;
}

/**
 * Finding 3: bind expensive tokens (the issue's ~300 KB ones; where refused, the largest that
 * fit), then send requests naming every handle with a new target each time, so no cached
 * decision applies.
 */
export const expensiveTokens: Attack = {
  name: "expensive-tokens",
  finding: 3,
  summary: "bind 8 tokens of 64 caveats × 64 long patterns, then request with all of them",
  async run(ctx) {
    const p = await ctx.persona("m3", [{ ops: ["storage.read", "token.bind"], targets: ["obj://m3/**", "token://**"] }]);
    const c = await p.connect();
    const base = decodeToken(p.token);
    let hugeBound = 0;
    let fitBound = 0;
    for (let i = 0; i < 8; i++) {
      const t = huge(base, i);
      try {
        await c.call("token.bind", `token://${t.claims.id}`, { token: encodeToken(t) });
        hugeBound++;
      } catch {
        // refused on size: bind the largest that fits instead
      }
    }
    for (let i = 0; i < 64 && hugeBound < 8; i++) {
      const t = largestThatFits(base, i);
      try {
        await c.call("token.bind", `token://${t.claims.id}`, { token: encodeToken(t) });
        fitBound++;
      } catch {
        break;
      }
    }
    const handles = Array.from({ length: hugeBound + fitBound + 1 }, (_, i) => i + 1);
    const r = await hammer(ctx.signal, 4, (i) => c.call("storage.read", `obj://m3/none/${i}`, {}, { caps: handles }));
    await c.close();
    return {
      note: `bound ${hugeBound} huge + ${fitBound} of 8 KiB; ${r.ok + r.failed} requests (${errorSummary(r.errors)})`,
      ok: hugeBound === 0,
    };
  },
};
