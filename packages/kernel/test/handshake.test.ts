import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { KernelUnavailableError, KpipError } from "@kpip/client";
import { encodeFrame, generateIdentity, HEADER_SIZE, MessageType, writeHeader } from "@kpip/protocol";
import { adminIdentity, removeHome, startKernel, type TestKernel, until } from "./harness.js";
import { RawPeer } from "./wire.js";

describe("handshake and attestation", () => {
  let t: TestKernel;
  before(async () => {
    // A generous handshake time: on a busy machine a good handshake must never race the timeout.
    t = await startKernel({ handshakeTimeoutMs: 60_000, heartbeatMs: 5000 });
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  const handshakeFailures = () => t.k.inspect.queryAudit({ op: "session.handshake" });
  /** The kernel must still serve a good client after every failure. */
  const stillServing = async () => {
    const c = await t.admin();
    assert.equal((await c.system.health()).status, "ok");
    await c.close();
  };
  const expectFatal = async (p: RawPeer, cls: string, code: string) => {
    const e = await p.next("ERROR");
    assert.equal(e.type, "ERROR");
    assert.deepEqual([e.body.class, e.body.code, e.body.fatal], [cls, code, true]);
    await until(() => p.closed, 10_000, "close");
  };

  it("succeeds: WELCOME names the attested persona and the bound handle", async () => {
    const p = await RawPeer.connect(t.k.socketPath);
    const w = await p.handshake(adminIdentity(t.k), [Buffer.from(t.adminToken, "base64url")]);
    assert.equal(w.type, "WELCOME");
    assert.deepEqual(w.body, { persona: "admin", handles: [1] });
    p.request(1, { op: "system.health", target: "kernel://", args: {} }, { persona: "admin" });
    assert.equal((await p.response(1)).status, "SUCCESS");
    p.close();
    assert.ok(t.k.inspect.queryAudit({ op: "session.open" }).length >= 1);
  });

  it("refuses a signature over another transcript (AUTH) and audits it", async () => {
    const before = handshakeFailures().length;
    const p = await RawPeer.connect(t.k.socketPath);
    const id = adminIdentity(t.k);
    await p.hello(id);
    p.sendMessage({ type: "ATTEST", body: { signature: p.sign(id, Buffer.from("not the challenge")), tokens: [] } });
    await expectFatal(p, "AUTH", "ATTESTATION_FAILED");
    await until(() => handshakeFailures().length > before, 10_000, "audit");
    assert.match(handshakeFailures().at(-1)?.message ?? "", /signature/);
    await stillServing();
  });

  it("refuses an attestation replayed from another session (nonce differs)", async () => {
    const id = adminIdentity(t.k);
    const a = await RawPeer.connect(t.k.socketPath);
    const { bytes } = await a.hello(id);
    const sigA = a.sign(id, bytes);
    const b = await RawPeer.connect(t.k.socketPath);
    await b.hello(id);
    b.sendMessage({ type: "ATTEST", body: { signature: sigA, tokens: [] } });
    await expectFatal(b, "AUTH", "ATTESTATION_FAILED");
    a.close();
  });

  it("refuses an unknown persona and a public key other than the registered one", async () => {
    const stranger = generateIdentity("stranger");
    await assert.rejects(t.connect(stranger, []), (e: unknown) => e instanceof KpipError && e.errorClass === "AUTH");
    const impostor = { ...generateIdentity("admin") };
    await assert.rejects(t.connect(impostor, []), (e: unknown) => e instanceof KpipError && e.errorClass === "AUTH");
    await stillServing();
  });

  it("refuses frames before the handshake and out-of-order messages", async () => {
    for (const m of [
      encodeFrame(
        { type: MessageType.REQUEST, stream: 1 },
        { version: 1, persona: "admin", id: 1, intent: Buffer.from("a0", "hex"), context: { persona: "admin" }, caps: [] },
      ),
      encodeFrame({ type: MessageType.ATTEST }, { signature: Buffer.alloc(64), tokens: [] }),
      encodeFrame({ type: MessageType.PING }, { seq: 1 }),
      encodeFrame({ type: MessageType.WELCOME }, { persona: "admin", handles: [] }),
    ]) {
      const p = await RawPeer.connect(t.k.socketPath);
      p.send(m);
      await expectFatal(p, "PROTOCOL", "UNEXPECTED_MESSAGE");
    }
    const p = await RawPeer.connect(t.k.socketPath);
    const id = adminIdentity(t.k);
    await p.hello(id);
    p.sendMessage({
      type: "HELLO",
      body: { versions: [1], persona: "admin", publicKey: id.publicKey, instance: Buffer.alloc(16), features: [] },
    });
    await expectFatal(p, "PROTOCOL", "UNEXPECTED_MESSAGE");
    await stillServing();
  });

  it("closes on bad magic, unknown types and oversized declared lengths, and keeps serving", async () => {
    const cases: [Buffer, string][] = [
      [Buffer.from("GET / HTTP/1.1\r\n\r\n"), "BAD_MAGIC"],
      [Buffer.from("4b50017f000000000000000000000000", "hex"), "UNKNOWN_TYPE"],
      [Buffer.from("4b500208000000000000000000000000", "hex"), "UNSUPPORTED_VERSION"],
    ];
    const big = Buffer.alloc(HEADER_SIZE);
    writeHeader(big, 0, { type: MessageType.HELLO, flags: 0, stream: 0, length: 0xffffffff });
    cases.push([big, "TOO_LARGE"]);
    for (const [bytes, code] of cases) {
      const p = await RawPeer.connect(t.k.socketPath);
      p.send(bytes);
      if (bytes.length < HEADER_SIZE) p.send(Buffer.alloc(HEADER_SIZE));
      await expectFatal(p, "PROTOCOL", code);
    }
    await stillServing();
  });

  it("times out a peer that connects and says nothing (slowloris)", async () => {
    // Its own kernel with a short handshake time: only this test waits it out.
    const short = await startKernel({ handshakeTimeoutMs: 400, heartbeatMs: 5000 });
    try {
      const p = await RawPeer.connect(short.k.socketPath);
      p.send(Buffer.from("4b5001", "hex"));
      await expectFatal(p, "PROTOCOL", "HANDSHAKE_TIMEOUT");
    } finally {
      await short.stop();
      removeHome(short.home);
    }
  });

  it("reports no kernel as KernelUnavailableError", async () => {
    await assert.rejects(
      t.connect(adminIdentity(t.k), [], { socket: `${t.home}/nope.sock` } as never),
      (e: unknown) => e instanceof KernelUnavailableError,
    );
  });
});
