import { generateIdentity } from "@kpip/protocol";
import { type Attack, RawConn, requestFrame, sleep } from "./attack.js";

/** Finding 8: a persona with no capability at all sends requests carrying ~60 KiB intents; every refusal is audited. */
export const refusalFlood: Attack = {
  name: "refusal-flood",
  finding: 8,
  summary: "refused requests with 60 KiB intents from a persona with no capability",
  async run(ctx) {
    // Registered, but granted nothing: every request is refused before any capability resolves.
    const identity = generateIdentity("m8");
    await ctx.admin.personas.register("m8", identity.publicKey);
    const c = await RawConn.connect(ctx.socket);
    await c.handshake(identity, []);
    const data = new Uint8Array(60 * 1024).fill(8);
    let sent = 0;
    let id = 1;
    while (!ctx.signal.aborted && !c.closed) {
      for (let i = 0; i < 32; i++) {
        c.send(requestFrame(id, { op: "storage.write", target: `obj://m8/${id}`, args: { data } }, { persona: "m8", caps: [] }));
        id++;
        sent++;
      }
      // Keep reading the refusals (a peer that stops reading is another attack).
      c.frames.length = 0;
      await sleep(5, ctx.signal);
    }
    c.close();
    return { note: `${sent} refused requests sent`, ok: true };
  },
};
