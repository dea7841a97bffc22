import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { attenuate, decodeToken, encodeToken } from "@kpip/protocol";
import { withKernel } from "./harness.js";
import { RawPeer } from "./wire.js";

// The kernel's rates are token buckets refilled by the time since their last use, read from the
// host's wall clock (Date.now). That clock steps back — NTP correcting a clock that ran ahead, an
// operator's `date -s`, a VM resumed — and the refill added the negative time: every bucket fell
// that many seconds of its rate into debt. A step back of a few seconds ended every session at its
// next control frame (the PONG to the kernel's heartbeat) with CONTROL_FLOOD, and for as long as
// the step, every persona was refused reopening one (sessionOpenPersonaRate), every new token
// (TOO_MANY_NEW_TOKENS) and every request under a token with a `rate`.

describe("the host's clock stepped back", () => {
  it("sessions, their control frames, session opens, new tokens and a token's rate carry on: a step back is no time passed, never a debt", async () => {
    const realNow = Date.now;
    let offset = 0;
    Date.now = () => realNow() + offset;
    try {
      await withKernel({}, async (t) => {
        const alice = await t.persona("alice", [{ ops: ["system.health"], targets: ["kernel://"] }], {
          limits: { rate: 50 },
          ttlMs: 86_400_000,
        });
        const c = await t.connect(alice.identity, [alice.token], { maxAttempts: 1 });
        const p = await RawPeer.connect(t.k.socketPath);
        p.answerPings();
        await p.handshake(alice.identity, []);
        // The clock ran an hour ahead (the tokens were minted an hour "ago")...
        offset = 3_600_000;
        p.sendMessage({ type: "PING", body: { seq: 0 } });
        assert.equal((await p.next("PONG")).body.seq, 0);
        assert.equal((await c.system.health()).status, "ok");
        const opened = await t.connect(alice.identity, [], { maxAttempts: 1 });
        await opened.close();
        const fresh = (i: number) =>
          encodeToken(attenuate(decodeToken(alice.token), { t: "targets", v: ["kernel://", `topic://step/${i}`] }));
        assert.equal((await c.call("system.health", "kernel://", {}, { caps: [fresh(0)] })).status, "SUCCESS");
        // ...and is set back ten minutes.
        offset = 3_000_000;
        p.sendMessage({ type: "PING", body: { seq: 1 } });
        const pong = await p.next("PONG");
        assert.equal(pong.body.seq, 1);
        assert.equal(
          p.frames.find((f) => f.msg.type === "ERROR"),
          undefined,
        );
        assert.equal((await c.system.health()).status, "ok");
        assert.equal((await c.call("system.health", "kernel://", {}, { caps: [fresh(1)] })).status, "SUCCESS");
        const again = await t.connect(alice.identity, [], { maxAttempts: 1 });
        assert.equal((await again.call("system.health", "kernel://", {}, { caps: [alice.token] })).status, "SUCCESS");
        p.close();
      });
    } finally {
      Date.now = realNow;
    }
  });
});
