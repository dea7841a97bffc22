import { encodeMessage } from "@kpip/protocol";
import { type Attack, RawConn, sleep } from "./attack.js";

/** Finding 9: before HELLO, non-fatal ERROR frames in a tight loop (each was logged at info). */
export const logFlood: Attack = {
  name: "log-flood",
  finding: 9,
  summary: "an unauthenticated connection sending non-fatal ERROR frames",
  async run(ctx) {
    const frame = encodeMessage({ type: "ERROR", body: { class: "PROTOCOL", code: "NOISE", message: "x", fatal: false } });
    const batch = Buffer.concat(Array.from({ length: 1000 }, () => frame));
    let sent = 0;
    let conns = 0;
    while (!ctx.signal.aborted) {
      const c = await RawConn.connect(ctx.socket).catch(() => undefined);
      if (!c) {
        await sleep(50, ctx.signal);
        continue;
      }
      conns++;
      while (!ctx.signal.aborted && !c.closed) {
        if (c.sock.writableLength < 1 << 20) {
          c.send(batch);
          sent += 1000;
        }
        await sleep(2, ctx.signal);
      }
      c.close();
    }
    return { note: `${sent} ERROR frames on ${conns} connections`, ok: true };
  },
};
