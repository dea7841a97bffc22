import { type Attack, RawConn, requestFrame, sleep } from "./attack.js";

/** Finding 4: subscribers that stop reading while 8 MiB events are emitted. */
export const eventBytes: Attack = {
  name: "event-bytes",
  finding: 4,
  summary: "4 subscribers stop reading; 8 MiB events emitted in a loop",
  async run(ctx) {
    const p = await ctx.persona("m4", [{ ops: ["event.*"], targets: ["topic://m4/**"] }]);
    const readers: RawConn[] = [];
    for (let i = 0; i < 4; i++) {
      const c = await RawConn.connect(ctx.socket);
      await c.handshake(p.identity, [p.token]);
      c.send(requestFrame(1, { op: "event.subscribe", target: "topic://m4/**", args: {} }, { persona: "m4" }));
      await c.next("RESPONSE");
      c.sock.pause();
      readers.push(c);
    }
    const emitter = await p.connect();
    const payload = new Uint8Array(8 * 1024 * 1024).fill(1);
    let emits = 0;
    while (!ctx.signal.aborted) {
      try {
        await emitter.events.emit("topic://m4/x", { payload });
        emits++;
      } catch {
        await sleep(50, ctx.signal);
      }
    }
    const status = (await ctx.admin.call("system.status", "kernel://")).payload as { events: { dropped: number } };
    for (const r of readers) r.close();
    await emitter.close();
    return { note: `${emits} emits of 8 MiB to 4 stalled subscribers; ${status.events.dropped} dropped`, ok: true };
  },
};
