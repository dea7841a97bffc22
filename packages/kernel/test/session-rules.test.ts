import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { encodeIntent, encodeMessage, type Identity, MIN_MAX_BODY } from "@kpip/protocol";
import { ConfigError, resolveConfig } from "../src/index.js";
import { adminIdentity, kernelForSuite, until } from "./harness.js";
import { attestSignature, auditRecord, helloAs, helloFrame, RawPeer, requestFrame } from "./wire.js";

/** A raw admin session that asked for `maxBody` in HELLO; returns the peer and the CHALLENGE's limits. */
async function peerWithMaxBody(socket: string, identity: Identity, token: Buffer, maxBody: number) {
  const p = await RawPeer.connect(socket);
  const h = await helloAs(p, identity.persona, identity.publicKey, Buffer.alloc(16, 9), [1], { maxBody });
  const challenge = h.challenge;
  p.sendMessage({
    type: "ATTEST",
    body: { signature: attestSignature(identity, h.helloBytes, h.challengeBytes), tokens: [token] },
  });
  await p.next("WELCOME");
  return { p, limits: challenge.body.limits };
}

describe("the negotiated maxBody (PROTOCOL §4.5, §8.3)", () => {
  const s = kernelForSuite();
  const token = () => Buffer.from(s.t.adminToken, "base64url");

  it("a HELLO asking for a maxBody below the minimum is refused: fatal PROTOCOL BAD_FIELD, audited", async () => {
    const id = adminIdentity(s.t.k);
    const p = await RawPeer.connect(s.t.k.socketPath);
    p.send(helloFrame(id.persona, id.publicKey, Buffer.alloc(16, 1), [1], { maxBody: 512 }));
    const e = await p.next("ERROR");
    assert.deepEqual([e.body.class, e.body.code, e.body.fatal], ["PROTOCOL", "BAD_FIELD", true]);
    assert.match(e.body.message, new RegExp(`minimum of ${MIN_MAX_BODY}`));
    await until(() => p.closed, 10_000, "closed");
    await auditRecord(s.t.k, (r) => r.op === "session.handshake" && (r.message ?? "").includes("HELLO.maxBody 512"));
  });

  it("a kernel configured with maxBodyBytes below the minimum does not start (ConfigError)", () => {
    const flags = { home: s.t.home, maxBodyBytes: MIN_MAX_BODY - 1 };
    assert.throws(
      () => resolveConfig({ flags, env: {} }),
      (e: unknown) => e instanceof ConfigError && /at least 4096/.test(String(e)),
    );
    assert.equal(resolveConfig({ flags: { ...flags, maxBodyBytes: MIN_MAX_BODY }, env: {} }).maxBodyBytes, MIN_MAX_BODY);
  });

  it("a REQUEST over the negotiated maxBody ends that session with TOO_LARGE; the kernel serves others", async () => {
    const { p, limits } = await peerWithMaxBody(s.t.k.socketPath, adminIdentity(s.t.k), token(), MIN_MAX_BODY);
    assert.equal(limits.maxBody, MIN_MAX_BODY, "announced as asked");
    p.send(requestFrame(10, { op: "storage.write", target: "obj://mb/big", args: { data: "x".repeat(MIN_MAX_BODY) } }));
    const e = await p.next("ERROR");
    assert.deepEqual([e.body.class, e.body.code, e.body.fatal], ["PROTOCOL", "TOO_LARGE", true]);
    await until(() => p.closed, 10_000, "closed");
    assert.equal(s.t.k.inspect.statObject("mb", "big"), undefined, "nothing of it ran");
    assert.equal((await s.admin.system.health()).status, "ok");
  });

  it("a response that does not fit the session's maxBody is answered FAILURE RESOURCE, audited; the session keeps serving", async () => {
    const { p } = await peerWithMaxBody(s.t.k.socketPath, adminIdentity(s.t.k), token(), MIN_MAX_BODY);
    // the op table is far larger than 4096 bytes: built, then found not to fit
    p.send(requestFrame(20, { op: "system.describe", target: "kernel://", args: {} }));
    const r = await p.response(20);
    assert.deepEqual([r.status, r.error], ["FAILURE", "RESOURCE"]);
    assert.match(r.message ?? "", /does not fit this session's maxBody of 4096 bytes/);
    await auditRecord(
      s.t.k,
      (x) => x.op === "session.response" && x.requestId === 20 && x.errorClass === "RESOURCE" && x.phase === "refused",
    );
    p.send(requestFrame(21, { op: "system.health", target: "kernel://", args: {} }));
    assert.equal((await p.response(21)).status, "SUCCESS", "the session continues");
    assert.equal(p.closed, false);
    p.close();
  });

  it("a read larger than the session's maxBody is refused SEMANTIC before the object is read; a range that fits is answered", async () => {
    await s.admin.storage.write("obj://mb/large", "y".repeat(2 * MIN_MAX_BODY));
    const { p } = await peerWithMaxBody(s.t.k.socketPath, adminIdentity(s.t.k), token(), MIN_MAX_BODY);
    p.send(requestFrame(22, { op: "storage.read", target: "obj://mb/large", args: {} }));
    const r = await p.response(22);
    assert.deepEqual([r.status, r.error], ["FAILURE", "SEMANTIC"]);
    assert.match(r.message ?? "", /do not fit one response \(at most \d+\); read the object in ranges/);
    p.send(requestFrame(23, { op: "storage.read", target: "obj://mb/large", args: { offset: 0, length: 1024 } }));
    const part = await p.response(23);
    assert.equal(part.status, "SUCCESS");
    assert.equal((part.payload as { data: Uint8Array }).data.length, 1024);
    p.close();
  });

  it("an EVENT that does not fit the session's maxBody is not sent; the next one carries the gap", async () => {
    const { p } = await peerWithMaxBody(s.t.k.socketPath, adminIdentity(s.t.k), token(), MIN_MAX_BODY);
    p.send(requestFrame(30, { op: "event.subscribe", target: "topic://mb/*", args: {} }));
    assert.equal((await p.response(30)).status, "SUCCESS");
    await s.admin.events.emit("topic://mb/a", { big: "z".repeat(2 * MIN_MAX_BODY) });
    await s.admin.events.emit("topic://mb/a", { small: true });
    const ev = await p.next("EVENT", 10_000);
    assert.deepEqual(ev.body.data, { small: true });
    assert.equal(ev.body.gap, 1);
    assert.equal(ev.body.seq, 2);
    p.close();
  });
});

describe("GOODBYE and the requests after it (PROTOCOL §8.6)", () => {
  const s = kernelForSuite();

  it("GOODBYE and a REQUEST in one write: the REQUEST is answered FAILURE PROTOCOL and audited, then GOODBYE, then close", async () => {
    const p = await RawPeer.connect(s.t.k.socketPath);
    await p.handshake(adminIdentity(s.t.k), [Buffer.from(s.t.adminToken, "base64url")]);
    const intent = encodeIntent({ op: "storage.write", target: "obj://gb/late", args: { data: "never" } });
    p.send(Buffer.concat([encodeMessage({ type: "GOODBYE", body: { reason: "done" } }), requestFrame(3, intent)]));
    await p.next("GOODBYE", 10_000);
    const kinds = p.frames.map((f) => f.msg.type);
    assert.deepEqual(kinds, ["RESPONSE"], "the RESPONSE came before the kernel's GOODBYE");
    const r = await p.response(3);
    assert.deepEqual([r.status, r.error], ["FAILURE", "PROTOCOL"]);
    await until(() => p.closed, 10_000, "closed after GOODBYE");
    const rec = await auditRecord(s.t.k, (x) => x.requestId === 3 && x.phase === "refused" && x.errorClass === "PROTOCOL");
    assert.equal(rec.op, "storage.write");
    assert.equal(s.t.k.inspect.statObject("gb", "late"), undefined, "not executed");
  });

  it("a second GOODBYE on a closing session is ignored (PROTOCOL §8.6, §15.1): no ERROR, one GOODBYE back, then close", async () => {
    const p = await RawPeer.connect(s.t.k.socketPath);
    await p.handshake(adminIdentity(s.t.k), [Buffer.from(s.t.adminToken, "base64url")]);
    const intent = encodeIntent({ op: "system.health", target: "kernel://", args: {} });
    const bye = encodeMessage({ type: "GOODBYE", body: {} });
    p.send(Buffer.concat([bye, bye, requestFrame(4, intent)]));
    await p.next("GOODBYE", 10_000);
    await until(() => p.closed, 10_000, "closed after GOODBYE");
    // next() took the kernel's GOODBYE; what is left is the late REQUEST's answer, and no ERROR.
    assert.deepEqual(
      p.frames.map((f) => f.msg.type),
      ["RESPONSE"],
      "the late REQUEST answered, one GOODBYE, no ERROR",
    );
    const r = await p.response(4);
    assert.deepEqual([r.status, r.error], ["FAILURE", "PROTOCOL"]);
  });
});
