import { decodeToken } from "@kpip/protocol";
import { type Attack, errorSummary, hammer } from "./attack.js";

/** Finding 10: token.refresh in a loop (a row per call), then the admin lists every token. */
export const tokenRows: Attack = {
  name: "token-rows",
  finding: 10,
  summary: "token.refresh in a loop with only a system.health grant; then the admin's token list",
  async run(ctx) {
    const p = await ctx.persona("m10", [{ ops: ["system.health"], targets: ["kernel://"] }]);
    const c = await p.connect();
    const id = decodeToken(p.token).claims.id;
    const r = await hammer(ctx.signal, 4, () =>
      c.call("token.refresh", `token://${id}`, { token: p.token }, { caps: [p.token] }),
    );
    await c.close();
    // The admin's whole list must arrive (paged) and the admin's session must survive it.
    let listed = 0;
    for await (const _ of ctx.admin.tokens.list({ pageSize: 1000 })) listed++;
    await ctx.admin.system.health();
    return {
      note: `${r.ok} refreshes admitted, ${r.failed} refused (${errorSummary(r.errors)}); admin listed ${listed}`,
      ok: r.ok <= 1000,
    };
  },
};
