// Frames that arrive in one read are each checked against the body limit in force when the
// kernel handles them (after what the frames before them negotiated), not when the read came.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { encodeIntent, encodeMessage, generateIdentity, HANDSHAKE_MAX_BODY } from "@kpip/protocol";
import { adminIdentity, suiteKernel, until } from "./harness.js";
import { helloFrame, RawPeer, requestFrame } from "./wire.js";

describe("frames of one read, each against the limit in force when it is handled", () => {
  const s = suiteKernel();

  it("a HELLO offering maxBody 4096 bounds the ATTEST that came in the same read: TOO_LARGE, its body never decoded", async () => {
    const p = await RawPeer.connect(s.t.k.socketPath);
    const id = generateIdentity("alice");
    // 10 KiB of ATTEST: within the 16 KiB before HELLO, past the 4096 HELLO asked for.
    const attest = encodeMessage({
      type: "ATTEST",
      body: { signature: Buffer.alloc(64), tokens: [Buffer.alloc(5_000, 0x61), Buffer.alloc(5_000, 0x62)] },
    });
    assert.ok(attest.length > 4096 + 16 && attest.length < HANDSHAKE_MAX_BODY.hello);
    p.send(Buffer.concat([helloFrame("alice", id.publicKey, undefined, [1], { maxBody: 4096 }), attest]));
    await p.next("CHALLENGE");
    // Checked against the limit before HELLO, the ATTEST was decoded whole and failed its signature (AUTH).
    const e = await p.next("ERROR");
    assert.deepEqual([e.body.class, e.body.code, e.body.fatal], ["PROTOCOL", "TOO_LARGE", true], e.body.message);
    await until(() => p.closed, 30_000, "the kernel closes the socket");
  });

  it("a REQUEST over the ATTEST bound, sent with the ATTEST, is within the session's maxBody once attested: answered", async () => {
    const p = await RawPeer.connect(s.t.k.socketPath);
    const admin = adminIdentity(s.t.k);
    const { bytes } = await p.hello(admin);
    const attest = encodeMessage({
      type: "ATTEST",
      body: { signature: p.sign(admin, bytes), tokens: [Buffer.from(s.t.adminToken, "base64url")] },
    });
    // 2 MiB of arguments: over the 1 MiB an ATTEST may be, within the 16 MiB session.
    const big = encodeIntent({ op: "system.health", target: "kernel://", args: { pad: Buffer.alloc(2 << 20, 0x62) } });
    assert.ok(big.length > HANDSHAKE_MAX_BODY.attest);
    p.send(Buffer.concat([attest, requestFrame(1, big, { persona: admin.persona })]));
    await p.next("WELCOME");
    // Checked against the ATTEST's bound, the REQUEST's header ended the session (TOO_LARGE).
    const r = await p.response(1);
    assert.deepEqual([r.status, r.error], ["FAILURE", "SEMANTIC"], r.message);
    assert.equal(p.closed, false);
  });
});
