import { describe, it } from "node:test";
import { until } from "@kpip/protocol/testing";
import { adminIdentity, withKernel } from "./harness.js";
import { RawPeer } from "./wire.js";

// A session's handshake timeout and its dead-peer check measured time on the host's wall clock
// (Date.now): stepped back by D (NTP, `date -s`, a VM resumed), both came D late — a silent peer,
// or one that never attests, held its slot (and its persona's sessions) for an hour more.

const HOUR = 3_600_000;

describe("the host's clock stepped back, a session's own deadlines", () => {
  it("a handshake never finished, and a peer gone silent, are still ended on time after the clock steps back an hour", async () => {
    const realNow = Date.now;
    let offset = 0;
    Date.now = () => realNow() + offset;
    try {
      await withKernel({ heartbeatMs: 200, handshakeTimeoutMs: 500 }, async (t) => {
        const stalled = await RawPeer.connect(t.k.socketPath);
        const silent = await RawPeer.connect(t.k.socketPath);
        await silent.handshake(adminIdentity(t.k), [Buffer.from(t.adminToken, "base64url")]);
        // The peer answers nothing from here on (no PONG), and the clock steps back an hour.
        offset = -HOUR;
        await until(() => stalled.closed, 30_000, "the session that never said HELLO is ended at its handshake timeout");
        await until(() => silent.closed, 30_000, "the silent session is ended as a dead peer");
      });
    } finally {
      Date.now = realNow;
    }
  });
});
