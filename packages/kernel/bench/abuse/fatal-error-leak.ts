import { generateIdentity } from "@kpip/protocol";
import { type Attack, RawConn, sleep } from "./attack.js";

/** Finding 7: a peer's fatal ERROR, after which the peer keeps its socket open. */
export const fatalErrorLeak: Attack = {
  name: "fatal-error-leak",
  finding: 7,
  summary: "connections that send a fatal ERROR (before and after HELLO) and stay open",
  async run(ctx) {
    const held: RawConn[] = [];
    const id = generateIdentity("nobody");
    for (let i = 0; !ctx.signal.aborted && held.length < 800; i++) {
      try {
        const c = await RawConn.connect(ctx.socket);
        if (i % 2) {
          c.sendMessage({
            type: "HELLO",
            body: { versions: [1], persona: "nobody", publicKey: id.publicKey, instance: Buffer.alloc(16, 1), features: [] },
          });
          await c.next("CHALLENGE").catch(() => {});
        }
        c.sendMessage({ type: "ERROR", body: { class: "PROTOCOL", code: "BYE", message: "fatal", fatal: true } });
        held.push(c);
      } catch {
        break;
      }
      if (i % 50 === 49) await sleep(20, ctx.signal);
    }
    // Wait for the end, then give the kernel a moment to read the last ERRORs sent (a busy
    // machine may not have run it since): every connection it still holds after that leaked.
    while (!ctx.signal.aborted) await sleep(100, ctx.signal);
    for (let waited = 0; waited < 5000 && held.some((c) => !c.closed); waited += 50) await sleep(50);
    const open = held.filter((c) => !c.closed).length;
    for (const c of held) c.close();
    return { note: `${held.length} fatal ERRORs sent; ${open} connections left open by the kernel`, ok: open === 0 };
  },
};
