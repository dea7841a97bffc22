import { type Attack, errorSummary, hammer } from "./attack.js";

const wide = (n: number) => ({
  ops: Array.from({ length: n }, (_, i) => `storage.read${i}`),
  targets: Array.from({ length: n }, (_, i) => `obj://ws${i}/**`),
});

/** Finding 2: escalation checks over 1,500 × 1,500 (op, target) pairs, in token.mint and agent.spawn. */
export const mintPairs: Attack = {
  name: "mint-pairs",
  finding: 2,
  summary: "token.mint / agent.spawn asking for 1,500 × 1,500 patterns",
  async run(ctx) {
    const p = await ctx.persona("m2", [{ ops: ["token.mint", "agent.spawn"], targets: ["persona://m2/**", "agent://**"] }]);
    const c = await p.connect();
    const rights = [wide(1500)];
    const r = await hammer(ctx.signal, 2, (i) =>
      i % 2
        ? c.call("agent.spawn", `agent://true/x${i}`, { rights, lifetimeMs: 1000 } as never)
        : c.call("token.mint", "persona://m2/sub", { rights, ttlMs: 60_000 } as never),
    );
    await c.close();
    return { note: `${r.ok + r.failed} requests (${errorSummary(r.errors)})`, ok: r.ok === 0 };
  },
};
