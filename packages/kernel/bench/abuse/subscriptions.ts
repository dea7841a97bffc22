import type { KernelClient } from "@kpip/client";
import { type Attack, hammer } from "./attack.js";

/** Finding 5: as many subscriptions as the kernel takes, then emits that match none of them. */
export const subscriptions: Attack = {
  name: "subscriptions",
  finding: 5,
  summary: "20,000 subscriptions over 4 sessions of one persona, then unrelated emits",
  async run(ctx) {
    const p = await ctx.persona("m5", [{ ops: ["event.*"], targets: ["topic://m5/**"] }]);
    const sessions: KernelClient[] = [];
    let held = 0;
    let refused = 0;
    for (let s = 0; s < 4 && !ctx.signal.aborted; s++) {
      const c = await p.connect();
      sessions.push(c);
      for (let i = 0; i < 5000 && !ctx.signal.aborted; i += 25) {
        const r = await Promise.allSettled(
          Array.from({ length: 25 }, (_, j) => c.call("event.subscribe", `topic://m5/s${s}/${i + j}/*`)),
        );
        held += r.filter((x) => x.status === "fulfilled").length;
        refused += r.filter((x) => x.status === "rejected").length;
        if (r.every((x) => x.status === "rejected")) break;
      }
    }
    const emitter = sessions[0] as KernelClient;
    const r = await hammer(ctx.signal, 2, (i) => emitter.events.emit(`topic://m5/elsewhere/${i}`));
    for (const c of sessions) await c.close();
    return { note: `${held} subscriptions held, ${refused} refused; ${r.ok} unrelated emits`, ok: held <= 2048 };
  },
};
