import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import { type AddressInfo, connect, createServer } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import nodeTls from "node:tls";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { InsecureTransportError, KernelClient, KernelUnavailableError } from "@kpip/client";
import {
  attestationTranscript,
  decodeMessage,
  encodeIntent,
  encodeMessage,
  FrameDecoder,
  GRPC_MAX_MESSAGE_BYTES,
  HEADER_SIZE,
  type Identity,
  type Message,
  signBytes,
} from "@kpip/protocol";
import { pino } from "pino";
import { ConfigError, Kernel, type KernelOptions } from "../src/index.js";
import { GRPC_BYTES_AFTER_END, serverCredentials } from "../src/transport/grpc.js";
import { adminIdentity, removeHome, runExample, startKernel, type TestKernel, until } from "./harness.js";
import { helloFrame, RawPeer } from "./wire.js";

const tls = (f: string) => fileURLToPath(new URL(`../../test/fixtures/tls/${f}`, import.meta.url));
const pem = (f: string) => readFileSync(tls(f));
const TLS = { grpcTlsCert: tls("server.pem"), grpcTlsKey: tls("server.key") };

/** A raw gRPC stream to the kernel: sends any bytes, collects the frames that come back. */
function rawStream(address: string, creds = grpc.credentials.createSsl(pem("ca.pem")), options: grpc.ChannelOptions = {}) {
  const client = new grpc.Client(address, creds, { "grpc.max_send_message_length": 200 * 1024 * 1024, ...options });
  const call = client.makeBidiStreamRequest(
    "/kpip.v1.Kernel/Session",
    (b: Buffer) => b,
    (b: Buffer) => b,
  );
  const frames: Message[] = [];
  const decoder = new FrameDecoder(64 * 1024 * 1024);
  const state = { ended: false, error: undefined as grpc.ServiceError | undefined };
  call.on("data", (d: Buffer) => {
    for (const f of decoder.push(d)) frames.push(decodeMessage(f));
  });
  call.on("error", (e: grpc.ServiceError) => {
    state.error = e;
    state.ended = true;
  });
  call.on("end", () => {
    state.ended = true;
  });
  const sizes: number[] = [];
  call.on("data", (d: Buffer) => sizes.push(d.length));
  // The call is cancelled with the channel: one left open (paused, its answers unread) kept the
  // connection, so that the file's process did not exit on its own (see GrpcListener.close).
  const close = () => {
    call.cancel();
    client.close();
  };
  return { call, frames, state, sizes, close };
}

/** A raw gRPC stream through the handshake as `identity` with `token` bound as handle 1. */
async function rawSession(address: string, identity: Identity, token: Uint8Array, creds?: grpc.ChannelCredentials) {
  const s = rawStream(address, creds);
  const hello = helloFrame(identity.persona, identity.publicKey, Buffer.alloc(16, 3));
  s.call.write(hello);
  const challenge = await until(() => s.frames.find((m) => m.type === "CHALLENGE"), 10_000, "CHALLENGE");
  const transcript = attestationTranscript(
    Buffer.from(hello.subarray(HEADER_SIZE)),
    Buffer.from(encodeMessage(challenge).subarray(HEADER_SIZE)),
  );
  s.call.write(
    encodeMessage({ type: "ATTEST", body: { signature: signBytes(identity.privateKey, transcript), tokens: [token] } }),
  );
  await until(() => s.frames.find((m) => m.type === "WELCOME"), 10_000, "WELCOME");
  const maxBody = (challenge as Extract<Message, { type: "CHALLENGE" }>).body.limits.maxBody;
  const request = (id: number, op: string, target: string, args: Record<string, unknown> = {}) =>
    encodeMessage(
      {
        type: "REQUEST",
        body: {
          version: 1,
          persona: identity.persona,
          id,
          intent: encodeIntent({ op, target, args: args as never }),
          context: { persona: identity.persona },
          caps: [1],
        },
      },
      id,
    );
  const session = (challenge as Extract<Message, { type: "CHALLENGE" }>).body.session;
  return { ...s, maxBody, request, session };
}

const OBJECT = 800 * 1024;

/** A gRPC kernel (with `extra` settings) holding one object of OBJECT bytes, read by the raw admin session `f` gets. */
async function withBigObject(
  extra: KernelOptions,
  f: (t: TestKernel, c: KernelClient, s: Awaited<ReturnType<typeof rawSession>>) => Promise<void>,
): Promise<void> {
  const t = await startKernel({
    grpcListen: "127.0.0.1:0",
    ...TLS,
    maxBodyBytes: 1024 * 1024,
    maxObjectBytes: 900 * 1024,
    ...extra,
  });
  try {
    const c = await t.admin();
    await c.storage.write("obj://ws1/big", Buffer.alloc(OBJECT, 1));
    const s = await rawSession(t.k.grpcAddress as string, adminIdentity(t.k), Buffer.from(t.adminToken, "base64url"));
    await f(t, c, s);
    s.close();
    await c.close();
  } finally {
    await t.stop();
    removeHome(t.home);
  }
}

describe("gRPC: a peer that does not read its answers", () => {
  it("is held to maxWriteBuffer in bytes, as over the socket: its reads are refused RESOURCE, never queued without bound", () =>
    withBigObject({ maxWriteBuffer: 4 * 1024 * 1024 }, async (t, c, s) => {
      s.call.pause();
      const outcomes = () =>
        t.k.inspect
          .queryAudit({ op: "storage.read", limit: 1000 })
          .filter((r) => r.persona === "admin" && (r.phase === "outcome" || r.phase === "complete" || r.phase === "refused"));
      // One read at a time, each sent once the last one's outcome is on the record: the answers
      // in preparation never hold more than one, so only what is queued to the peer can refuse.
      // 40 × 800 KiB = 32 MiB: HTTP/2's window and the sockets' buffers take a few MiB of it
      // (how much depends on the machine); past them the kernel holds the rest, and must stop.
      const READS = 40;
      const stopped = () => s.state.ended || outcomes().some((r) => r.status === "FAILURE" && r.errorClass === "RESOURCE");
      let sent = 0;
      while (sent < READS && !stopped()) {
        sent++;
        s.call.write(s.request(sent, "storage.read", "obj://ws1/big"));
        await until(() => outcomes().length >= sent || s.state.ended, 30_000, `read ${sent}'s outcome`);
      }
      assert.ok(stopped(), `${sent} reads of ${OBJECT} bytes answered to a peer that does not read: none refused, session kept`);
      const refusal = outcomes().find((r) => r.status === "FAILURE");
      if (refusal) assert.match(refusal.message ?? "", /queued|budget/);
      assert.equal((await c.system.health()).status, "ok", "others are served");
    }));
});

describe("gRPC: a peer that reads its answers", () => {
  it("is not counted as holding answers unread once HTTP/2 took them: a few large messages drain (by bytes, not by grpc's count of messages)", () =>
    // No heartbeat PING within the test: a send to the session would count it afresh, hiding a missed drain.
    withBigObject({ heartbeatMs: 600_000 }, async (t, _c, s) => {
      // Paused, so the answers are queued unread (counted) when they are sent; then read.
      s.call.pause();
      for (let id = 1; id <= 3; id++) s.call.write(s.request(id, "storage.read", "obj://ws1/big"));
      await until(() => t.k.queuedUnreadBytes > 0 || undefined, 30_000, "the answers counted as queued unread");
      s.call.resume();
      await until(() => s.frames.filter((m) => m.type === "RESPONSE").length === 3 || undefined, 30_000, "the three answers");
      await until(() => t.k.queuedUnreadBytes === 0 || undefined, 30_000, "nothing counted as unread once read");
    }));
});

describe("gRPC transport with TLS", () => {
  let t: TestKernel;
  let address: string;
  before(async () => {
    t = await startKernel({ grpcListen: "127.0.0.1:0", ...TLS, maxBodyBytes: 1024 * 1024, maxObjectBytes: 900 * 1024 });
    address = t.k.grpcAddress as string;
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  const overGrpc = (extra: Record<string, unknown> = {}) =>
    KernelClient.connect({
      grpc: { address, ca: pem("ca.pem"), ...extra },
      identity: adminIdentity(t.k),
      tokens: [t.adminToken],
      reconnect: false,
    });

  it("carries a session: handshake, attestation, storage, the same audit trail", async () => {
    const c = await overGrpc();
    assert.equal(c.transport, "grpc");
    assert.equal((await c.system.health()).status, "ok");
    await c.storage.write("obj://g/a", "over grpc");
    assert.equal(Buffer.from((await c.storage.read("obj://g/a")).data).toString(), "over grpc");
    const open = t.k.inspect.queryAudit({ op: "session.open", limit: 50 }).find((r) => r.message === "grpc");
    // Where the session came from is structured detail, not free text (PROTOCOL §3.6).
    const origin = JSON.parse(open?.detail ?? "{}");
    assert.equal(origin.transport, "grpc");
    assert.equal(origin.tls, true);
    assert.match(origin.peer, /^127\.0\.0\.1:\d+$/);
    assert.equal(origin.clientCert, undefined, "no client certificate without mTLS");
    const status = (await c.call("system.status", "kernel://")).payload as { transports: { kind: string }[] };
    assert.deepEqual(
      status.transports.map((x) => x.kind),
      ["uds", "grpc"],
    );
    await c.close();
  });

  it("refuses a client that does not trust the kernel's certificate", async () => {
    await assert.rejects(overGrpc({ ca: pem("other-ca.pem"), connectTimeoutMs: 1500 }), KernelUnavailableError);
  });

  it("falls back from a missing Unix socket to gRPC, and prefers the socket when it is there", async () => {
    const fb = await KernelClient.connect({
      socket: join(t.home, "no-such.sock"),
      grpc: { address, ca: pem("ca.pem") },
      identity: adminIdentity(t.k),
      tokens: [t.adminToken],
      reconnect: false,
    });
    assert.equal(fb.transport, "grpc");
    assert.equal((await fb.system.health()).status, "ok");
    const seen: string[] = [];
    fb.on("state", (state: string, transport: string) => seen.push(`${state}/${transport}`));
    await fb.close();
    assert.deepEqual(seen, ["closing/grpc", "closed/grpc"], "state events carry the transport in use");
    const uds = await KernelClient.connect({
      socket: t.k.socketPath,
      grpc: { address, ca: pem("ca.pem") },
      identity: adminIdentity(t.k),
      tokens: [t.adminToken],
      reconnect: false,
    });
    assert.equal(uds.transport, "uds");
    await uds.close();
  });

  it("garbage on a stream: fatal PROTOCOL/BAD_MAGIC, stream closed, others served", async () => {
    const s = rawStream(address);
    s.call.write(Buffer.from("GET / HTTP/1.1\r\n\r\n"));
    await until(() => s.frames.find((m) => m.type === "ERROR"), 30_000, "ERROR frame");
    const e = s.frames.find((m) => m.type === "ERROR") as Extract<Message, { type: "ERROR" }>;
    assert.deepEqual([e.body.class, e.body.code], ["PROTOCOL", "BAD_MAGIC"]);
    await until(() => s.state.ended, 30_000, "stream closed");
    // The failed handshake's record says where it came from, as an open record does.
    const failed = await until(
      () => t.k.inspect.queryAudit({ op: "session.handshake", limit: 50 }).find((r) => /BAD_MAGIC/.test(r.message ?? "")),
      30_000,
      "the failed handshake's record",
    );
    const origin = JSON.parse(failed.detail ?? "{}");
    assert.deepEqual([origin.transport, origin.tls, origin.code], ["grpc", true, "BAD_MAGIC"]);
    assert.match(origin.peer, /^127\.0\.0\.1:\d+$/);
    s.close();
    const c = await overGrpc();
    assert.equal((await c.system.health()).status, "ok");
    await c.close();
  });

  it("a message over the size limit is refused by gRPC itself; the kernel keeps serving", async () => {
    const s = rawStream(address);
    s.call.write(Buffer.alloc(3 * 1024 * 1024));
    await until(() => s.state.ended, 30_000, "stream refused");
    assert.equal(s.state.error?.code, grpc.status.RESOURCE_EXHAUSTED);
    s.close();
    const c = await overGrpc();
    assert.equal((await c.system.health()).status, "ok");
    await c.close();
  });

  it("a message over the size limit on an open session ends it RESOURCE_EXHAUSTED and is on the record as session.error PROTOCOL TOO_LARGE, as an oversized frame on the socket is", async () => {
    // This session's records, as [op, status, class, code]: the same whichever transport carried it.
    const records = (session: string) =>
      t.k.inspect
        .queryAudit({ limit: 500 })
        .filter((r) => r.session === session && r.phase === "session")
        .map((r) => [r.op, r.status, r.errorClass, /^[A-Z_]+/.exec(r.message ?? "")?.[0] ?? r.message]);
    const expected = [
      ["session.open", "SUCCESS", null, "grpc"],
      ["session.error", "FAILURE", "PROTOCOL", "TOO_LARGE"],
    ];
    // Over the socket: a frame declaring more than maxBody.
    const p = await RawPeer.connect(t.k.socketPath);
    const { challenge, bytes } = await p.hello(adminIdentity(t.k));
    p.sendMessage({
      type: "ATTEST",
      body: { signature: p.sign(adminIdentity(t.k), bytes), tokens: [Buffer.from(t.adminToken, "base64url")] },
    });
    await p.next("WELCOME");
    const frame = encodeMessage({ type: "PING", body: { seq: 1 } });
    frame.writeUInt32BE(2 * 1024 * 1024, 12);
    p.send(frame.subarray(0, HEADER_SIZE));
    await until(() => p.closed, 10_000, "the socket closed");
    const uds = await until(
      () => (records(challenge.body.session).length === 2 ? records(challenge.body.session) : undefined),
      30_000,
      "the socket session's records",
    );
    assert.deepEqual(uds, [["session.open", "SUCCESS", null, "uds"], expected[1]]);
    // Over gRPC: one message over 1 MiB (its frame within maxBody would not matter).
    const s = await rawSession(address, adminIdentity(t.k), Buffer.from(t.adminToken, "base64url"));
    s.call.write(Buffer.alloc(GRPC_MAX_MESSAGE_BYTES + 1024));
    await until(() => s.state.ended, 30_000, "the call ended");
    assert.equal(s.state.error?.code, grpc.status.RESOURCE_EXHAUSTED);
    s.close();
    const got = await until(
      () => (records(s.session).length >= 2 ? records(s.session) : undefined),
      30_000,
      "the gRPC session's records",
    );
    // No "connection closed" record after it: the session ended on its error, as over the socket.
    assert.deepEqual(got, expected);
    const error = t.k.inspect.queryAudit({ op: "session.error", limit: 500 }).find((r) => r.session === s.session);
    assert.match(
      error?.message ?? "",
      new RegExp(`${GRPC_MAX_MESSAGE_BYTES + 1024} bytes .* limit of ${GRPC_MAX_MESSAGE_BYTES}`),
    );
  });

  it("compressed messages (gzip, deflate) are refused UNIMPLEMENTED before any is inflated; the kernel keeps serving", async () => {
    for (const algorithm of [2, 1]) {
      // 3 MiB of zeros compress to a few KiB: a decompression bomb, and a garbage frame once inflated.
      const bomb = rawStream(address, undefined, { "grpc.default_compression_algorithm": algorithm });
      bomb.call.write(Buffer.alloc(3 * 1024 * 1024));
      await until(() => bomb.state.ended, 30_000, "stream refused");
      assert.equal(bomb.state.error?.code, grpc.status.UNIMPLEMENTED, `algorithm ${algorithm}: ${bomb.state.error?.message}`);
      assert.equal(bomb.state.error?.metadata.get("grpc-accept-encoding")[0], "identity");
      assert.equal(bomb.frames.length, 0, "nothing of it reached KPIP");
      bomb.close();
    }
    const c = await overGrpc();
    assert.equal((await c.system.health()).status, "ok");
    await c.close();
  });

  it("a frame declaring more than the negotiated body: PROTOCOL/TOO_LARGE, as over the socket", async () => {
    const s = rawStream(address);
    const hello = encodeMessage({
      type: "HELLO",
      body: { versions: [1], persona: "admin", publicKey: new Uint8Array(32), instance: new Uint8Array(16), features: [] },
    });
    hello.writeUInt32BE(2 * 1024 * 1024, 12);
    s.call.write(hello.subarray(0, 16));
    await until(() => s.frames.find((m) => m.type === "ERROR"), 30_000, "ERROR frame");
    const e = s.frames.find((m) => m.type === "ERROR") as Extract<Message, { type: "ERROR" }>;
    assert.deepEqual([e.body.class, e.body.code], ["PROTOCOL", "TOO_LARGE"]);
    s.close();
  });

  it("a client that half-closes its stream is answered: requests in flight, GOODBYE, then the call ends with status OK", async () => {
    const s = await rawSession(address, adminIdentity(t.k), Buffer.from(t.adminToken, "base64url"));
    s.call.write(s.request(1, "system.health", "kernel://"));
    s.call.end();
    await until(() => s.state.ended, 15_000, "the kernel to end the call");
    assert.equal(s.state.error, undefined, "ended with status OK, not an error");
    const types = s.frames.map((m) => m.type);
    assert.deepEqual(types.slice(-2), ["RESPONSE", "GOODBYE"], "the request in flight answered, then GOODBYE");
    s.close();
    await until(() => t.k.sessionCount === 0, 10_000, "the session to end");
  });

  it("six pipelined reads of nearly maxBody each arrive whole: no gRPC message exceeds 16 + maxBody", async () => {
    const c = await overGrpc();
    await c.storage.write("obj://g/big", Buffer.alloc(900 * 1024, 7));
    await c.close();
    const s = await rawSession(address, adminIdentity(t.k), Buffer.from(t.adminToken, "base64url"));
    s.call.write(Buffer.concat([11, 12, 13, 14, 15, 16].map((id) => s.request(id, "storage.read", "obj://g/big"))));
    await until(() => s.frames.filter((m) => m.type === "RESPONSE").length === 6 || s.state.ended, 30_000, "six responses");
    assert.equal(s.state.error, undefined, "the stream is alive");
    const responses = s.frames.filter((m) => m.type === "RESPONSE") as Extract<Message, { type: "RESPONSE" }>[];
    assert.equal(responses.length, 6);
    for (const r of responses) assert.equal((r.body.payload as { data: Uint8Array }).data.length, 900 * 1024);
    assert.ok(
      Math.max(...s.sizes) <= Math.min(HEADER_SIZE + s.maxBody, GRPC_MAX_MESSAGE_BYTES),
      `largest message ${Math.max(...s.sizes)} bytes`,
    );
    s.call.end();
    s.close();
  });

  it("a peer silent for 3 heartbeats: the kernel ends its call with status UNAVAILABLE, never leaves it open", async () => {
    const t2 = await startKernel({ grpcListen: "127.0.0.1:0", ...TLS, heartbeatMs: 300 });
    try {
      const s = await rawSession(t2.k.grpcAddress as string, adminIdentity(t2.k), Buffer.from(t2.adminToken, "base64url"));
      // It never answers the kernel's PINGs nor sends anything.
      await until(() => s.state.ended, 20_000, "the kernel to end the call");
      assert.equal(s.state.error?.code, grpc.status.UNAVAILABLE);
      await until(() => t2.k.sessionCount === 0, 10_000, "the session to end");
      s.close();
    } finally {
      await t2.stop();
      removeHome(t2.home);
    }
  });

  it("the client splits its output too: two pipelined writes of nearly maxBody each both succeed over gRPC", async () => {
    const c = await overGrpc();
    // Together they are over 16 + maxBody + the kernel's slack; one coalesced message ended the session.
    const results = await Promise.all(["w1", "w2"].map((p) => c.storage.write(`obj://g/${p}`, Buffer.alloc(900 * 1024, 1))));
    assert.equal(results.length, 2);
    assert.equal((await c.storage.stat("obj://g/w2")).size, 900 * 1024);
    await c.close();
  });

  it("stopping the kernel drains and ends gRPC sessions; the client sees the close", async () => {
    const t2 = await startKernel({ grpcListen: "127.0.0.1:0", ...TLS });
    const c = await KernelClient.connect({
      grpc: { address: t2.k.grpcAddress as string, ca: pem("ca.pem") },
      identity: adminIdentity(t2.k),
      tokens: [t2.adminToken],
      reconnect: false,
    });
    assert.equal((await c.system.health()).status, "ok");
    await t2.stop();
    await until(() => c.state === "closed", 30_000, "client closed");
    await assert.rejects(c.system.health(), KernelUnavailableError);
    removeHome(t2.home);
  });
});

/** gRPC messages of `bytes` cut every `per` bytes (a message each). */
function grpcMessages(bytes: Uint8Array, per: number): Buffer {
  const out: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += per) {
    const piece = bytes.subarray(i, i + per);
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(piece.length, 1);
    out.push(prefix, Buffer.from(piece));
  }
  return Buffer.concat(out);
}

/** A session stream on a plaintext HTTP/2 connection, by hand: what it received, and how it closed. */
function h2Stream(address: string, extra: http2.OutgoingHttpHeaders = {}) {
  const session = http2.connect(`http://${address}`);
  session.on("error", () => {});
  const stream = session.request({
    ":method": "POST",
    ":path": "/kpip.v1.Kernel/Session",
    "content-type": "application/grpc",
    te: "trailers",
    ...extra,
  });
  const state = { data: Buffer.alloc(0), status: undefined as string | undefined, closed: false, rstCode: -1 };
  stream.on("data", (d: Buffer) => {
    state.data = Buffer.concat([state.data, d]);
  });
  stream.on("trailers", (h) => {
    state.status = h["grpc-status"] as string | undefined;
  });
  // A trailers-only answer carries its status in the response headers.
  stream.on("response", (h) => {
    state.status ??= h["grpc-status"] as string | undefined;
  });
  stream.on("error", () => {});
  stream.on("close", () => {
    state.closed = true;
    state.rstCode = stream.rstCode ?? -1;
  });
  /** The KPIP frames received so far (gRPC prefixes taken off). */
  const frames = (): Message[] => {
    const d = new FrameDecoder(1024 * 1024);
    const out: Message[] = [];
    for (let i = 0; i + 5 <= state.data.length; ) {
      const n = state.data.readUInt32BE(i + 1);
      for (const f of d.push(state.data.subarray(i + 5, i + 5 + n))) out.push(decodeMessage(f));
      i += 5 + n;
    }
    return out;
  };
  return { stream, state, frames, close: () => session.destroy() };
}

describe("gRPC: frames cut into tiny messages, and streams held open after their session", () => {
  let t: TestKernel;
  let address: string;
  before(async () => {
    t = await startKernel({ grpcListen: "127.0.0.1:0" });
    address = t.k.grpcAddress as string;
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });
  const hello = () => helloFrame("admin", adminIdentity(t.k).publicKey, Buffer.alloc(16, 5));

  it("a frame sent a byte per message before attesting is refused at its ninth small piece: the stream is reset (ENHANCE_YOUR_CALM), on the record as PROTOCOL FRAGMENTED; a frame's header and body sent apart are served", async () => {
    // grpc-js splits every DATA frame into its messages at once, a few microseconds each however
    // small: a handshake's 1 MiB sent a byte per message held the kernel's thread for seconds
    // (one peer, 8 connections: a socket client's calls from 2 to 120 ms at the median).
    const bytewise = h2Stream(address);
    bytewise.stream.write(grpcMessages(hello(), 1));
    await until(() => bytewise.state.closed, 10_000, "the stream reset");
    assert.equal(bytewise.state.rstCode, http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
    assert.equal(bytewise.frames().length, 0, "no CHALLENGE: the HELLO never reached the session");
    bytewise.close();
    const record = await until(
      () => t.k.inspect.queryAudit({ op: "session.handshake", limit: 50 }).find((r) => /FRAGMENTED/.test(r.message ?? "")),
      30_000,
      "the failed handshake's record",
    );
    assert.equal(record.errorClass, "PROTOCOL");
    // A sender that writes a frame's header and its body as two messages is served, as one that sends it whole.
    for (const [what, bytes] of [
      [
        "header and body apart",
        Buffer.concat([
          grpcMessages(hello().subarray(0, HEADER_SIZE), HEADER_SIZE),
          grpcMessages(hello().subarray(HEADER_SIZE), 1 << 20),
        ]),
      ],
      ["one message", grpcMessages(hello(), 1 << 20)],
    ] as const) {
      const s = h2Stream(address);
      s.stream.write(bytes);
      await until(() => s.frames().find((m) => m.type === "CHALLENGE"), 10_000, `CHALLENGE (${what})`);
      s.close();
    }
    const c = await KernelClient.connect({
      grpc: { address, insecure: true },
      identity: adminIdentity(t.k),
      tokens: [t.adminToken],
      reconnect: false,
    });
    assert.equal((await c.system.health()).status, "ok");
    await c.close();
  });

  it("after WELCOME, PINGs each sent in small messages are refused at the ninth small piece of them all: a control frame does not start the count again (FRAGMENTED, on the record)", async () => {
    const s = await rawSession(
      address,
      adminIdentity(t.k),
      Buffer.from(t.adminToken, "base64url"),
      grpc.credentials.createInsecure(),
    );
    try {
      // Each PING (22 bytes) in messages of 3 bytes: 7 that end inside it, under a frame's
      // allowance of 8, so each PING's last message started the count again, for ever.
      const ping = encodeMessage({ type: "PING", body: { seq: 1 } });
      // Header and body apart, 20 times: one fragment each, taken off again at the PING's end.
      for (let i = 0; i < 20; i++) {
        s.call.write(ping.subarray(0, HEADER_SIZE));
        s.call.write(ping.subarray(HEADER_SIZE));
      }
      await until(() => s.frames.filter((m) => m.type === "PONG").length === 20 || s.state.ended, 10_000, "20 PONGs");
      assert.ok(!s.state.ended, "PINGs with header and body apart are served");
      for (let i = 0; i < 3; i++) for (let at = 0; at < ping.length; at += 3) s.call.write(ping.subarray(at, at + 3));
      await until(() => s.state.ended, 10_000, "the stream ended");
      const record = await until(
        () =>
          t.k.inspect
            .queryAudit({ op: "session.error", limit: 50 })
            .find((r) => r.session === s.session && /FRAGMENTED/.test(r.message ?? "")),
        30_000,
        "the session's FRAGMENTED record",
      );
      assert.equal(record.errorClass, "PROTOCOL");
      assert.ok(s.frames.filter((m) => m.type === "PONG").length < 23, "not every PING answered");
    } finally {
      s.close();
    }
  });

  it("a peer that keeps its half of the stream open after its session ended is reset once the grace passed, and sends nothing more", async () => {
    // grpc-js ends its half with the status and reads on, and destroying the call does not reset
    // the HTTP/2 stream: a peer could keep sending into a session that was over, for ever.
    const s = h2Stream(address);
    s.stream.write(grpcMessages(Buffer.from("GET / HTTP/1.1\r\n\r\n"), 1 << 20));
    await until(() => s.frames().find((m) => m.type === "ERROR"), 10_000, "the fatal ERROR");
    await until(() => s.state.status, 10_000, "the status");
    assert.equal(s.state.status, "0");
    // Its half stays open: the kernel resets the stream (NO_ERROR: its answer was complete).
    await until(() => s.state.closed, 10_000, "the stream reset");
    assert.equal(s.state.rstCode, http2.constants.NGHTTP2_NO_ERROR);
    s.close();
  });

  it("a peer that goes on sending into its stream after its session ended is reset once it sent 256 KiB more, before the grace: the kernel does not read at the peer's pace", async () => {
    // Each stream's grace was a second of reading whatever the peer sent, as fast as it sent it.
    const s = h2Stream(address);
    try {
      s.stream.write(grpcMessages(Buffer.from("GET / HTTP/1.1\r\n\r\n"), 1 << 20));
      await until(() => s.frames().find((m) => m.type === "ERROR"), 10_000, "the fatal ERROR");
      // 8 MiB more in messages of 64 KiB: what reached the socket is what the kernel read (or had room for in its window).
      const socket = s.stream.session?.socket;
      const before = socket?.bytesWritten ?? 0;
      const message = grpcMessages(Buffer.alloc(64 * 1024 - 5, 0x41), 1 << 20);
      for (let i = 0; i < 128; i++) s.stream.write(message);
      await until(() => s.state.closed, 10_000, "the stream reset");
      assert.equal(s.state.rstCode, http2.constants.NGHTTP2_NO_ERROR);
      const taken = (socket?.bytesWritten ?? 0) - before;
      // The allowance, and at most a stream window in flight and a DATA frame: 8 MiB before.
      assert.ok(taken < GRPC_BYTES_AFTER_END + 256 * 1024, `the kernel took ${taken} bytes after the session ended`);
    } finally {
      s.close();
    }
  });

  it("a peer whose stream was refused for a message over the size limit, sending on into it, is reset once it sent 256 KiB more, as after any session's end", async () => {
    // The refusal stopped the watch that counts what comes after the end: grpc-js reads on (the
    // decoder throws at each chunk), so the peer was read at its own pace for the whole grace.
    const s = h2Stream(address);
    try {
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(64 * 1024 * 1024, 1);
      s.stream.write(prefix);
      await until(() => s.state.status, 10_000, "the refusal");
      assert.equal(s.state.status, String(grpc.status.RESOURCE_EXHAUSTED));
      const socket = s.stream.session?.socket;
      const before = socket?.bytesWritten ?? 0;
      const chunk = Buffer.alloc(64 * 1024, 0x41);
      for (let i = 0; i < 128; i++) s.stream.write(chunk);
      await until(() => s.state.closed, 10_000, "the stream reset");
      assert.equal(s.state.rstCode, http2.constants.NGHTTP2_NO_ERROR);
      const taken = (socket?.bytesWritten ?? 0) - before;
      assert.ok(taken < GRPC_BYTES_AFTER_END + 256 * 1024, `the kernel took ${taken} bytes after the refusal`);
    } finally {
      s.close();
    }
  });

  it("a stream whose call grpc-js ends itself (a grpc-timeout passed, or one it cannot parse) is reset once the grace passed, though the peer never sent HELLO and keeps its half open", async () => {
    // grpc-js answers DEADLINE_EXCEEDED (or INTERNAL) and leaves the HTTP/2 stream open: an
    // unauthenticated peer kept it past handshakeTimeoutMs, for ever, and the kernel read all it sent.
    for (const [timeout, status] of [
      ["1m", grpc.status.DEADLINE_EXCEEDED],
      ["soon", grpc.status.INTERNAL],
    ] as const) {
      const s = h2Stream(address, { "grpc-timeout": timeout });
      try {
        await until(() => s.state.status, 10_000, `the status for grpc-timeout ${timeout}`);
        assert.equal(s.state.status, String(status));
        // Its half stays open: the kernel resets the stream (NO_ERROR: its answer was complete).
        await until(() => s.state.closed, 10_000, `the stream reset (grpc-timeout ${timeout})`);
        assert.equal(s.state.rstCode, http2.constants.NGHTTP2_NO_ERROR);
      } finally {
        s.close();
      }
    }
  });
});

describe("gRPC messages are at most 1 MiB, whatever maxBody is", () => {
  let t: TestKernel;
  let address: string;
  before(async () => {
    t = await startKernel({ grpcListen: "127.0.0.1:0", ...TLS, maxBodyBytes: 8 * 1024 * 1024, maxObjectBytes: 6 * 1024 * 1024 });
    address = t.k.grpcAddress as string;
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  it("a stream before HELLO declaring a 4 MiB message (under 16 + maxBody) is refused RESOURCE_EXHAUSTED at its prefix, not buffered", async () => {
    // What grpc-js would have held, per stream, until the message was whole: 16 + maxBody + slack.
    const session = http2.connect(`https://${address}`, { ca: pem("ca.pem") });
    session.on("error", () => {});
    try {
      const stream = session.request({
        ":method": "POST",
        ":path": "/kpip.v1.Kernel/Session",
        "content-type": "application/grpc",
        te: "trailers",
      });
      let status: string | undefined;
      const take = (h: http2.IncomingHttpHeaders) => {
        status ??= h["grpc-status"] as string | undefined;
      };
      stream.on("response", take);
      stream.on("trailers", take);
      stream.on("error", () => {});
      stream.on("data", () => {});
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(4 * 1024 * 1024, 1);
      // The prefix and 64 KiB of the message; the rest never comes.
      stream.write(Buffer.concat([prefix, Buffer.alloc(64 * 1024, 0x41)]));
      await until(() => status, 10_000, "the kernel to refuse the message");
      assert.equal(status, String(grpc.status.RESOURCE_EXHAUSTED));
    } finally {
      session.destroy();
    }
  });

  it("frames larger than 1 MiB span messages both ways: a 5 MiB write and read succeed, no message over 1 MiB", async () => {
    const c = await KernelClient.connect({
      grpc: { address, ca: pem("ca.pem") },
      identity: adminIdentity(t.k),
      tokens: [t.adminToken],
      reconnect: false,
    });
    const data = Buffer.alloc(5 * 1024 * 1024, 9);
    await c.storage.write("obj://g/five", data);
    assert.equal((await c.storage.stat("obj://g/five")).size, data.length);
    await c.close();
    const s = await rawSession(address, adminIdentity(t.k), Buffer.from(t.adminToken, "base64url"));
    s.call.write(s.request(1, "storage.read", "obj://g/five"));
    await until(() => s.frames.find((m) => m.type === "RESPONSE") || s.state.ended, 30_000, "the response");
    const r = s.frames.find((m) => m.type === "RESPONSE") as Extract<Message, { type: "RESPONSE" }>;
    assert.ok(r, `no response: ${s.state.error?.message}`);
    assert.equal((r.body.payload as { data: Uint8Array }).data.length, data.length);
    assert.ok(Math.max(...s.sizes) <= GRPC_MAX_MESSAGE_BYTES, `largest message ${Math.max(...s.sizes)} bytes`);
    s.call.end();
    s.close();
  });
});

describe("gRPC transport with mTLS", () => {
  let t: TestKernel;
  before(async () => {
    t = await startKernel({ grpcListen: "127.0.0.1:0", ...TLS, grpcTlsClientCa: tls("ca.pem") });
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });
  const connect = (extra: Record<string, unknown>) =>
    KernelClient.connect({
      grpc: { address: t.k.grpcAddress as string, ca: pem("ca.pem"), connectTimeoutMs: 1500, ...extra },
      identity: adminIdentity(t.k),
      tokens: [t.adminToken],
      reconnect: false,
    });

  it("requires a client certificate from the configured CA; the persona still attests", async () => {
    await assert.rejects(connect({}), KernelUnavailableError);
    await assert.rejects(connect({ cert: pem("other-client.pem"), key: pem("other-client.key") }), KernelUnavailableError);
    const c = await connect({ cert: pem("client.pem"), key: pem("client.key") });
    assert.equal((await c.system.health()).status, "ok");
    await c.close();
  });

  it("records the client certificate's SHA-256 on session.open (not an identity: the persona attests)", async () => {
    const c = await connect({ cert: pem("client.pem"), key: pem("client.key") });
    await c.close();
    const expected = new X509Certificate(pem("client.pem")).fingerprint256.replaceAll(":", "").toLowerCase();
    const open = t.k.inspect.queryAudit({ op: "session.open", limit: 50 }).map((r) => JSON.parse(r.detail ?? "{}"));
    assert.ok(
      open.some((d) => d.transport === "grpc" && d.tls === true && d.clientCert === expected),
      JSON.stringify(open),
    );
  });

  it("a refused TLS handshake leaves a log line naming the peer, rate-limited per address", async () => {
    const lines: { msg: string; peer?: string; address?: string; reason?: string }[] = [];
    const logger = pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) });
    const t2 = await startKernel({
      grpcListen: "127.0.0.1:0",
      ...TLS,
      grpcTlsClientCa: tls("ca.pem"),
      logger,
      peerLogLines: 2,
      peerLogWindowMs: 600_000,
    });
    try {
      const connect2 = (extra: Record<string, unknown>) =>
        KernelClient.connect({
          grpc: { address: t2.k.grpcAddress as string, ca: pem("ca.pem"), connectTimeoutMs: 1500, ...extra },
          identity: adminIdentity(t2.k),
          tokens: [t2.adminToken],
          reconnect: false,
        });
      const refused = () => lines.filter((l) => l.msg === "TLS handshake refused");
      await assert.rejects(connect2({}), KernelUnavailableError);
      const line = await until(() => refused()[0], 10_000, "the refusal's log line");
      // Rate-limited per peer key (every loopback address is one), naming the address itself.
      assert.deepEqual([line.peer, line.address], ["grpc:loopback", "127.0.0.1"]);
      assert.ok(line.reason, "says why");
      // More refusals from the same address than the window allows: counted, not logged (peerLogLines 2).
      for (let i = 0; i < 3; i++) await assert.rejects(connect2({}), KernelUnavailableError);
      assert.ok(refused().length <= 2, `${refused().length} lines`);
      const c = await connect2({ cert: pem("client.pem"), key: pem("client.key") });
      assert.equal((await c.system.health()).status, "ok", "the kernel keeps serving");
      await c.close();
    } finally {
      await t2.stop();
      removeHome(t2.home);
    }
  });
});

describe("gRPC configuration", () => {
  it("plaintext on loopback works, with a warning in the log", async () => {
    const t = await startKernel({ grpcListen: "127.0.0.1:0" });
    const c = await KernelClient.connect({
      grpc: { address: t.k.grpcAddress as string, insecure: true },
      identity: adminIdentity(t.k),
      tokens: [t.adminToken],
      reconnect: false,
    });
    assert.equal((await c.system.health()).status, "ok");
    await c.close();
    await t.stop();
    removeHome(t.home);
  });

  it("the client sends nothing in plaintext off loopback: a forwarder on 127.0.0.2 (not loopback by PROTOCOL §3.6) relaying to a plaintext kernel gets no byte", async () => {
    // The kernel refuses plaintext off loopback, but a client given `insecure` dialled any address:
    // through a plaintext relay (a port forward, a proxy) whoever is on the path read every token
    // and answer and, KPIP having no integrity of its own, could send requests in the session.
    const t = await startKernel({ grpcListen: "127.0.0.1:0" });
    const kernelPort = Number((t.k.grpcAddress as string).split(":").pop());
    let relayed = 0;
    const relay = createServer((inbound) => {
      const out = connect(kernelPort, "127.0.0.1");
      inbound.on("data", (b: Buffer) => {
        relayed += b.length;
      });
      inbound.pipe(out).pipe(inbound);
      inbound.on("error", () => out.destroy());
      out.on("error", () => inbound.destroy());
    });
    await new Promise<void>((r) => relay.listen(0, "127.0.0.2", r));
    const relayAddress = `127.0.0.2:${(relay.address() as AddressInfo).port}`;
    try {
      const dial = (address: string) =>
        KernelClient.connect({
          grpc: { address, insecure: true },
          identity: adminIdentity(t.k),
          tokens: [t.adminToken],
          reconnect: false,
        });
      await assert.rejects(dial(relayAddress), InsecureTransportError);
      await assert.rejects(dial(`kernel.example:${kernelPort}`), InsecureTransportError);
      assert.equal(relayed, 0, "nothing reached the relay");
      // Loopback stays open to plaintext, as the kernel's listener is.
      const c = await dial(t.k.grpcAddress as string);
      assert.equal((await c.system.health()).status, "ok");
      await c.close();
    } finally {
      relay.close();
      await t.stop();
      removeHome(t.home);
    }
  });

  it("refuses plaintext off loopback, bad addresses, unreadable or half TLS settings (ConfigError, never starts)", async () => {
    const bad: Record<string, string>[] = [
      { grpcListen: "0.0.0.0:0" },
      { grpcListen: "no-port" },
      { grpcListen: "127.0.0.1:99999" },
      { grpcListen: "127.0.0.1:0", grpcTlsCert: tls("server.pem") },
      { grpcListen: "127.0.0.1:0", grpcTlsCert: "/nonexistent.pem", grpcTlsKey: tls("server.key") },
      { grpcListen: "127.0.0.1:0", grpcTlsClientCa: tls("ca.pem") },
      { grpcListen: "127.0.0.1:0", grpcTlsCert: tls("ca.key"), grpcTlsKey: tls("server.key") },
    ];
    // One home for every case: each failed start is followed by a normal start on it, so a
    // case that left anything behind fails there, before the next case runs.
    const t = await startKernel();
    await t.stop();
    try {
      for (const opts of bad) {
        // Refused when the settings are read (a malformed address) or when the listener is set up.
        await assert.rejects(
          async () => new Kernel({ home: t.home, logLevel: "silent", ...opts }).start(),
          ConfigError,
          JSON.stringify(opts),
        );
        // The failed start left nothing listening: a normal kernel starts on the same home.
        const again = new Kernel({ home: t.home, logLevel: "silent" });
        await again.start();
        await again.stop();
      }
    } finally {
      removeHome(t.home);
    }
  });
});

describe("gRPC TLS floor", () => {
  it("refuses to serve TLS when Node would accept a version below 1.2 (node --tls-min-v1.0)", () => {
    const files = { cert: tls("server.pem"), key: tls("server.key") };
    assert.equal(serverCredentials("127.0.0.1:0", files).secure, true);
    const was = nodeTls.DEFAULT_MIN_VERSION;
    try {
      nodeTls.DEFAULT_MIN_VERSION = "TLSv1.1";
      assert.throws(() => serverCredentials("127.0.0.1:0", files), ConfigError);
    } finally {
      nodeTls.DEFAULT_MIN_VERSION = was;
    }
  });
});

describe("examples/grpc-persona.ts", () => {
  it("runs: falls back to gRPC, and negotiates shm over the socket", async () => {
    const r = await runExample("grpc-persona");
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /connected over: grpc features: \[\]/);
    assert.match(r.out, /read back: over gRPC/);
    assert.match(r.out, /over the socket: uds features: \[ 'shm' \] shm frames: \{ sent: 1/);
  });
});
