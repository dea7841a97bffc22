import { decodeToken } from "@kpip/protocol";
import { type Attack, sleep } from "./attack.js";

/** Finding 11: a rate=5 token refreshed to get a full bucket each time. */
export const rateRefresh: Attack = {
  name: "rate-refresh",
  finding: 11,
  summary: "refresh a rate=5 token and burst writes with each fresh copy",
  async run(ctx) {
    const p = await ctx.persona("m11", [{ ops: ["storage.write"], targets: ["obj://m11/**"] }], { rate: 5 });
    const c = await p.connect();
    const id = decodeToken(p.token).claims.id;
    const started = Date.now();
    let admitted = 0;
    let n = 0;
    while (!ctx.signal.aborted) {
      let copy: Uint8Array = p.token;
      try {
        const r = await c.call("token.refresh", `token://${id}`, { token: p.token }, { caps: [p.token] });
        admitted++;
        copy = (r.payload as { token: Uint8Array }).token;
      } catch {
        // rate-limited refresh: burst with what we have
      }
      const burst = await Promise.allSettled(
        Array.from({ length: 20 }, () => c.call("storage.write", `obj://m11/k${n++}`, { data: "x" }, { caps: [copy] })),
      );
      admitted += burst.filter((x) => x.status === "fulfilled").length;
      await sleep(100, ctx.signal);
    }
    await c.close();
    const seconds = (Date.now() - started) / 1000;
    const bound = Math.ceil(5 * seconds) + 5;
    return {
      note: `${admitted} requests admitted in ${seconds.toFixed(1)} s (rate 5/s: at most ${bound})`,
      ok: admitted <= bound,
    };
  },
};
